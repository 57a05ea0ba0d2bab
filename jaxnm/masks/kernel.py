"""The mask of a Flax kernel: transposable N:M over its last two axes, or N:M along ``in``.

The one place where "transposable or not" chooses the mask function: :func:`jaxnm.sparsify`
(at ``init`` and every refresh) and the conversion (:mod:`jaxnm.convert`) both call
:func:`kernel_masks`, so a model trained sparse and a model converted to N:M get the same
masks from the same weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax

from jaxnm.masks.layers import layer_masks, layer_masks_packed
from jaxnm.masks.nm import nm_mask
from jaxnm.masks.packing import pack
from jaxnm.masks.solvers import MaskMethod, Solver, resolve_solver


def kernel_masks(
    ws: Sequence[jax.Array], n: int, m: int, *, transposable: bool, solver: Solver
) -> list[jax.Array]:
    """The masks of several kernels ``(..., in, out)`` (Flax Dense / Conv layout).

    Args:
      ws: floating kernels; leading axes (e.g. a Conv kernel's ``kh, kw``) are batch.
      n, m: keep ``n`` of every ``m`` (static ints).
      transposable: transposable N:M over the last two axes (every ``m x m`` tile keeps
        ``n`` per row and column), all kernels' tiles solved by one ``solver`` call
        (:func:`jaxnm.masks.layers.layer_masks`); else top-``n`` of every ``m`` along axis
        ``-2`` (``in``, the contraction axis), where ``solver`` is unused.
      solver: a resolved transposable solver (see :func:`jaxnm.masks.resolve_solver`).

    Returns:
      list of bool arrays of ``ws``'s shapes.
    """
    if transposable:
        return layer_masks(ws, n, m, solver)
    return [nm_mask(w, n, m, axis=-2) for w in ws]


def kernel_masks_packed(
    ws: Sequence[jax.Array], n: int, m: int, *, transposable: bool, solver: Solver
) -> list[jax.Array]:
    """:func:`kernel_masks`, bit-packed (``jaxnm.masks.packing.pack(mask, m)`` of each).

    Transposable masks come packed from
    :func:`jaxnm.masks.layers.layer_masks_packed` (one packing of the flat tile batch
    for all the kernels); the others are packed one by one.

    Returns:
      list of arrays ``(..., in // m, out)`` of :func:`~jaxnm.masks.packing.word_dtype`
      ``(m)``.
    """
    if transposable:
        return layer_masks_packed(ws, n, m, solver)
    return [pack(nm_mask(w, n, m, axis=-2), m) for w in ws]


def kernel_mask(
    kernel: jax.Array, n: int, m: int, *, transposable: bool, method: MaskMethod | Solver = "auto"
) -> jax.Array:
    """The magnitude mask of one Flax kernel (see :func:`kernel_masks`).

    Args:
      kernel: ``(in, out)`` or ``(kh, kw, in, out)`` floating kernel.
      n, m: keep ``n`` of every ``m``.
      transposable: transposable N:M over the last two axes, or N:M along ``in``.
      method: transposable solver: a name in :data:`jaxnm.masks.SOLVERS` or a solver callable.

    Returns:
      bool array of ``kernel``'s shape.
    """
    solver = resolve_solver(method)
    return kernel_masks([kernel], n, m, transposable=transposable, solver=solver)[0]
