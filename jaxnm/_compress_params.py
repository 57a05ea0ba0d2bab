"""Compressing a trained model from its optimizer state: :func:`compress_params`."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxnm._params import format_path
from jaxnm._state import find_states, is_mask_leaf, is_unmasked, variable_value
from jaxnm.compressed import compress
from jaxnm.masks.packing import unpack


def compress_params(params: Any, opt_state: Any) -> Any:
    """``params`` with every parameter sparsified by :func:`jaxnm.sparsify` compressed.

    ``n`` and ``m`` come from the optimizer state, so a trained model is compressed without
    restating its settings. The masks are the state's current ones (those of the next
    forward pass), as :func:`jaxnm.current_masks` returns them.

    Args:
      params: the params pytree the optimizer was initialised with (dense arrays; for NNX
        ``nnx.state(model, nnx.Param)``).
      opt_state: optimizer state containing one or more :func:`jaxnm.sparsify` states (each
        parameter group its own ``n:m``).

    Returns:
      ``params`` with each sparsified leaf ``w (..., R, C)`` replaced by
      :func:`jaxnm.compress` ``(w, mask, n, m, axis=-2)`` (a :class:`~jaxnm.CompressedNM`,
      groups along axis ``-2``; ``decompress`` gives ``w ⊙ mask``), the other leaves
      unchanged.

    Raises:
      ValueError: no sparsify state, a kernel masked on a flattened view (``state.views``:
        ``LinearGeneral`` kernels of rank > 2, which ``CompressedNM`` cannot hold), or a
        mask that is not N:M (e.g. during the dense phase before ``start_step`` or after
        ``end_step`` with ``dense_tail=True``).
    """
    for state in find_states(opt_state):
        if state.views:
            paths = ", ".join(f"`{format_path(path)}`" for path, *_ in state.views)
            raise ValueError(
                f"compress_params cannot compress {paths}: their masks are N:M on a flattened "
                "(in, out) view of a kernel of rank > 2 (LinearGeneral / DenseGeneral), while "
                "CompressedNM groups one axis of the kernel's own shape. Export them dense "
                "with jaxnm.apply_masks, or compress reshaped 2-D kernels yourself."
            )
        leaves, treedef = jax.tree_util.tree_flatten(state.masks, is_leaf=is_mask_leaf)
        values = treedef.flatten_up_to(params)
        out = [
            p
            if is_unmasked(bits)
            else compress(p, unpack(jnp.asarray(variable_value(bits)), state.m), state.n, state.m)
            for bits, p in zip(leaves, values, strict=True)
        ]
        params = jax.tree_util.tree_unflatten(treedef, out)
    return params
