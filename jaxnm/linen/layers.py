"""Drop-in Linen layers whose GEMM runs the N:M training op: ``Dense``, ``DenseGeneral``,
``Conv``; and :func:`variables`, the one way to hand them their masks.

Each layer is the Flax layer with one extra field, ``grad_sparsity``, and its op seam
(``dot_general_cls`` / ``conv_general_dilated_cls``) set to the ops of
:mod:`jaxnm.linen.ops`. Parameters keep Flax's names and shapes, so checkpoints and params
move freely between these layers and the plain Flax ones. The masks are not stored in the
model: build the variables of every ``apply`` from the optimizer state (one source of
truth)::

  y = model.apply(jaxnm.linen.variables(params, opt_state), x, rngs={"mvue": key})

:func:`variables` gives ``"params"`` as ``params ⊙ masks`` (straight-through, as
:func:`jaxnm.apply_masks`) and the :data:`MASKS` collection. So every sparsified kernel
trains sparse whatever layer reads it: a plain ``nn.Dense`` / ``nn.Conv`` that the default
selection of :func:`jaxnm.sparsify` picked runs its masked kernel (forward and input
gradient N:M, straight-through weight gradient, no MVUE), and the jaxnm layers add the
transposed-mask backward and MVUE. Every jaxnm layer needs its :data:`MASKS` entry in
``apply`` (a mask, or :data:`DENSE` for a kernel the optimizer left dense); a missing
collection or entry raises. Only ``model.init`` runs without masks.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import numpy as np

from jaxnm._apply_masks import apply_masks
from jaxnm._state import current_masks, find_states
from jaxnm.linen.ops import DENSE, MASKS, VIEW, NMConvGeneralDilated, NMDotGeneral
from jaxnm.ops import MVUE


class Dense(nn.Dense):
    """``nn.Dense`` through :class:`~jaxnm.linen.ops.NMDotGeneral`; kernel ``(in, out)``,
    N:M groups along ``in``.

    Attributes:
      grad_sparsity: ``None`` or a :class:`jaxnm.MVUE`, e.g. ``MVUE(2, 4)``.
    """

    grad_sparsity: MVUE | None = None
    dot_general_cls: Any = NMDotGeneral


class DenseGeneral(nn.DenseGeneral):
    """``nn.DenseGeneral`` through :class:`~jaxnm.linen.ops.NMDotGeneral`; the kernel's axis
    -2 must be contracted and axis -1 an output axis (one output feature axis).

    Attributes:
      grad_sparsity: as for :class:`Dense`.
    """

    grad_sparsity: MVUE | None = None
    dot_general_cls: Any = NMDotGeneral


class Conv(nn.Conv):
    """``nn.Conv`` through :class:`~jaxnm.linen.ops.NMConvGeneralDilated`; kernel
    ``(kh, kw, in, out)``, N:M groups along ``in``.

    Attributes:
      grad_sparsity: as for :class:`Dense`.
    """

    grad_sparsity: MVUE | None = None
    conv_general_dilated_cls: Any = NMConvGeneralDilated


def variables(params: Any, opt_state: Any) -> dict:
    """The variables of a Linen ``apply`` during (and after) :func:`jaxnm.sparsify` training.

    Args:
      params: the dense params the optimizer updates (those ``opt_state`` was initialised
        with, or their updated values).
      opt_state: optimizer state containing a :func:`jaxnm.sparsify` state.

    Returns:
      ``{"params": apply_masks(params, masks), MASKS: collection}``: the params with every
      sparsified kernel masked (straight-through gradient to the dense params) and the
      :data:`MASKS` collection (bool masks of the sparsified kernels' shapes, :data:`DENSE`
      for every other leaf named ``kernel``, and a :data:`~jaxnm.linen.ops.VIEW` entry beside
      kernels masked on their flattened view). Add other collections as usual, e.g.
      ``{**jaxnm.linen.variables(params, opt_state), "batch_stats": stats}``.

    Raises:
      ValueError: a mask whose shape differs from its parameter's (params of another
        model), naming the path.
    """
    masks = current_masks(opt_state)
    collection = jax.tree_util.tree_map_with_path(
        lambda path, mask: DENSE if mask is None and _is_kernel(path) else mask,
        masks,
        is_leaf=lambda x: x is None,
    )
    collection = _prune_none(collection)
    for state in find_states(opt_state):
        for path, view, _ in state.views:
            node = collection
            for key in path[:-1]:
                node = node[key]
            node[VIEW] = np.zeros((view.in_axes,), bool)
    return {"params": apply_masks(params, masks), MASKS: collection}


def _is_kernel(path) -> bool:
    return bool(path) and getattr(path[-1], "key", None) == "kernel"


def _is_empty_dict(x: Any) -> bool:
    return isinstance(x, dict) and not x


def _prune_none(tree: Any) -> Any:
    if isinstance(tree, dict) or hasattr(tree, "items"):
        out = {k: _prune_none(v) for k, v in tree.items()}
        return {k: v for k, v in out.items() if v is not None and not _is_empty_dict(v)}
    if tree is None or isinstance(tree, (jax.Array, np.ndarray)):
        return tree
    raise TypeError(
        f"jaxnm.linen.variables expects nested dicts of params, got {type(tree).__name__}."
    )
