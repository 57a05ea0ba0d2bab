"""Effective weights ``params ⊙ masks`` with a straight-through gradient: :func:`apply_masks`."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxnm._params import format_path, key_path_names


def apply_masks(params: Any, masks: Any) -> Any:
    """Effective weights ``params ⊙ masks`` with a straight-through gradient.

    Args:
      params: the (dense) params pytree.
      masks: pytree as returned by :func:`current_masks`: bool (or 0/1 numeric) arrays of
        the matching leaves' shapes exactly, ``None`` (or optax's ``MaskedNode``) where a
        parameter stays dense (``masks`` may also be a prefix of ``params`` with ``None`` for
        whole dense subtrees).

    Returns:
      ``params`` with every masked leaf replaced by ``where(mask, leaf, 0)`` (same dtype).
      The gradient flows to the dense leaf unmasked (straight-through estimator), so pruned
      weights keep training and masks can change at the next refresh. Export a trained model
      for inference with ``apply_masks(params, masks)`` outside any gradient.

    Raises:
      ValueError: a mask whose shape differs from its parameter's (e.g. ``(64, 1)`` for a
        ``(64, 64)`` kernel, which would broadcast), naming the path.
    """

    def one(path, mask, p):
        if mask is None or isinstance(mask, optax.MaskedNode):
            return p
        if np.shape(mask) != np.shape(p):
            raise ValueError(
                f"the mask of parameter `{format_path(key_path_names(path))}` (path "
                f"{key_path_names(path)!r}) has shape {np.shape(mask)}, "
                f"the parameter {np.shape(p)}: they must be equal (no broadcasting)."
            )
        return _masked_ste(p, mask)

    return jax.tree_util.tree_map_with_path(
        one, masks, params, is_leaf=lambda x: x is None or isinstance(x, optax.MaskedNode)
    )


@jax.custom_vjp
def _masked_ste(w: jax.Array, mask: jax.Array) -> jax.Array:
    return jnp.where(mask, w, jnp.zeros((), w.dtype))


def _masked_ste_fwd(w, mask):
    return _masked_ste(w, mask), mask


def _masked_ste_bwd(mask, g):
    if jnp.issubdtype(mask.dtype, jnp.inexact):
        return g, jnp.zeros_like(mask)
    return g, np.zeros(np.shape(mask), jax.dtypes.float0)


_masked_ste.defvjp(_masked_ste_fwd, _masked_ste_bwd)
