"""Exact transposable masks on device: the ``"exact_device"`` method.

Warm start from the greedy solver (greedy pass + repair, :mod:`jaxnm.masks.greedy`), then
cancel negative cycles of every tile's residual graph until none is left
(:mod:`jaxnm.masks.residual`); where a tile has few admissible patterns (at most
:data:`jaxnm.masks.exhaustive.AUTO_MAX_PATTERNS`: 2:4 has 90), stage 1 is instead the float32
enumeration of :mod:`jaxnm.masks.exhaustive` (one matmul, cheaper than greedy + cancelling),
and the same proof and exact fallback follow. A mask with exactly ``n`` per row and column
whose residual graph has no negative cycle is a maximum-weight b-matching, i.e. an optimal
transposable tile, so the result is optimal for any ``n:m`` (not only where the patterns can
be enumerated). Everything is a ``jit``-able array program, vectorized over tiles, with no
host round trip; the cancelling rounds work on compacted batches of the tiles that still
improve (buffers of ``B // 8`` tiles from the first round on).

Exactness. Float32 cycle cancelling alone cannot decide optimality: it must ignore gains
below a rounding tolerance relative to the tile's largest score, which on heavy-tailed
tiles (one huge entry) hides real improvements among the others. So the solve has three
stages:

1. fast float32 cancelling with that tolerance (:func:`~jaxnm.masks.residual.tolerance`),
   or the float32 enumeration of every pattern where there are few, which leaves nearly
   every tile optimal;
2. a cheap float32 proof of optimality for nearly every tile
   (:func:`jaxnm.masks.certificate.proven_optimal_float`: potentials whose reduced costs
   are positive by more than their rigorous rounding error bound, so the mask is the unique
   optimum); it fails only on tiles with ties or near-ties (within a few float32 ulps of
   the scores involved) and on the few that stage 1 left suboptimal;
3. exact cancelling for the tiles stage 2 could not prove, in integer arithmetic on the
   tile's grid (:mod:`jaxnm.masks.fixed`: two int32 words, 54–56 bits below the tile's
   largest ``|score|``): a round's exact Bellman–Ford either settles (the tile is proven
   optimal on the grid) or finds negative cycles, each gaining at least one grid unit, so
   it terminates, and it stops only when no negative cycle is left.

Tiles proven in stage 2 are exactly optimal for their float32 scores; the others are
optimal for the scores on the grid, i.e. exactly optimal whenever every
score lies within ``2**-30`` of its tile's largest (``m <= 16``); smaller scores are
rounded to the grid (a difference far below float32 resolution of the tile's total).
:func:`jaxnm.masks.certificate.certify` proves it per tile (gap 0). ``+inf`` scores are
handled by :func:`jaxnm.masks.residual.finite_scores` (an infinite entry is worth more
than all finite ones of its tile together).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from jaxnm.masks import exhaustive, fixed
from jaxnm.masks.certificate import proven_optimal_float
from jaxnm.masks.chunks import map_tile_chunks
from jaxnm.masks.greedy import greedy_keep, repair
from jaxnm.masks.residual import cancel_cycles, finite_scores


def default_max_rounds(n: int, m: int) -> int:
    """Safety cap on cancelling rounds per tile: ``4 * n * m`` (128 for 4:8).

    Tiles stop when they are optimal; on Gaussian 4096 x 4096 layers the slowest tile
    needs about 8 rounds at 4:8 and 12 at 8:16, far below the cap.
    """
    return 4 * n * m


def solve(scores: jax.Array, n: int, *, max_rounds: int | None = None) -> jax.Array:
    """Optimal transposable tiles, computed on device.

    Args:
      scores: float32 ``(B, m, m)`` tile scores (``>= 0``, ``+inf``, or ``-1`` for NaN).
      n: kept entries per row and column (static int).
      max_rounds: cap on cancelling rounds per tile, for each of the float and the exact
        stage (static int; ``None``: :func:`default_max_rounds`; where the patterns are
        enumerated, only the exact stage cancels). A tile that reaches it keeps its best
        mask so far, still valid (never seen below the default cap).

    Returns:
      bool ``(B, m, m)`` with exactly ``n`` per row and column and a maximal retained
      score (exactly, on the grid of the module docstring).
    """
    m = scores.shape[-1]
    if max_rounds is None:
        max_rounds = default_max_rounds(n, m)
    scores = finite_scores(scores)
    if exhaustive.pattern_count_at_most(n, m, exhaustive.AUTO_MAX_PATTERNS):
        # 2:4 (90 patterns): measured 0.69x the time of greedy + cancelling at 2048², same
        # masks (the proof below checks the float32 argmax, the fallback fixes near-ties).
        # In chunks (cache-resident pattern totals): 0.28-0.32 s against 0.42 s for the
        # enumeration of 1,048,576 tiles at 2:4 (CPU), the same masks.
        keep = map_tile_chunks(lambda s: exhaustive.solve(s, n), scores)
    else:
        keep = repair(scores, greedy_keep(scores, n), n)
        # Tiles need 1 to ~12 rounds: buffers of B // 8 from the first round on, so the
        # work follows the tiles still cancelling (whole-batch rounds ran ~7.1 tile-rounds
        # per tile at 8:16 where 5.1 are needed).
        keep = cancel_cycles(
            scores,
            keep,
            max_rounds=max_rounds,
            whole_batch=False,
            **_float_search(m),
        )
    unproven = ~proven_optimal_float(scores, keep)
    return _exact_cancelling(scores, keep, unproven, max_rounds)


def _float_search(m: int) -> dict:
    """How stage 1 searches cycles (:func:`~jaxnm.masks.residual.cancel_cycles` options).

    Up to ``m = 8``: ``m - 1`` Bellman–Ford rounds a round, and a tile stops after a round
    that cancels nothing (the proof of stage 2 checks it anyway; the rare tile with a
    longer cycle fails it and goes to stage 3): measured 0.67 / 0.71 s against 0.74 /
    0.76 s for the whole 4:8 solve of 262,144 Gaussian / Cauchy tiles, the same masks.
    From ``m = 16``: ``m`` rounds, until every tile settles (``m - 1`` measured no
    faster at 8:16).
    """
    if m <= 8:
        return {"bf_rounds": m - 1, "stop_without_cycle": True}
    return {}


def _exact_cancelling(
    scores: jax.Array, keep: jax.Array, unproven: jax.Array, max_rounds: int
) -> jax.Array:
    """Stage 3: exact cancelling of the ``unproven`` tiles (bool ``(B,)``).

    They are usually few: gathered once into the smallest batch that holds them, of
    ``max(64, B // 256)`` or ``max(64, B // 16)`` tiles, put on the grid and cancelled on
    their own (one gather and one scatter on the whole batch); otherwise (ties everywhere,
    e.g. integer scores) the whole batch is. The small batch serves the 29 of 262,144
    Gaussian and 787 Cauchy tiles left at 4:8: 5-8x cheaper for them than a batch of
    ``B // 16``, whose grid conversion dominated. Under ``vmap`` every branch runs.
    """
    b = scores.shape[0]
    if b == 0:
        return keep
    sizes = sorted({min(b, max(64, b // 256)), min(b, max(64, b // 16))})

    def few(keep, size):
        idx = jnp.nonzero(unproven, size=size, fill_value=b)[0]
        safe = jnp.minimum(idx, b - 1)
        grid = fixed.from_scores(scores[safe])
        new = cancel_cycles(grid, keep[safe], max_rounds=max_rounds, active=idx < b)
        return keep.at[idx].set(new, mode="drop")

    def many(keep):
        grid = fixed.from_scores(scores)
        return cancel_cycles(grid, keep, max_rounds=max_rounds, active=unproven)

    count = jnp.sum(unproven)
    branch = sum((count > size).astype(jnp.int32) for size in sizes)
    branches = [functools.partial(few, size=size) for size in sizes] + [many]
    return lax.switch(branch, branches, keep)
