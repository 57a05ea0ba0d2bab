"""Negative-cycle cancelling in the residual graph of a transposable tile mask.

A tile mask ``keep`` (``m x m``, exactly ``n`` per row and column) is a maximum-weight
b-matching iff its residual graph has no negative cycle. The residual graph has an edge
``row r -> col c`` of cost ``-s[r, c]`` for every unkept entry (keeping it) and an edge
``col c -> row r'`` of cost ``+s[r', c]`` for every kept entry (dropping it). Every cycle
alternates rows and columns, so it collapses to the ``m``-node *row graph*

    cost[r -> r'] = min_c ( -s[r, c] + s[r', c] )  over c with keep[r, c] = 0, keep[r', c] = 1,

and ``keep`` is optimal iff the row graph has no negative cycle (a negative closed walk in
the residual graph maps to a negative closed walk of the row graph and back; a simple cycle
of the row graph uses distinct residual edges because it leaves every row once).

One *round* runs Bellman–Ford on the row graph of every tile at once from a virtual source
(all distances 0), records predecessors, and cancels every cycle of the predecessor graph.
A predecessor cycle always has cost ``<= -tol`` (each relaxation must gain more than
``tol``), the cycles of a functional graph are vertex-disjoint, so they are cancelled
together: each cycle step ``r -> r'`` via ``c`` keeps ``(r, c)`` and drops ``(r', c)``,
which leaves every row and column count unchanged and raises the retained score by at
least ``tol``. A tile whose Bellman–Ford relaxations stop (no gain above ``tol``) has no
cycle cheaper than ``-m * tol``: it is optimal up to that tolerance.

Rounds are run on a compacted batch: after the first full-batch rounds only the tiles that
still improve are gathered (``jnp.nonzero`` with a static size) into smaller fixed-size
buffers, so the total work follows the number of tiles that still have negative cycles.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from jaxnm.masks import fixed
from jaxnm.masks.compaction import compacted_rounds

#: Relative tolerance, in units of ``m * eps(float32) * max|s|`` of the tile.
_TOL_ULPS = 4.0
#: Tile size from which :func:`row_graph` unrolls its reduction over the columns.
_UNROLL_FROM = 16


def finite_scores(scores: jax.Array) -> jax.Array:
    """Maps tile scores to finite float32 values that keep the ranking policy.

    ``+inf`` becomes one more than the tile's total finite score (so keeping one more
    infinite entry is worth more than any choice among finite ones); finite scores are
    clipped to ``finfo(float32).max / (8 m**3)`` so that no path cost can overflow.

    Args:
      scores: float32 ``(B, m, m)`` tiles; entries ``>= 0``, ``+inf``, or ``-1`` (NaN).

    Returns:
      float32 ``(B, m, m)`` finite scores.
    """
    m = scores.shape[-1]
    cap = jnp.float32(jnp.finfo(jnp.float32).max / (8.0 * m**3))
    finite = jnp.clip(jnp.where(jnp.isinf(scores), 0.0, scores), -1.0, cap)
    total = pairwise_sum(jnp.maximum(finite, 0.0).reshape(scores.shape[0], m * m))
    return jnp.where(jnp.isinf(scores), (total + 1.0)[:, None, None], finite)


def pairwise_sum(x: jax.Array) -> jax.Array:
    """Sums float ``(B, k)`` along the last axis in one fixed order: halves added
    elementwise (odd lengths padded with a zero) until one column is left.

    ``jnp.sum`` rounds in whatever order the backend's reduction takes (it differs with
    the vector width and the fusion); this order is the same everywhere, so the host twin
    :mod:`jaxnm.masks.greedy_host` reproduces :func:`finite_scores` bit for bit.

    Returns:
      ``(B,)``, ``x``'s dtype.
    """
    while x.shape[-1] > 1:
        if x.shape[-1] % 2:
            x = jnp.concatenate([x, jnp.zeros_like(x[:, :1])], axis=-1)
        half = x.shape[-1] // 2
        x = x[:, :half] + x[:, half:]
    return x[:, 0]


def tolerance(scores: jax.Array) -> jax.Array:
    """Per-tile gain a relaxation or a cycle must exceed: float32 ``(B,)``."""
    m = scores.shape[-1]
    scale = jnp.max(jnp.abs(scores).reshape(scores.shape[0], m * m), axis=-1)
    eps = jnp.finfo(jnp.float32).eps
    # The barrier keeps the multiply and the add apart: fused into one multiply-add, XLA:CPU
    # rounds (and flushes) a subnormal product in some vector lanes and not in others, so
    # a tile's tolerance depended on its position in the batch.
    product = lax.optimization_barrier(_TOL_ULPS * m * eps * scale)
    return product + jnp.finfo(jnp.float32).tiny


def _add_drop(scores: jax.Array, keep: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Residual step costs, float32 ``(B, m, m)`` each, indexed ``[b, row, c]``: keeping
    ``(row, c)`` (``-s``; ``+inf`` where kept) and dropping it (``+s``; ``+inf`` where not)."""
    return jnp.where(keep, jnp.inf, -scores), jnp.where(keep, scores, jnp.inf)


def row_graph(scores: jax.Array, keep: jax.Array) -> tuple[jax.Array, jax.Array | None]:
    """The collapsed row graph of every tile.

    Args:
      scores: float32 ``(B, m, m)`` finite scores.
      keep: bool ``(B, m, m)``.

    Returns:
      ``cost`` float32 ``(B, m, m)`` with ``cost[b, v, u]`` the cheapest step from row ``u``
      to row ``v`` (``+inf`` if none), and ``via`` int32 ``(B, m, m)``, the first column
      reaching it, below ``m = 16``; from ``m = 16`` on ``via`` is ``None`` and
      :func:`step_columns` finds the few columns a round needs.
    """
    m = scores.shape[-1]
    add, drop = _add_drop(scores, keep)
    if m < _UNROLL_FROM:
        step = drop[:, :, None, :] + add[:, None, :, :]  # [b, v, u, c]
        # (min and argmin together compile to one fast variadic reduction on CPU; min
        # alone was measured 2x slower.)
        return jnp.min(step, axis=-1), jnp.argmin(step, axis=-1).astype(jnp.int32)
    # Unrolled over the columns, each column's slice contiguous ([b, c, row]): m
    # elementwise (B, m, m) steps fused into one loop, and no argmin. XLA:CPU reduced the
    # short column axis of the (B, m, m, m) form 2-5x slower from m = 16 on (measured at
    # 8:16: 0.28 s -> 0.06 s a round on 16,384 tiles).
    add, drop = add.transpose(0, 2, 1), drop.transpose(0, 2, 1)
    cost = drop[:, 0, :, None] + add[:, 0, None, :]  # [b, v, u]
    for c in range(1, m):
        cost = jnp.minimum(cost, drop[:, c, :, None] + add[:, c, None, :])
    return cost, None


def step_columns(scores: jax.Array, keep: jax.Array, pred: jax.Array) -> jax.Array:
    """Columns of the row-graph steps ``pred[v] -> v``: int32 ``(B, m)``.

    The first column reaching ``cost[b, v, pred[v]]`` of :func:`row_graph` (the same
    float32 sums, so the same minimum); rows without a predecessor (``-1``) get the
    column of a step from row 0, which no caller reads.

    Args:
      scores: float32 ``(B, m, m)`` finite scores.
      keep: bool ``(B, m, m)``.
      pred: int32 ``(B, m)``, a row per row (``-1``: none).
    """
    b, m, _ = keep.shape
    add, drop = _add_drop(scores, keep)
    # Whole rows gathered from the flat (B * m, m) view (one m-wide slice per row; a
    # take_along_axis here gathered B * m * m single entries).
    rows = (jnp.arange(b, dtype=jnp.int32)[:, None] * m + jnp.maximum(pred, 0)).reshape(-1)
    add_pred = add.reshape(b * m, m)[rows].reshape(b, m, m)  # [b, v, c] = add[b, pred[v], c]
    return jnp.argmin(drop + add_pred, axis=-1).astype(jnp.int32)


def row_graph_exact(scores: fixed.Fixed, keep: jax.Array) -> tuple[fixed.Fixed, jax.Array]:
    """:func:`row_graph` in exact grid arithmetic (:mod:`jaxnm.masks.fixed`).

    Args:
      scores: :class:`~jaxnm.masks.fixed.Fixed` ``(B, m, m)`` grid scores.
      keep: bool ``(B, m, m)``.

    Returns:
      ``cost`` Fixed ``(B, m, m)`` (``cost[b, v, u]``; :func:`~jaxnm.masks.fixed.infinity`
      if there is no step) and ``via`` int32 ``(B, m, m)``.
    """
    drop = fixed.index(scores, (slice(None), slice(None), None))  # [b, v, 1, c]
    add = fixed.index(scores, (slice(None), None))  # [b, 1, u, c]
    step = fixed.sub(drop, add)  # [b, v, u, c]: keep (u, c), drop (v, c)
    valid = keep[:, :, None, :] & ~keep[:, None, :, :]
    step = fixed.where(valid, step, fixed.infinity(step.hi.shape))
    return fixed.min_argmin(step, axis=-1)


def _follow(p: jax.Array, q: jax.Array) -> jax.Array:
    """``q[p[v]]`` per tile (``-1`` stays ``-1``)."""
    got = jnp.take_along_axis(q, jnp.maximum(p, 0), axis=-1)
    return jnp.where(p < 0, -1, got)


def _bellman_ford(cost: jax.Array, tol: jax.Array, rounds: int) -> tuple[jax.Array, jax.Array]:
    """``rounds`` synchronous Bellman–Ford rounds from a virtual source.

    Returns predecessors int32 ``(B, m)`` (``-1``: the source) and whether the last round
    still relaxed an edge, bool ``(B,)``.
    """
    b, m, _ = cost.shape

    def relax(_, state):
        dist, pred, _ = state
        cand = dist[:, None, :] + cost  # [b, v, u]
        best = jnp.min(cand, axis=-1)
        upd = best < dist - tol[:, None]
        pred = jnp.where(upd, jnp.argmin(cand, axis=-1).astype(jnp.int32), pred)
        return jnp.where(upd, best, dist), pred, jnp.any(upd, axis=-1)

    init = (jnp.zeros((b, m), jnp.float32), jnp.full((b, m), -1, jnp.int32), jnp.zeros(b, bool))
    _, pred, changed = lax.fori_loop(0, rounds, relax, init)
    return pred, changed


def _bellman_ford_exact(cost: fixed.Fixed, rounds: int) -> tuple[jax.Array, jax.Array]:
    """:func:`_bellman_ford` in exact grid arithmetic: a relaxation is any strict decrease."""
    b, m, _ = cost.hi.shape

    def relax(_, state):
        dist, pred, _ = state
        cand = fixed.add(fixed.index(dist, (slice(None), None)), cost)  # [b, v, u]
        best, arg = fixed.min_argmin(cand, axis=-1)
        upd = fixed.less(best, dist)
        pred = jnp.where(upd, arg, pred)
        return fixed.where(upd, best, dist), pred, jnp.any(upd, axis=-1)

    init = (fixed.zeros((b, m)), jnp.full((b, m), -1, jnp.int32), jnp.zeros(b, bool))
    _, pred, changed = lax.fori_loop(0, rounds, relax, init)
    return pred, changed


def _on_cycles(pred: jax.Array) -> jax.Array:
    """bool ``(B, m)``: rows on a cycle of the predecessor graph.

    ``pred^k`` with ``k >= m`` maps every node that reaches a cycle onto a cycle node, and
    every cycle node is such an image, so the cycle nodes are exactly the image of
    ``pred^k`` (computed by repeated squaring).
    """
    m = pred.shape[-1]
    far = pred
    for _ in range(max(1, (m - 1).bit_length())):
        far = _follow(far, far)
    # [b, v, u]: far[v] == u, reduced over v, the middle axis (vectorized along u; the
    # same reduction over a short last axis was slower on CPU from m = 16).
    return jnp.any(far[:, :, None] == jnp.arange(m, dtype=far.dtype), axis=1)


def cancel_round(
    scores: jax.Array | fixed.Fixed,
    keep: jax.Array,
    tol: jax.Array | None,
    *,
    bf_rounds: int | None = None,
) -> tuple[jax.Array, jax.Array]:
    """One round: cancels every predecessor cycle found by Bellman–Ford in every tile.

    Args:
      scores: float32 ``(B, m, m)`` finite scores (see :func:`finite_scores`), or exact
        grid scores :class:`~jaxnm.masks.fixed.Fixed` ``(B, m, m)``.
      keep: bool ``(B, m, m)``, exactly ``n`` per row and column.
      tol: float32 ``(B,)`` from :func:`tolerance` (float scores); ``None`` for grid
        scores, where every strict decrease counts and cycles gain at least one unit.
      bf_rounds: Bellman–Ford rounds (static; ``None``: ``m``, enough to prove a tile
        optimal). Fewer rounds find fewer cycles (a heuristic round).

    Returns:
      The new ``keep`` (same counts, retained score higher by ``>= tol`` where changed) and
      ``active`` bool ``(B,)``: tiles that changed or whose relaxations did not settle
      (they need another round); the other tiles are optimal up to ``m * tol``.
    """
    m = keep.shape[-1]
    rounds = m if bf_rounds is None else bf_rounds
    # The barrier materializes the row graph once; otherwise XLA may fuse the (B, m, m, m)
    # reduction into each Bellman–Ford round and recompute it there.
    ar = jnp.arange(m, dtype=jnp.int32)
    if isinstance(scores, fixed.Fixed):
        cost, via = lax.optimization_barrier(row_graph_exact(scores, keep))
        pred, changed = _bellman_ford_exact(cost, rounds)
    else:
        cost, via = lax.optimization_barrier(row_graph(scores, keep))
        pred, changed = _bellman_ford(cost, tol, rounds)
    if via is None:
        step_col = step_columns(scores, keep, pred)
    else:
        # Column of the step pred[v] -> v, for each row v: via[b, v, pred[v]].
        step_col = jnp.take_along_axis(via, jnp.maximum(pred, 0)[:, :, None], axis=-1)[:, :, 0]
    on = _on_cycles(pred)
    drop = on[:, :, None] & (step_col[:, :, None] == ar)  # [b, v, c]
    # [b, v, u]: the cycle step u -> v (u = pred[v]); each cycle row u has exactly one.
    # Reduced over v, the middle axis (vectorized along u).
    owner = on[:, :, None] & (pred[:, :, None] == ar)
    add_row = jnp.any(owner, axis=1)  # [b, u]
    add_col = jnp.sum(jnp.where(owner, step_col[:, :, None], 0), axis=1)
    add = add_row[:, :, None] & (add_col[:, :, None] == ar)  # [b, u, c]
    return (keep | add) & ~drop, changed


def cancel_cycles(
    scores: jax.Array | fixed.Fixed,
    keep: jax.Array,
    *,
    max_rounds: int,
    bf_rounds: int | None = None,
    min_buffer: int = 64,
    active: jax.Array | None = None,
    whole_batch: bool = True,
    compact: bool = True,
    stop_without_cycle: bool = False,
) -> jax.Array:
    """Cancels negative cycles, at most ``max_rounds`` rounds per tile.

    Tiles stop as soon as a round finds nothing to improve, so with a large enough
    ``max_rounds`` every tile ends optimal: exactly for grid scores, up to ``m * tol`` of
    its score for float32 scores (see :func:`tolerance`); a small ``max_rounds`` gives a
    fast high-quality heuristic.

    Args:
      scores: float32 ``(B, m, m)`` finite scores (see :func:`finite_scores`), or exact
        grid scores :class:`~jaxnm.masks.fixed.Fixed` (``(B, m, m)`` words).
      keep: bool ``(B, m, m)`` with exactly ``n`` per row and column.
      max_rounds: rounds per tile (static int >= 0).
      bf_rounds: Bellman–Ford rounds per round (see :func:`cancel_round`); only ``None``
        (``m``) guarantees optimality at convergence.
      min_buffer: smallest compacted batch (static int).
      active: bool ``(B,)``: only these tiles are worked on (``None``: all).
      whole_batch, compact: how the rounds are scheduled (static; see
        :func:`~jaxnm.masks.compaction.compacted_rounds`); the same result either way.
      stop_without_cycle: a tile also stops after a round that cancels no cycle though
        its Bellman–Ford did not settle (static; with ``bf_rounds < m`` such a tile is
        not known optimal: for callers that prove optimality afterwards).

    Returns:
      bool ``(B, m, m)`` with the same row and column counts as ``keep`` and a retained
      score at least as high on every tile.
    """

    def step(data, k):
        s, tol = data
        new, active = cancel_round(s, k, tol, bf_rounds=bf_rounds)
        if stop_without_cycle:
            active = jnp.any(new != k, axis=(1, 2))
        return new, active

    exact = isinstance(scores, fixed.Fixed)
    data = (scores, None if exact else tolerance(scores))
    return compacted_rounds(
        step,
        data,
        keep,
        max_rounds=max_rounds,
        min_buffer=min_buffer,
        active=active,
        whole_batch=whole_batch,
        compact=compact,
    )
