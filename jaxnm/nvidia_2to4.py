"""NVIDIA 2:4 sparse operands: kept values and ``uint16`` metadata, in an explicit layout.

The NVIDIA sparse operand ``A`` is row-major with its 2:4 groups along the rows (the
contraction axis). Its metadata gives, for every group of 4, the positions of its two kept
values in 4 bits: the lower two bits hold the first (lower) position, the upper two the
second; ``uint16`` word ``q`` of a row holds groups ``4q .. 4q+3`` at bits ``[4j, 4j+4)``
for group ``4q+j`` (the PTX ``mma.sp`` metadata, and PyTorch's
``_sparse_semi_structured_from_dense`` before its reorder). Those words can be stored in two
orders, both arrays of shape ``(..., rows, K // 16)``:

* ``layout="logical"``: word ``[r, q]`` is row ``r``'s word ``q`` (row-major);
* ``layout="cutlass"``: the storage order of CUTLASS's sparse GEMM, which PyTorch's
  ``to_sparse_semi_structured`` (CUTLASS backend) uses: (1) rows interleaved within blocks
  of 32, row ``r`` moving to ``r' = 32*(r // 32) + 4*(r % 8) + (r % 32) // 8``; (2) in every
  2x2 block of words the two off-diagonal words swapped; (3) the result stored
  ``ColumnMajorInterleaved<2>``: word ``(r', c')`` at flat offset
  ``(c' // 2) * 2 * rows + 2 * r' + c' % 2`` of the ``(..., rows, K // 16)`` array (the
  last two axes read as one row-major buffer). Needs ``rows % 32 == 0`` and ``K % 32 == 0``.

Every permuted word is still a valid 2:4 code, so reading one layout as the other gives a
wrong matrix without an error: ``layout`` is a required keyword of both functions.
"""

from __future__ import annotations

from typing import Literal, get_args

import jax
import jax.numpy as jnp
import numpy as np

from jaxnm._checks import check_floating, normalize_axis
from jaxnm.compressed import CompressedNM, group_indices, pack_indices

Layout = Literal["logical", "cutlass"]
"""Storage order of NVIDIA 2:4 metadata words (see the module docstring)."""


def _check_layout(layout) -> Layout:
    if layout not in get_args(Layout):
        raise ValueError(f"`layout` (={layout!r}) must be one of {list(get_args(Layout))}.")
    return layout


def _check_cutlass_shape(shape: tuple[int, ...], name: str) -> None:
    if len(shape) < 2 or shape[-2] % 32 or shape[-1] % 2:
        raise ValueError(
            f"layout='cutlass' interleaves rows in blocks of 32 and words in pairs: `{name}` "
            f"must have shape (..., rows, K // 16) with rows % 32 == 0 and an even number of "
            f"words (K % 32 == 0), got {shape}."
        )


def logical_to_cutlass(meta: jax.Array) -> jax.Array:
    """Reorders logical metadata words ``(..., rows, words)`` into CUTLASS storage order.

    Args:
      meta: ``uint16`` (or any dtype) ``(..., rows, words)`` with ``rows % 32 == 0`` and an
        even ``words``; leading axes are batch.

    Returns:
      array of ``meta``'s shape and dtype: the same words at their CUTLASS positions (see
      the module docstring), the last two axes read as one row-major buffer.
    """
    _check_cutlass_shape(tuple(jnp.shape(meta)), "meta")
    *lead, rows, words = meta.shape
    # (1) rows r = 32a + 8q + b go to 32a + 4b + q.
    x = meta.reshape(*lead, rows // 32, 4, 8, words)
    x = jnp.swapaxes(x, -3, -2).reshape(*lead, rows, words)
    # (2) transpose every 2x2 block of words (swaps its off-diagonal pair).
    x = x.reshape(*lead, rows // 2, 2, words // 2, 2)
    x = jnp.swapaxes(x, -3, -1)
    # (3) ColumnMajorInterleaved<2>: pairs of columns, each stored column-major by row.
    x = x.reshape(*lead, rows, words // 2, 2)
    x = jnp.swapaxes(x, -3, -2)  # (..., words // 2, rows, 2)
    return x.reshape(*lead, rows, words)


def cutlass_to_logical(meta: jax.Array) -> jax.Array:
    """Inverse of :func:`logical_to_cutlass`: CUTLASS-ordered words back to row-major."""
    _check_cutlass_shape(tuple(jnp.shape(meta)), "meta")
    *lead, rows, words = meta.shape
    x = meta.reshape(*lead, words // 2, rows, 2)
    x = jnp.swapaxes(x, -3, -2).reshape(*lead, rows // 2, 2, words // 2, 2)
    x = jnp.swapaxes(x, -3, -1).reshape(*lead, rows // 32, 8, 4, words)
    return jnp.swapaxes(x, -3, -2).reshape(*lead, rows, words)


def to_nvidia_2to4(c: CompressedNM, *, layout: Layout) -> tuple[jax.Array, jax.Array]:
    """Exports a 2:4 array as NVIDIA sparse-operand values and ``uint16`` metadata.

    The group axis is moved last: for a Flax kernel ``W`` of shape ``(K, N)`` grouped along
    ``K`` this gives the operand ``A = Wᵀ`` (``(N, K)``, rows = ``N``) of ``Yᵀ = Wᵀ · Xᵀ``.

    Args:
      c: a 2:4 :class:`~jaxnm.compressed.CompressedNM` whose group axis has a length
        ``K`` divisible by 16 (by 32 for ``layout="cutlass"``).
      layout: ``"logical"`` (row-major words, as ``mma.sp`` reads them per row) or
        ``"cutlass"`` (CUTLASS's storage order, as PyTorch's CUTLASS backend keeps it;
        the rows, ``c.shape`` without the group axis, must then number a multiple of 32).
        Required: see the module docstring.

    Returns:
      ``(values, metadata)``: ``values`` of shape ``(*rest, K // 2)`` (``c.dtype``) and
      ``metadata`` ``uint16`` of shape ``(*rest, K // 16)``, where ``rest`` is ``c.shape``
      without the group axis.

    Raises:
      ValueError: not 2:4, ``K`` not divisible by 16, an unknown ``layout``, or a shape
        that ``layout="cutlass"`` cannot interleave.
    """
    layout = _check_layout(layout)
    if (c.n, c.m) != (2, 4):
        raise ValueError(f"NVIDIA metadata needs a 2:4 array, got n={c.n}, m={c.m}.")
    k = c.shape[c.axis]
    if k % 16:
        raise ValueError(
            f"NVIDIA metadata packs 4 groups of 4 per uint16: the group axis (size {k}) of "
            f"shape {tuple(c.shape)} must be a multiple of 16."
        )
    values = jnp.moveaxis(c.values, c.axis, -1)
    idx = jnp.moveaxis(group_indices(c), c.axis, -1).astype(jnp.uint16)
    idx = idx.reshape(*idx.shape[:-1], k // 16, 8)  # 4 groups x 2 indices per word
    meta = jnp.sum(idx << _SHIFTS, axis=-1, dtype=jnp.uint16)  # disjoint bits: sum == or
    if layout == "cutlass":
        meta = logical_to_cutlass(meta)
    return values, meta


_SHIFTS = (2 * np.arange(8)).astype(np.uint16)


def from_nvidia_2to4(
    values: jax.Array, metadata: jax.Array, *, layout: Layout, axis: int = -2
) -> CompressedNM:
    """Imports NVIDIA 2:4 values and ``uint16`` metadata (see :func:`to_nvidia_2to4`).

    Args:
      values: ``(*rest, K // 2)`` kept values, floating.
      metadata: ``(*rest, K // 16)`` ``uint16`` (other integer dtypes, e.g. PyTorch's
        ``int16``, are reinterpreted modulo 2**16).
      layout: the metadata's word order, ``"logical"`` or ``"cutlass"`` (required: both
        give valid-looking codes, only the right one gives the matrix back).
      axis: where the dense group axis goes in the result (``-2``: back to a ``(K, N)``
        Flax kernel from ``Wᵀ``).

    Returns:
      :class:`~jaxnm.compressed.CompressedNM` of dense shape ``rest`` with ``K`` inserted
      at ``axis``.

    Raises:
      ValueError: an unknown ``layout``, mismatched shapes, a shape ``"cutlass"`` cannot
        hold, or (when concrete) a group whose two positions are not strictly increasing.
    """
    layout = _check_layout(layout)
    check_floating(values, "values")
    vshape, mshape = tuple(jnp.shape(values)), tuple(jnp.shape(metadata))
    if len(vshape) == 0 or vshape[:-1] != mshape[:-1] or vshape[-1] != 8 * mshape[-1]:
        raise ValueError(
            f"`values` {vshape} and `metadata` {mshape} must have shapes (..., K // 2) and "
            "(..., K // 16) with the same leading axes."
        )
    meta = jnp.asarray(metadata).astype(jnp.uint16)
    if layout == "cutlass":
        meta = cutlass_to_logical(meta)
    idx = ((meta[..., None] >> _SHIFTS) & 3).astype(jnp.int32).reshape(vshape)
    if not isinstance(idx, jax.core.Tracer):  # eagerly: check the codes
        pairs = np.asarray(idx).reshape(-1, 2)
        bad = np.flatnonzero(pairs[:, 0] >= pairs[:, 1])
        if bad.size:
            raise ValueError(
                f"`metadata` is not valid 2:4 metadata: {bad.size} groups have positions that "
                f"are not strictly increasing (first: group #{bad[0]} with {pairs[bad[0]]})."
            )
    k = 2 * vshape[-1]
    out_axis = normalize_axis(axis, len(vshape))
    dense_shape = list(vshape[:-1])
    dense_shape.insert(out_axis, k)
    return CompressedNM(
        values=jnp.moveaxis(values, -1, out_axis),
        indices=pack_indices(jnp.moveaxis(idx, -1, out_axis), 2, out_axis),
        shape=tuple(dense_shape),
        n=2,
        m=4,
        axis=out_axis,
    )
