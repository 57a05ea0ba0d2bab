"""Bit-packed storage of N:M masks: one unsigned word per group of ``m`` along axis ``-2``.

A mask ``(..., R, C)`` (groups of ``m`` consecutive entries along ``R``, the ``in`` axis of
Flax kernels) is stored as ``(..., R // m, C)`` words of ``uint8`` (``m <= 8``), ``uint16``
(``m <= 16``) or ``uint32`` (``m <= 32``); bit ``i`` of word ``[..., g, c]`` is entry
``[..., g * m + i, c]``. That is 1 bit per weight for ``m`` = 8, 16, 32 and 2 bits for
``m = 4``, against 8 bits for a ``bool`` mask. The packed array keeps the rank and the
axis order of the mask, so a ``PartitionSpec`` that shards the weight shards its packed
mask the same way (as long as the sharded size of ``R // m`` divides evenly), and packing
and unpacking are elementwise plus a reshape that never crosses a shard boundary (on
meshes with ``Explicit`` axes the reshapes state that sharding, see :mod:`jaxnm._sharding`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxnm._checks import check_group_axis
from jaxnm._sharding import reshape

MAX_GROUP = 32


def bit_words(m: int) -> tuple[np.dtype, int]:
    """The narrowest unsigned word type for a set of ``m`` bits, and how many words it takes
    (one for ``m <= 32``; 32-bit words beyond)."""
    for dtype, width in ((np.uint8, 8), (np.uint16, 16), (np.uint32, 32)):
        if m <= width:
            return np.dtype(dtype), 1
    return np.dtype(np.uint32), -(-m // 32)


def word_dtype(m: int) -> np.dtype:
    """The unsigned dtype holding one group of ``m`` bits.

    Raises:
      ValueError: ``m`` outside ``1..32``.
    """
    if not 0 < m <= MAX_GROUP:
        raise ValueError(
            f"`m` (={m}) must be in 1..{MAX_GROUP} for packed mask storage (one word per group)."
        )
    return bit_words(m)[0]


def packed_shape(shape: tuple[int, ...], m: int) -> tuple[int, ...]:
    """Shape of the packed form of a mask of ``shape``: ``(..., R, C) -> (..., R // m, C)``."""
    check_group_axis(tuple(shape), -2, m, name="mask")
    return (*shape[:-2], shape[-2] // m, shape[-1])


def pack(mask: jax.Array, m: int) -> jax.Array:
    """Packs a mask into one word per group of ``m`` along axis ``-2``.

    Args:
      mask: array ``(..., R, C)`` of rank >= 2 and any dtype (nonzero = kept), ``R`` a
        multiple of ``m``.
      m: group size, ``1 <= m <= 32`` (static int).

    Returns:
      ``(..., R // m, C)`` array of :func:`word_dtype` ``(m)``.

    Raises:
      ValueError: rank < 2, ``R`` not a multiple of ``m``, or ``m`` out of range.
    """
    dtype = word_dtype(m)
    packed_shape(jnp.shape(mask), m)
    *lead, rows, cols = jnp.shape(mask)
    groups = reshape(jnp.asarray(mask) != 0, (*lead, rows // m, m, cols)).astype(dtype)
    weights = (np.ones((), dtype) << np.arange(m, dtype=dtype)).reshape(m, 1)
    return jnp.sum(groups * weights, axis=-2, dtype=dtype)


def pack_host(mask: np.ndarray, m: int) -> np.ndarray:
    """:func:`pack` in NumPy (the same words), for masks computed on the host.

    Args:
      mask: NumPy array ``(..., R, C)`` (nonzero = kept), ``R`` a multiple of ``m``.
      m: group size, ``1 <= m <= 32``.

    Returns:
      NumPy ``(..., R // m, C)`` array of :func:`word_dtype` ``(m)``.
    """
    dtype = word_dtype(m)
    *lead, rows, cols = packed_shape(np.shape(mask), m)
    groups = (np.asarray(mask) != 0).reshape(*lead, rows, m, cols).astype(dtype)
    weights = (np.ones((), dtype) << np.arange(m, dtype=dtype)).reshape(m, 1)
    return np.sum(groups * weights, axis=-2, dtype=dtype)


def unpack(bits: jax.Array, m: int) -> jax.Array:
    """Inverse of :func:`pack`: ``(..., G, C)`` words to a bool mask ``(..., G * m, C)``.

    Args:
      bits: packed array of rank >= 2 and unsigned dtype :func:`word_dtype` ``(m)``.
      m: group size used by :func:`pack` (static int).

    Returns:
      bool array ``(..., G * m, C)``.

    Raises:
      ValueError: rank < 2 or a dtype that does not match ``m``.
    """
    dtype = word_dtype(m)
    bits = jnp.asarray(bits)
    if bits.ndim < 2:
        raise ValueError(f"`bits` must have rank >= 2, got shape {bits.shape}.")
    if bits.dtype != dtype:
        raise ValueError(f"`bits` has dtype {bits.dtype}; packed masks with m={m} use {dtype}.")
    *lead, groups, cols = bits.shape
    shifts = np.arange(m, dtype=dtype).reshape(m, 1)
    keep = (bits[..., :, None, :] >> shifts) & np.ones((), dtype)
    return reshape(keep.astype(bool), (*lead, groups * m, cols))
