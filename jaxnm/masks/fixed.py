"""Exact two-word fixed-point arithmetic for tile scores (no float64, no x64 mode needed).

A tile's float32 scores are mapped onto an integer grid whose unit is ``2**-frac_bits(m)``
of a power of two above the tile's largest ``|score|``; each value ``x`` on the grid is a
pair of int32 words ``x = hi * 2**LO_BITS + lo`` with ``0 <= lo < 2**LO_BITS``. Sums and
differences of a few hundred grid values are then exact, so comparisons of path and cycle
costs are decidable: no tolerance is needed, every strict improvement is by at least one
unit, and zero means zero.

Resolution: the grid has ``frac_bits(m)`` bits below the tile's largest ``|score|``
(54 at ``m = 16``, 55 at ``m = 8``, 56 at ``m = 4``), so every score within
``2**(24 - frac_bits)`` of the tile's largest (``2**-30`` at 8:16) is represented exactly;
only smaller ones are rounded (to nearest, or down / up with ``rounding``). Headroom: the
high word leaves room for sums of up to ``4 (m + 2)`` scores of the tile's scale.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

#: Bits of the low word.
LO_BITS = 30
_LO = 1 << LO_BITS
_MASK = _LO - 1
#: High word of the "no edge" value; above any sum the solvers form, far below overflow.
INF_HI = 1 << 30

Rounding = Literal["nearest", "down", "up"]


class Fixed(NamedTuple):
    """Values on a tile's grid, ``hi * 2**LO_BITS + lo`` units (a pytree)."""

    hi: jax.Array  # int32 (...,)
    lo: jax.Array  # int32 (...,), in [0, 2**LO_BITS)


def index(a: Fixed, idx) -> Fixed:
    """``a[idx]`` on both words."""
    return Fixed(a.hi[idx], a.lo[idx])


def hi_bits(m: int) -> int:
    """Bits of the high word below the tile's scale: ``floor(log2(2**31 / (4 (m + 2))))``."""
    return 31 - (4 * (m + 2) - 1).bit_length()


def frac_bits(m: int) -> int:
    """Bits of the grid below a power of two above the tile's largest ``|score|``."""
    return hi_bits(m) + LO_BITS


def _normalize(hi: jax.Array, lo: jax.Array) -> Fixed:
    """Carries ``lo`` (any int32 in ``(-2**31, 2**31)``) into ``hi``."""
    return Fixed(hi + (lo >> LO_BITS), lo & _MASK)


def add(a: Fixed, b: Fixed) -> Fixed:
    return _normalize(a.hi + b.hi, a.lo + b.lo)


def sub(a: Fixed, b: Fixed) -> Fixed:
    return _normalize(a.hi - b.hi, a.lo - b.lo)


def less(a: Fixed, b: Fixed) -> jax.Array:
    """Elementwise ``a < b`` (bool)."""
    return (a.hi < b.hi) | ((a.hi == b.hi) & (a.lo < b.lo))


def where(cond: jax.Array, a: Fixed, b: Fixed) -> Fixed:
    return Fixed(jnp.where(cond, a.hi, b.hi), jnp.where(cond, a.lo, b.lo))


def maximum(a: Fixed, b: Fixed) -> Fixed:
    return where(less(a, b), b, a)


def zeros(shape) -> Fixed:
    return Fixed(jnp.zeros(shape, jnp.int32), jnp.zeros(shape, jnp.int32))


def infinity(shape) -> Fixed:
    """The "no edge" value: larger than every sum of scores the solvers form."""
    return Fixed(jnp.full(shape, INF_HI, jnp.int32), jnp.zeros(shape, jnp.int32))


def min_argmin(a: Fixed, axis: int) -> tuple[Fixed, jax.Array]:
    """Minimum along ``axis`` and its first index (int32)."""
    hi = jnp.min(a.hi, axis=axis, keepdims=True)
    lo = jnp.where(a.hi == hi, a.lo, _LO)
    arg = jnp.argmin(lo, axis=axis).astype(jnp.int32)
    return Fixed(jnp.squeeze(hi, axis), jnp.min(lo, axis=axis)), arg


def total(a: Fixed, axes, rounding: Literal["down", "up"]) -> jax.Array:
    """Sum over ``axes`` as float32 grid units, rounded outwards as asked.

    The words are cut into 15-bit chunks whose int32 sums are exact (up to ``2**16``
    terms); only the final combination of the four chunk sums rounds, and it is widened by
    a rigorous bound, so a result of 0 means an exact sum of 0 for non-negative ``a``.
    """
    low = (1 << 15) - 1
    chunks = (a.lo & low, a.lo >> 15, a.hi & low, a.hi >> 15)
    parts = [
        jnp.sum(c, axis=axes).astype(jnp.float32) * float(2 ** (15 * k))
        for k, c in enumerate(chunks)
    ]
    s = (parts[3] + parts[2]) + (parts[1] + parts[0])
    mag = sum(jnp.abs(p) for p in parts)
    slack = 4 * jnp.finfo(jnp.float32).eps * mag
    return s + slack if rounding == "up" else s - slack


def tile_exponent(scores: jax.Array) -> jax.Array:
    """int32 ``(B,)``: the least ``e`` with ``max|scores[b]| < 2**e`` (0 for all-zero tiles)."""
    b = scores.shape[0]
    amax = jnp.max(jnp.abs(scores).reshape(b, math.prod(scores.shape[1:])), axis=-1)
    return jnp.frexp(amax)[1].astype(jnp.int32)


def _pow2(k: jax.Array) -> jax.Array:
    """float32 ``2**k`` for int32 ``k`` in ``[-126, 127]``, built from its bits (exact)."""
    return lax.bitcast_convert_type((k + 127) << 23, jnp.float32)


def _scale(x: jax.Array, power: jax.Array) -> jax.Array:
    """``x * 2**power`` exactly for int32 ``power`` in ``[-252, 254]`` (two exact factors,
    so no intermediate overflows float32 when the result fits)."""
    half = power // 2
    return x * _pow2(half) * _pow2(power - half)


def from_scores(scores: jax.Array, rounding: Rounding = "nearest") -> Fixed:
    """Maps finite float32 tiles onto their grids (see :func:`from_float`).

    Args:
      scores: finite float32 ``(B, m, m)``.
      rounding: how scores below the grid's resolution are rounded (``"down"``/``"up"``
        give exact lower/upper bounds on every score).

    Returns:
      :class:`Fixed` ``(B, m, m)``.
    """
    return from_float(scores, tile_exponent(scores), scores.shape[-1], rounding)


def from_float(x: jax.Array, exponent: jax.Array, m: int, rounding: Rounding = "nearest") -> Fixed:
    """Maps finite float32 values of tiles onto the tiles' grids.

    Args:
      x: finite float32 ``(B, ...)`` with ``|x| < 2 (m + 2) * 2**exponent`` (the headroom).
      exponent: int32 ``(B,)`` from :func:`tile_exponent`.
      m: tile size (sets the grid).
      rounding: how values below the grid's resolution are rounded (``"down"``/``"up"``
        give exact lower/upper bounds).

    Returns:
      :class:`Fixed` of ``x``'s shape; ``x[b] == value * 2**(exponent[b] - frac_bits(m))``
      up to the rounding.
    """
    scores = x
    power = frac_bits(m) - exponent
    mag = _scale(jnp.abs(scores), power.reshape((-1,) + (1,) * (x.ndim - 1)))  # exact
    hi = jnp.floor(mag * (1.0 / _LO))  # exact: a power-of-two scale, then floor
    lo = mag - hi * _LO  # exact: the low bits of mag's mantissa
    negative = scores < 0
    # Round the magnitude so that the signed value rounds as asked.
    if rounding == "nearest":
        lo = jnp.round(lo)
    elif rounding == "down":
        lo = jnp.where(negative, jnp.ceil(lo), jnp.floor(lo))
    else:
        lo = jnp.where(negative, jnp.floor(lo), jnp.ceil(lo))
    value = _normalize(hi.astype(jnp.int32), lo.astype(jnp.int32))
    return where(negative, sub(zeros(scores.shape), value), value)


def to_float(a: Fixed, exponent: jax.Array, m: int) -> jax.Array:
    """float32 value of grid values (nearest; the inverse of :func:`from_float`).

    Args:
      a: :class:`Fixed` ``(B, ...)``.
      exponent: int32 ``(B,)`` from :func:`tile_exponent`.
      m: tile size (sets the grid).
    """
    units = a.hi.astype(jnp.float32) * float(_LO) + a.lo.astype(jnp.float32)
    return units_to_float(units, exponent, m)


def units_to_float(units: jax.Array, exponent: jax.Array, m: int) -> jax.Array:
    """float32 grid units ``(B, ...)`` in the tiles' score units (an exact power-of-two
    scale, unless the result is below float32's normal range)."""
    power = exponent - frac_bits(m)
    return _scale(units, power.reshape((-1,) + (1,) * (units.ndim - 1)))
