"""Exact transposable masks on device: the ``"exact_device"`` method.

Warm start from the greedy solver (greedy pass + repair, :mod:`jaxnm.masks.greedy`), then
cancel negative cycles of every tile's residual graph until none is left
(:mod:`jaxnm.masks.residual`). A mask with exactly ``n`` per row and column whose residual
graph has no negative cycle is a maximum-weight b-matching, i.e. an optimal transposable
tile, so the result is optimal for any ``n:m`` (not only where the patterns can be
enumerated). Everything is a ``jit``-able array program, vectorized over tiles, with no
host round trip; the rounds after the first work on compacted batches of the tiles that
still improve.

Exactness. Float32 cycle cancelling alone cannot decide optimality: it must ignore gains
below a rounding tolerance relative to the tile's largest score, which on heavy-tailed
tiles (one huge entry) hides real improvements among the others. So the solve has three
stages:

1. fast float32 cancelling with that tolerance (:func:`~jaxnm.masks.residual.tolerance`),
   which leaves nearly every tile optimal;
2. an exact check of every tile: Bellman–Ford on the residual graph in integer arithmetic
   on the tile's grid (:mod:`jaxnm.masks.fixed`: two int32 words, 54–56 bits below the
   tile's largest ``|score|``) until the potentials settle
   (:func:`jaxnm.masks.certificate.settle`); settled potentials prove the tile optimal;
3. exact cancelling on the grid for the tiles that did not settle: every cancelled cycle
   gains at least one grid unit, so it terminates, and it stops only when no negative
   cycle is left.

The result is optimal for the scores on the grid, i.e. exactly optimal whenever every
score lies within ``2**-30`` of its tile's largest (``m <= 16``); smaller scores are
rounded to the grid (a difference far below float32 resolution of the tile's total).
:func:`jaxnm.masks.certificate.certify` proves it per tile (gap 0). ``+inf`` scores are
handled by :func:`jaxnm.masks.residual.finite_scores` (an infinite entry is worth more
than all finite ones of its tile together).
"""

from __future__ import annotations

import jax

from jaxnm.masks import fixed
from jaxnm.masks.certificate import settle
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
        stage (static int; ``None``: :func:`default_max_rounds`). A tile that reaches it
        keeps its best mask so far, still valid (never seen below the default cap).

    Returns:
      bool ``(B, m, m)`` with exactly ``n`` per row and column and a maximal retained
      score (exactly, on the grid of the module docstring).
    """
    m = scores.shape[-1]
    if max_rounds is None:
        max_rounds = default_max_rounds(n, m)
    scores = finite_scores(scores)
    keep = repair(scores, greedy_keep(scores, n), n)
    keep = cancel_cycles(scores, keep, max_rounds=max_rounds)
    grid = fixed.from_scores(scores)
    _, settled = settle(grid, keep, max_rounds=m + 1)
    return cancel_cycles(grid, keep, max_rounds=max_rounds, active=~settled)
