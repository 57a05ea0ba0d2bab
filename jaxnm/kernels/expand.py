"""In-kernel expansion of a compressed N:M weight tile to a dense tile (shared by GPU and TPU).

Pure ``jax.numpy`` on values already loaded from refs, so the same code runs inside the
Pallas Triton kernel, the Pallas Mosaic TPU kernel and their interpret modes.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

from jaxnm.compressed import RUN  # compressed rows per packed index byte


def unpack_tile(planes: Sequence[jax.Array]) -> jax.Array:
    """Unpacks bit planes into in-group indices.

    Args:
      planes: ``bits`` arrays ``(r, bn)`` ``uint8``; plane ``p``, byte ``[q, col]`` holds bit
        ``p`` of the indices of compressed rows ``8q .. 8q+7`` (row ``8q+j`` at bit ``j``).

    Returns:
      ``int32`` ``(8 * r, bn)`` indices.
    """
    r, bn = planes[0].shape
    shifts = lax.broadcasted_iota(jnp.int32, (1, RUN, 1), 1)
    idx = jnp.zeros((r, RUN, bn), jnp.int32)
    for p, plane in enumerate(planes):
        bit = (plane.astype(jnp.int32)[:, None, :] >> shifts) & 1
        idx = idx | (bit << p)
    return idx.reshape(r * RUN, bn)


def expand_tile(values: jax.Array, planes: Sequence[jax.Array], n: int, m: int) -> jax.Array:
    """Dense ``(bkc * m // n, bn)`` tile from compressed values and packed indices.

    Args:
      values: ``(bkc, bn)`` kept values; rows ``g*n .. g*n+n-1`` belong to group ``g``
        (dense rows ``g*m .. g*m+m-1``). ``bkc`` is a multiple of 8 and of ``n``.
      planes: the tile's index bit planes, ``bits`` arrays ``(bkc // 8, bn)`` ``uint8``.
      n, m: the N:M pattern.

    Returns:
      ``(bkc * m // n, bn)`` dense tile in ``values.dtype`` (one-hot select over the ``m``
      positions of every group; exact, since each dense entry receives at most one value).
    """
    bkc, bn = values.shape
    groups = bkc // n
    idx = unpack_tile(planes).reshape(groups, n, 1, bn)
    vals = values.reshape(groups, n, 1, bn)
    slot = lax.broadcasted_iota(jnp.int32, (1, 1, m, 1), 2)
    dense = jnp.sum(jnp.where(idx == slot, vals, jnp.zeros((), values.dtype)), axis=1)
    return dense.astype(values.dtype).reshape(groups * m, bn)
