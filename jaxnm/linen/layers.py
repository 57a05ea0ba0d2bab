"""Drop-in Linen layers whose GEMM runs the N:M training op: ``Dense``, ``DenseGeneral``,
``Conv``.

Each is the Flax layer with one extra field, ``grad_sparsity``, and its op seam
(``dot_general_cls`` / ``conv_general_dilated_cls``) set to the ops of
:mod:`jaxnm.linen.ops`. Parameters keep Flax's names and shapes, so checkpoints and params
move freely between these layers and the plain Flax ones. The masks are not stored in the
model: pass them at every ``apply`` from the optimizer state (one source of truth)::

  variables = {"params": params, MASKS: jaxnm.linen.mask_collection(opt_state)}
  y = model.apply(variables, x, rngs={"mvue": key})

Every layer needs its :data:`MASKS` entry in ``apply`` (a mask, or :data:`DENSE` for a
kernel the optimizer left dense; :func:`mask_collection` writes both); a missing collection
or entry raises. Only ``model.init`` runs without masks. For inference on params exported
with ``jaxnm.apply_masks`` use the plain Flax layers, or pass the masks again.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import numpy as np

from jaxnm._state import current_masks
from jaxnm.linen.ops import DENSE, NMConvGeneralDilated, NMDotGeneral
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


def mask_collection(opt_state: Any) -> dict:
    """The :data:`MASKS` collection for ``apply``: the current masks of a
    :func:`jaxnm.sparsify` state (whose params were ``variables["params"]``), without the
    entries of dense parameters.

    Args:
      opt_state: optimizer state containing a :func:`jaxnm.sparsify` state.

    Returns:
      nested dict mirroring the params: bool masks of the sparsified kernels' shapes, and
      :data:`DENSE` for every other leaf named ``kernel``.
    """
    masks = jax.tree_util.tree_map_with_path(
        lambda path, mask: DENSE if mask is None and _is_kernel(path) else mask,
        current_masks(opt_state),
        is_leaf=lambda x: x is None,
    )
    return _prune_none(masks)


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
    raise TypeError(f"mask_collection expects nested dicts of masks, got {type(tree).__name__}.")
