"""Large tile batches mapped in equal chunks, so that a stage's passes stay in cache.

A stage that sweeps its whole batch several times (Bellman–Ford rounds, a pattern matmul
and its argmax) is memory-bound on a large batch; run chunk by chunk (``lax.map``), each
chunk's data stays in cache across the sweeps. Every tile's result depends only on that
tile, so the result is the same.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
from jax import lax

from jaxnm._sharding import explicit_context

#: Largest chunk, in tiles (4 MiB of float32 8 x 8 tiles).
CHUNK_TILES = 16384


def chunk_size(b: int, largest: int) -> int:
    """Tiles per chunk for a batch of ``b``: ``b`` itself up to ``largest``, else the
    largest divisor of ``b`` in ``[largest // 8, largest]``, else ``b`` (one chunk)."""
    if b <= largest:
        return b
    for chunk in range(largest, largest // 8 - 1, -1):
        if b % chunk == 0:
            return chunk
    return b


def map_tile_chunks(f: Callable, *tiles: jax.Array, largest: int | None = None):
    """``f(*tiles)`` computed chunk by chunk along the leading (tile) axis.

    Args:
      f: maps arrays ``(K, ...)`` to a pytree of arrays ``(K, ...)``, tile by tile.
      tiles: arrays ``(B, ...)`` with the same ``B``.
      largest: the largest chunk (static int; see :func:`chunk_size`; ``None``:
        :data:`CHUNK_TILES`).

    Returns:
      ``f(*tiles)``. One call on the whole batch when it is small, has no divisor in
      range, or is sharded on an ``Explicit`` mesh (a chunked reshape of a sharded tile
      axis cannot state its sharding).
    """
    b = tiles[0].shape[0]
    chunk = chunk_size(b, CHUNK_TILES if largest is None else largest)
    if chunk == b or explicit_context(tiles[0]):
        return f(*tiles)
    split = [x.reshape((b // chunk, chunk) + x.shape[1:]) for x in tiles]
    out = lax.map(lambda chunk_tiles: f(*chunk_tiles), tuple(split))
    return jax.tree.map(lambda y: y.reshape((b,) + y.shape[2:]), out)
