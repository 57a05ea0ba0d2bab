"""Exact transposable-mask solver: one min-cost flow over all tiles, on the host (OR-Tools).

For one ``m x m`` tile with scores ``s``, the best transposable mask solves
``max sum(s * x)`` subject to ``n`` kept per row and per column, ``x`` in {0, 1}: a
transportation problem (row ``i`` supplies ``n``, column ``j`` demands ``n``, arc
``i -> j`` with capacity 1 and cost ``-s_ij``). Its constraint matrix is totally unimodular,
so the min-cost flow optimum is the exact optimum. All tiles of a tensor become disjoint
components of one graph, built with vectorised numpy and solved by OR-Tools'
``SimpleMinCostFlow`` (cost-scaling push-relabel) in one call. :func:`solve` wraps it in
``jax.pure_callback``, so it runs inside ``jit`` and under ``vmap``.

Integer costs (the solver works in int64; float costs made reference code hang or return
invalid masks). Each tile is scaled by a power of two so that its largest finite
``|score|`` lies in ``[2**(COST_BITS-1), 2**COST_BITS)`` and rounded: every score then
carries an absolute error of at most ``2**-COST_BITS`` times the tile's largest score, so
the returned total is within ``2 m n 2**-COST_BITS`` of that score of the true optimum
(``2**-24`` for 8:16 with ``COST_BITS = 32``), below float32 resolution of the tile's total.
``+inf`` scores form a higher tier (``2 m n 2**COST_BITS + 1`` each, more than any finite
difference), so a mask keeps as many ``+inf`` entries as possible first. ``-1`` (NaN, see
:mod:`jaxnm.masks.scores`) stays ``-1`` in score units but at least one quantum below
zero, so NaN ranks below ``0``. Graphs whose costs could overflow int64 in the solver
(``max|cost| * (nodes + 1)`` or ``max|cost| * total flow`` above ``2**62``) are split into
several calls; a 4096 x 4096 layer at 2:4, 4:8 or 8:16 without ``inf`` fits in one.

Determinism: the same scores give the same mask (the solver is deterministic). Among
equally good masks, which one is returned is the solver's choice, not a documented rule.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

#: Bits of integer resolution per tile (relative to the tile's largest finite |score|).
COST_BITS = 32
_INT64_BUDGET = 2**62


def solve(scores: jax.Array, n: int) -> jax.Array:
    """Optimal transposable tiles by min-cost flow on the host: the ``"exact"`` method.

    Args:
      scores: float32 ``(B, m, m)`` tile scores (``-1`` marks NaN, ``+inf`` allowed).
      n: kept entries per row and column of every tile.

    Returns:
      bool ``(B, m, m)`` with exactly ``n`` per row and column, maximising each tile's
      total score (see the module docstring for the integer scaling and its error bound).
      Works under ``jit`` and ``vmap`` (``vmap_method="expand_dims"``: one host call gets
      the whole vmapped batch, so all tiles still go to the solver together).

    Raises:
      ImportError: if OR-Tools is not installed.
    """
    _min_cost_flow()  # fail at trace time, not inside the callback
    out = jax.ShapeDtypeStruct(scores.shape, jnp.bool_)
    host = functools.partial(solve_host, n=n)
    return jax.pure_callback(host, out, scores, vmap_method="expand_dims")


def solve_host(scores: np.ndarray, n: int) -> np.ndarray:
    """Numpy version of :func:`solve` for ``(..., m, m)`` scores; returns a bool array."""
    scores = np.asarray(scores)
    m = scores.shape[-1]
    tiles = scores.reshape(-1, m, m)
    gains = integer_gains(tiles, n)
    keep = np.zeros(tiles.shape, bool)
    biggest = int(np.max(np.abs(gains))) if gains.size else 0
    per_call = _tiles_per_call(biggest, n, m)
    for start in range(0, len(tiles), per_call):
        keep[start : start + per_call] = _min_cost_flow_tiles(gains[start : start + per_call], n)
    return keep.reshape(scores.shape)


def integer_gains(tiles: np.ndarray, n: int) -> np.ndarray:
    """Scales and rounds float tile scores to int64 gains (see the module docstring).

    Args:
      tiles: float ``(B, m, m)`` scores; ``+inf`` is the top tier, NaN and ``-inf`` count
        as ``-1``.
      n: kept entries per row and column (sets the ``+inf`` tier).

    Returns:
      int64 ``(B, m, m)``; finite scores map into ``[-2**COST_BITS, 2**COST_BITS]``.
    """
    m = tiles.shape[-1]
    s = tiles.astype(np.float64)
    all_finite = bool(np.isfinite(tiles).all())
    if not all_finite:
        posinf = np.isposinf(s)
        s = np.where(np.isfinite(s), s, -1.0)
    amax = np.maximum(s.max(axis=(-2, -1), keepdims=True), -s.min(axis=(-2, -1), keepdims=True))
    _, exponent = np.frexp(amax)  # amax < 2**exponent <= 2 * amax
    q = s * np.ldexp(1.0, COST_BITS - exponent)  # exact: a power-of-two factor per tile
    np.rint(q, out=q)
    if s.size and s.min() < 0:
        q = np.where(s < 0, np.minimum(q, -1.0), q)  # negative (NaN) stays below 0
    gains = q.astype(np.int64)
    if not all_finite:
        gains[posinf] = 2 * m * n * 2**COST_BITS + 1  # the +inf tier
    return gains


def _tiles_per_call(biggest: int, n: int, m: int) -> int:
    """Most tiles per solver call that keep the solver's int64 arithmetic from overflowing."""
    by_nodes = (_INT64_BUDGET // (biggest + 1) - 1) // (2 * m)
    by_total = _INT64_BUDGET // ((biggest + 1) * m * n)
    return max(1, min(by_nodes, by_total))


def _min_cost_flow_tiles(gains: np.ndarray, n: int) -> np.ndarray:
    """Solves all tiles of ``gains`` (int64 ``(B, m, m)``) as one min-cost flow graph."""
    b, m, _ = gains.shape
    if b == 0:
        return np.zeros(gains.shape, bool)
    # Tile t uses nodes 2mt .. 2mt + m - 1 (rows) and 2mt + m .. 2mt + 2m - 1 (columns);
    # arc t*m*m + i*m + j is row i -> column j, so flows reshape straight into (B, m, m).
    base = (np.arange(b, dtype=np.int32) * (2 * m))[:, None, None]
    idx = np.arange(m, dtype=np.int32)
    tails = np.broadcast_to(base + idx[:, None], (b, m, m)).ravel()
    heads = np.broadcast_to(base + m + idx[None, :], (b, m, m)).ravel()
    capacities = np.ones(b * m * m, np.int64)
    supplies = np.tile(np.repeat(np.array([n, -n], np.int64), m), b)

    flow = _min_cost_flow().SimpleMinCostFlow()
    flow.add_arcs_with_capacity_and_unit_cost(tails, heads, capacities, -gains.ravel())
    flow.set_nodes_supplies(np.arange(2 * m * b, dtype=np.int32), supplies)
    status = flow.solve()
    if status != flow.OPTIMAL:
        raise RuntimeError(
            f"OR-Tools min-cost flow returned {status} for {b} tiles of {m}x{m} "
            f"(n={n}); please report this input."
        )
    kept = flow.flows(np.arange(b * m * m, dtype=np.int32))
    return kept.reshape(b, m, m).astype(bool)


@functools.cache
def _min_cost_flow():
    try:
        from ortools.graph.python import min_cost_flow
    except ImportError as err:
        raise ImportError(
            "method='exact' needs OR-Tools for min-cost flow: `pip install jaxnm[exact]` "
            "(or use method='greedy' / 'exhaustive')."
        ) from err
    return min_cost_flow
