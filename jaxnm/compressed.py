"""Compressed N:M storage: kept values plus bit-packed in-group indices.

A weight ``w`` that is N:M along ``axis`` is stored as

* ``values``: ``w``'s kept entries, ``w.shape`` with ``axis`` shrunk by ``n / m``, in ``w``'s
  dtype. Group ``g`` (dense positions ``g*m .. g*m+m-1`` along ``axis``) owns compressed
  positions ``g*n .. g*n+n-1``, its kept values in increasing dense position.
* ``indices``: each kept value's position inside its group (``0 .. m-1``), bit-packed as
  ``uint8`` **bit planes**: with ``bits = ceil(log2 m)`` (2:4 -> 2, 4:8 -> 3), the compressed
  axis (length ``Kc = K*n/m``) is padded with zeros to a multiple of 8 and split into runs of 8
  consecutive indices; plane ``p`` holds bit ``p`` of the 8 indices of a run in one byte, index
  ``j`` of the run at bit ``j`` (LSB first). Array shape: ``(bits, *values.shape)`` with the
  compressed axis replaced by ``ceil(Kc / 8)`` (it stays at ``axis``, shifted by the leading
  plane axis). Every index costs exactly ``bits`` bits, for every ``m``.

Bytes for bfloat16 2:4: values 50% + indices 2 bits / 4 dense entries = 6.25%, so 56.25% of the
dense array; 4:8: 50% + 4 x 3 bits per 8 dense entries (9.375%) = 59.375%.

NVIDIA 2:4 values and metadata, in the logical or the CUTLASS word order, are exported and
imported by :mod:`jaxnm.nvidia_2to4`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math

import jax
import jax.export
import jax.numpy as jnp
import numpy as np

from jaxnm._checks import check_floating, check_group_axis, check_nm
from jaxnm.masks.nm import from_groups, to_groups

RUN = 8  # indices per packed byte (one bit of each per plane); kernels unpack by it


@dataclasses.dataclass(frozen=True)
class CompressedNM:
    """An N:M-sparse array in compressed form (a pytree: ``values`` and ``indices`` are leaves).

    Attributes:
      values: kept entries, dense ``shape`` with ``axis`` shrunk to ``shape[axis] * n // m``;
        the dense array's dtype (float32 / bfloat16 / float16 ...).
      indices: ``uint8`` bit planes ``(bits, ...)`` of each kept value's position in its group
        (see the module docstring for the exact layout).
      shape: dense shape (static).
      n, m: the N:M pattern, keep ``n`` of every ``m`` (static).
      axis: non-negative group axis of the dense array (static).
    """

    values: jax.Array
    indices: jax.Array
    shape: tuple[int, ...]
    n: int
    m: int
    axis: int

    @property
    def dtype(self):
        """Dtype of the values (and of the dense array)."""
        return self.values.dtype

    @property
    def bits(self) -> int:
        """Bits per stored index: ``ceil(log2(m))``."""
        return index_bits(self.m)

    @property
    def nbytes(self) -> int:
        """Bytes of ``values`` plus ``indices``."""
        return _nbytes(self.values) + _nbytes(self.indices)

    @property
    def dense_nbytes(self) -> int:
        """Bytes of the equivalent dense array."""
        return math.prod(self.shape) * jnp.dtype(self.values.dtype).itemsize


jax.tree_util.register_dataclass(
    CompressedNM, data_fields=["values", "indices"], meta_fields=["shape", "n", "m", "axis"]
)


def _serialize_meta(aux) -> bytes:
    shape, n, m, axis = aux
    return json.dumps({"shape": list(shape), "n": n, "m": m, "axis": axis}).encode()


def _deserialize_meta(data: bytes):
    meta = json.loads(data.decode())
    return tuple(meta["shape"]), meta["n"], meta["m"], meta["axis"]


# `jax.export` can serialize functions taking or returning a CompressedNM.
jax.export.register_pytree_node_serialization(
    CompressedNM,
    serialized_name="jaxnm.CompressedNM",
    serialize_auxdata=_serialize_meta,
    deserialize_auxdata=_deserialize_meta,
)


def _nbytes(x) -> int:
    return math.prod(jnp.shape(x)) * jnp.dtype(jnp.result_type(x)).itemsize


def index_bits(m: int) -> int:
    """Bits needed for an index inside a group of ``m``: ``ceil(log2(m))`` (0 for ``m == 1``)."""
    return (m - 1).bit_length()


@functools.partial(jax.jit, static_argnames=("bits", "axis"))
def pack_indices(idx: jax.Array, bits: int, axis: int) -> jax.Array:
    """Packs in-group indices into ``uint8`` bit planes along ``axis``.

    Args:
      idx: integer array (values' shape), entries in ``[0, 2**bits)``.
      bits: bits per index.
      axis: the compressed group axis of ``idx`` (non-negative).

    Returns:
      ``uint8`` array ``(bits, *idx.shape)`` with ``idx.shape[axis]`` replaced by
      ``ceil(idx.shape[axis] / 8)``: plane ``p``, byte ``q`` has bit ``j`` set iff bit ``p``
      of ``idx[..., 8*q + j, ...]`` is set (zero padding past the end).
    """
    x = jnp.moveaxis(jnp.asarray(idx).astype(jnp.uint8), axis, -1)
    length = x.shape[-1]
    pad = -length % RUN
    x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, pad)])
    x = x.reshape(*x.shape[:-1], (length + pad) // RUN, RUN)
    weights = (jnp.uint8(1) << jnp.arange(RUN, dtype=jnp.uint8)).astype(jnp.uint8)
    planes = [jnp.sum(((x >> p) & 1) * weights, axis=-1, dtype=jnp.uint8) for p in range(bits)]
    planes = jnp.stack(planes) if planes else jnp.zeros((0, *x.shape[:-1]), jnp.uint8)
    return jnp.moveaxis(planes, -1, axis + 1)


@functools.partial(jax.jit, static_argnames=("length", "axis"))
def unpack_indices(planes: jax.Array, length: int, axis: int) -> jax.Array:
    """Inverse of :func:`pack_indices`: ``int32`` indices with ``length`` entries along ``axis``."""
    planes = jnp.expand_dims(planes, axis + 2)  # (bits, ..., Q, 1, ...)
    shifts = _along(jnp.arange(RUN, dtype=jnp.uint8), axis + 2, planes.ndim)
    idx = jnp.zeros(planes.shape[1 : axis + 2] + (RUN,) + planes.shape[axis + 3 :], jnp.uint8)
    for p in range(planes.shape[0]):
        idx = idx | (((planes[p] >> shifts[0]) & 1) << p)
    idx = _merge(idx, axis)  # (..., Q * 8, ...)
    return jax.lax.slice_in_dim(idx, 0, length, axis=axis).astype(jnp.int32)


def _along(v: jax.Array, axis: int, ndim: int) -> jax.Array:
    """1-D ``v`` reshaped to broadcast along ``axis`` of a rank-``ndim`` array."""
    return v.reshape((1,) * axis + (-1,) + (1,) * (ndim - axis - 1))


def _split(x: jax.Array, axis: int, size: int) -> jax.Array:
    """Splits ``axis`` in place: ``(..., A, ...) -> (..., A // size, size, ...)``."""
    return x.reshape(x.shape[:axis] + (x.shape[axis] // size, size) + x.shape[axis + 1 :])


def _merge(x: jax.Array, axis: int) -> jax.Array:
    """Merges ``axis`` and ``axis + 1``: inverse of :func:`_split`."""
    return x.reshape(x.shape[:axis] + (x.shape[axis] * x.shape[axis + 1],) + x.shape[axis + 2 :])


def _concrete(x) -> np.ndarray | None:
    """``x`` as a NumPy array, or ``None`` when it is a tracer (under jit / vmap / grad)."""
    try:
        return np.asarray(x)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def _check_mask_nm(mask: np.ndarray, n: int, m: int, axis: int) -> None:
    counts = np.sum(np.moveaxis(mask != 0, axis, -1).reshape(-1, m), axis=-1)
    bad = np.flatnonzero(counts != n)
    if bad.size:
        raise ValueError(
            f"`mask` is not {n}:{m} along axis {axis}: {bad.size} of {counts.size} groups keep a "
            f"different number of entries than n={n} (first bad group #{bad[0]} keeps "
            f"{counts[bad[0]]})."
        )


@functools.partial(jax.jit, static_argnames=("n", "m", "axis"))
def _compress_arrays(w, mask, *, n: int, m: int, axis: int):
    keep = to_groups(mask != 0, m, axis)  # (..., G, m)
    order = jnp.argsort(~keep, axis=-1, stable=True)[..., :n]
    pos = jnp.sort(order, axis=-1)  # (..., G, n), increasing dense position
    wg = to_groups(w, m, axis)
    vals = jnp.where(
        jnp.take_along_axis(keep, pos, axis=-1), jnp.take_along_axis(wg, pos, axis=-1), 0
    ).astype(wg.dtype)
    # A group keeping more than n cannot be stored: its values become NaN (visible, not wrong).
    vals = jnp.where(jnp.sum(keep, axis=-1, keepdims=True) > n, jnp.nan, vals).astype(wg.dtype)
    return from_groups(vals, axis), pack_indices(from_groups(pos, axis), index_bits(m), axis)


def compress(w: jax.Array, mask: jax.Array, n: int, m: int, *, axis: int = -2) -> CompressedNM:
    """Compresses ``w * mask`` where ``mask`` is N:M along ``axis``.

    Args:
      w: floating array of any shape (float32, bfloat16, float16, ...); groups of ``m``
        consecutive entries run along ``axis`` (default ``-2``: ``in`` of a Flax kernel).
      mask: array of ``w``'s shape (bool or numeric, nonzero = kept), exactly ``n`` kept per
        group, e.g. from :func:`jaxnm.nm_mask` or :func:`jaxnm.transposable_mask`.
      n: entries kept per group (static int).
      m: group size (static int), dividing ``w.shape[axis]``.
      axis: the group axis.

    Returns:
      :class:`CompressedNM`; ``decompress`` of it equals ``w * mask`` exactly.

    Raises:
      ValueError: bad ``n``/``m``/``axis``, non-floating ``w``, ``mask`` of another shape, or
        (when ``mask`` is concrete) a group that does not keep exactly ``n`` entries.
        Under ``jit``/``vmap`` the mask cannot be inspected eagerly; nothing is silently
        wrong: a group keeping fewer than ``n`` stores zeros for the missing ones (so
        ``decompress`` still gives ``w * mask`` exactly), and a group keeping more than ``n``,
        which no N:M format can hold, stores NaN values (``decompress`` and ``nm_matmul`` show
        NaN there). To fail instead, check ``jaxnm.is_nm(mask, n, m, axis=axis)`` with
        ``jax.experimental.checkify.check`` before compressing.
    """
    n, m = check_nm(n, m)
    check_floating(w)
    shape = tuple(jnp.shape(w))
    if tuple(jnp.shape(mask)) != shape:
        raise ValueError(
            f"`mask` has shape {tuple(jnp.shape(mask))} but `w` has shape {shape}; they must match."
        )
    axis = check_group_axis(shape, axis, m)
    concrete = _concrete(mask)
    if concrete is not None:
        _check_mask_nm(concrete, n, m, axis)
    values, indices = _compress_arrays(w, mask, n=n, m=m, axis=axis)
    return CompressedNM(values=values, indices=indices, shape=shape, n=n, m=m, axis=axis)


def group_indices(c: CompressedNM) -> jax.Array:
    """In-group index of every kept value: ``int32``, ``c.values``' shape, in ``[0, m)``."""
    return unpack_indices(c.indices, c.values.shape[c.axis], c.axis)


@jax.jit
def _scatter(c: CompressedNM, values: jax.Array) -> jax.Array:
    # Groups split in place along the axis (no transposes): (..., G, n, ...) -> (..., G, m, ...).
    vals = _split(values, c.axis, c.n)
    idx = _split(group_indices(c), c.axis, c.n)
    slot = _along(jnp.arange(c.m, dtype=idx.dtype), c.axis + 1, idx.ndim)
    shape = vals.shape[: c.axis + 1] + (c.m,) + vals.shape[c.axis + 2 :]
    dense = jnp.zeros(shape, vals.dtype)
    for t in range(c.n):
        v_t = jax.lax.slice_in_dim(vals, t, t + 1, axis=c.axis + 1)
        i_t = jax.lax.slice_in_dim(idx, t, t + 1, axis=c.axis + 1)
        dense = jnp.where(i_t == slot, v_t, dense)
    return _merge(dense, c.axis)


def decompress(c: CompressedNM) -> jax.Array:
    """Dense array of ``c.shape`` and ``c.dtype``: kept values in place, zeros elsewhere."""
    return _scatter(c, c.values)


def kept_mask(c: CompressedNM) -> jax.Array:
    """Bool mask of ``c.shape``: True at the stored positions (exactly ``n`` per group)."""
    return _scatter(c, jnp.ones(c.values.shape, jnp.bool_))


def gather_kept(dense: jax.Array, c: CompressedNM) -> jax.Array:
    """Entries of ``dense`` (``c.shape``) at ``c``'s kept positions: an array like ``c.values``.

    Used for gradients w.r.t. the kept values: ``gather_kept(dW, c)``.
    """
    if tuple(jnp.shape(dense)) != tuple(c.shape):
        raise ValueError(f"`dense` has shape {jnp.shape(dense)}, expected {tuple(c.shape)}.")
    return _gather(dense, c)


@jax.jit
def _gather(dense: jax.Array, c: CompressedNM) -> jax.Array:
    groups = _split(dense, c.axis, c.m)  # (..., G, m, ...)
    idx = _split(group_indices(c), c.axis, c.n)  # (..., G, n, ...)
    return _merge(jnp.take_along_axis(groups, idx, axis=c.axis + 1), c.axis)


def transpose(c: CompressedNM) -> CompressedNM:
    """Compressed ``Wᵀ`` (last two axes swapped), grouped along its axis ``-2``.

    ``c`` must be grouped along its axis ``-2`` (``in`` of a ``(..., in, out)`` kernel) with a
    transposable mask, so that ``Wᵀ`` (``(..., out, in)``) is N:M along ``out``: this is the
    operand of the input-gradient GEMM ``dX = dY · Wᵀ``.

    Raises:
      ValueError: ``c`` grouped along another axis, or (eagerly) a mask that is not
        transposable (``Wᵀ`` not N:M along ``out``).
    """
    ndim = len(c.shape)
    if ndim < 2 or c.axis != ndim - 2:
        raise ValueError(
            f"`c` must be grouped along axis -2 of a rank >= 2 array to be transposed, got "
            f"axis={c.axis} for shape {tuple(c.shape)}."
        )
    w_t = jnp.swapaxes(decompress(c), -1, -2)
    mask_t = jnp.swapaxes(kept_mask(c), -1, -2)
    return compress(w_t, mask_t, c.n, c.m, axis=-2)
