"""Tiling of the last two axes into true ``m x m`` blocks (rows = ``in``, cols = ``out``).

A sharded weight keeps its sharding on the tile grid (``R // m``, ``C // m``), also on
meshes with ``Explicit`` axes; each ``m x m`` tile stays on one device.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxnm._sharding import reshape


def to_tiles(x: jax.Array, m: int) -> jax.Array:
    """``(..., R, C) -> (..., R // m, C // m, m, m)``; tile ``[i, j]`` is
    ``x[..., i*m:(i+1)*m, j*m:(j+1)*m]``."""
    *lead, rows, cols = x.shape
    x = reshape(x, (*lead, rows // m, m, cols // m, m))
    return jnp.swapaxes(x, -3, -2)


def from_tiles(x: jax.Array) -> jax.Array:
    """Inverse of :func:`to_tiles`: ``(..., R // m, C // m, m, m) -> (..., R, C)``."""
    *lead, tr, tc, m, m2 = x.shape
    x = jnp.swapaxes(x, -3, -2)
    return reshape(x, (*lead, tr * m, tc * m2))
