"""Tiling of the last two axes into true ``m x m`` blocks (rows = ``in``, cols = ``out``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def to_tiles(x: jax.Array, m: int) -> jax.Array:
    """``(..., R, C) -> (..., R // m, C // m, m, m)``; tile ``[i, j]`` is
    ``x[..., i*m:(i+1)*m, j*m:(j+1)*m]``."""
    *lead, rows, cols = x.shape
    x = x.reshape(*lead, rows // m, m, cols // m, m)
    return jnp.swapaxes(x, -3, -2)


def from_tiles(x: jax.Array) -> jax.Array:
    """Inverse of :func:`to_tiles`: ``(..., R // m, C // m, m, m) -> (..., R, C)``."""
    *lead, tr, tc, m, m2 = x.shape
    x = jnp.swapaxes(x, -3, -2)
    return x.reshape(*lead, tr * m, tc * m2)
