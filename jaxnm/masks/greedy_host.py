"""The ``"greedy"`` solver in NumPy: the same masks as :func:`jaxnm.masks.greedy.solve`,
bit for bit, with no XLA compile.

:func:`jaxnm.masks.greedy.solve` costs seconds of XLA code generation before it solves
anything; :func:`jaxnm.sparsify` pays that once at ``init`` only to solve the initial masks.
This module computes the same masks on the host, so the initial masks need no compile
(``tests/masks/test_greedy_host.py`` checks equality with the device solver on many random
layers, with ties, zeros, ``±inf``, NaN and subnormals).

The steps and their float32 arithmetic are the device solver's, in the same order:

1. :func:`finite_scores` (``±inf`` and the overflow cap);
2. the keep-side greedy, here the sequential visit itself (the device's rounds of locally
   dominant choices give exactly its result, :func:`jaxnm.masks.greedy.greedy_keep`),
   over the same distinct int32 keys;
3. the repair by best length-3 augmenting paths (:func:`jaxnm.masks.greedy.repair`);
4. ``default_improve_rounds(m)`` rounds of negative-cycle cancelling with
   ``default_search_depth(m)`` Bellman–Ford rounds (:mod:`jaxnm.masks.residual`).

XLA:CPU runs with subnormals flushed to zero (inputs and results of float arithmetic);
this module flushes them at the same places, so its masks equal XLA:CPU's also there
(tested on batches of a hundred tiles and more). Subnormals reach the arithmetic only in
tiles whose nonzero weights include magnitudes below ``2**-103`` (``1e-31``); only such
tiles can differ where the device keeps subnormals: XLA:GPU by default, and XLA:CPU on
batches of a few tiles, where it was seen to compute the tolerance without flushing.
"""

from __future__ import annotations

import concurrent.futures
import os

import numpy as np

from jaxnm.masks.greedy import default_improve_rounds, default_search_depth
from jaxnm.masks.residual import _TOL_ULPS

_F32 = np.finfo(np.float32)
_TINY = _F32.tiny

#: Tiles solved per NumPy batch (bounds the temporaries).
CHUNK = 8192


#: Nonzero scores at least this large in magnitude are multiples of ``2**-126`` (their ulp
#: is), and so is every sum and difference of them: no float32 result of the solver's
#: arithmetic can then be subnormal, and flushing can be skipped.
_GRID_SAFE = np.float32(2.0**-103)


def _ftz(x: np.ndarray) -> np.ndarray:
    """Flushes float32 subnormals to zero of the same sign, as XLA:CPU does."""
    return np.where(np.abs(x) < _TINY, np.copysign(np.float32(0), x), x).astype(np.float32)


def _exact(x: np.ndarray) -> np.ndarray:
    return x


def _flusher(scores: np.ndarray):
    """:func:`_ftz` if the solver's arithmetic on finite ``scores`` can meet a subnormal,
    else the identity (see :data:`_GRID_SAFE`)."""
    a = np.abs(scores)
    return _ftz if np.any((a < _GRID_SAFE) & (a != 0)) else _exact


def _select(cond: np.ndarray, x, y) -> np.ndarray:
    """``np.where(cond, x, y)`` for 32-bit ``x`` and ``y`` of one dtype, by bit masking
    (several times faster than ``np.where`` on the random masks met here)."""
    x, y = np.asarray(x), np.asarray(y)
    dtype = np.result_type(x, y)
    xi = x.astype(dtype, copy=False).view(np.int32)
    yi = y.astype(dtype, copy=False).view(np.int32)
    bits = np.negative(np.asarray(cond).view(np.int8), dtype=np.int32)
    return (yi ^ ((xi ^ yi) & bits)).view(dtype)


def finite_scores(scores: np.ndarray) -> np.ndarray:
    """:func:`jaxnm.masks.residual.finite_scores` on float32 ``(B, m, m)`` tiles.

    ``+inf`` becomes one more than the tile's total finite score (summed in the order of
    :func:`jaxnm.masks.residual.pairwise_sum`), finite scores are clipped to
    ``[-1, finfo(float32).max / (8 m**3)]`` (subnormals flushed, as XLA:CPU's clip does).
    """
    b, m, _ = scores.shape
    cap = np.float32(_F32.max / (8.0 * m**3))
    inf = np.isinf(scores)
    finite = _ftz(np.clip(np.where(inf, np.float32(0), scores), np.float32(-1), cap))
    total = np.maximum(finite, np.float32(0)).reshape(b, m * m)
    while total.shape[-1] > 1:
        if total.shape[-1] % 2:
            total = np.concatenate([total, np.zeros_like(total[:, :1])], axis=-1)
        half = total.shape[-1] // 2
        total = _ftz(total[:, :half] + total[:, half:])
    big = _ftz(total[:, 0] + np.float32(1))
    return np.where(inf, big[:, None, None], finite)


def _ordered_int(x: np.ndarray) -> np.ndarray:
    """int32 keys ordered like the float32 values ``x``
    (:func:`jaxnm.masks.greedy._ordered_int`)."""
    i = np.ascontiguousarray(x, np.float32).view(np.int32)
    return i ^ ((i >> 31) & np.int32(0x7FFFFFFF))


def _position_keys(values: np.ndarray) -> np.ndarray:
    """Distinct int32 keys per tile, larger is better
    (:func:`jaxnm.masks.greedy._position_keys`)."""
    m = values.shape[-1]
    low = np.int32((1 << (m * m - 1).bit_length()) - 1)
    pos = np.arange(m * m, dtype=np.int32).reshape(m, m)
    return (_ordered_int(values) & ~low) | (low - pos)


def greedy_keep(scores: np.ndarray, n: int) -> np.ndarray:
    """The sequential keep-side greedy: visit every tile's entries by descending key and
    keep an entry while its row and its column hold fewer than ``n``.

    Args:
      scores: float32 ``(B, m, m)`` finite scores.
      n: target count per row and column.

    Returns:
      bool ``(B, m, m)``, :func:`jaxnm.masks.greedy.greedy_keep`'s result.
    """
    b, m, _ = scores.shape
    order = np.argsort(_position_keys(scores).reshape(b, m * m), axis=-1)[:, ::-1]
    # Flat indices into (B * m) row / column counters and the (B * m * m) mask, one
    # contiguous (B,) row per visiting step.
    base = np.arange(b, dtype=np.intp)[None, :]
    order = np.ascontiguousarray(order.T)
    row_at, col_at, pos_at = base * m + order // m, base * m + order % m, base * m * m + order
    keep = np.zeros(b * m * m, bool)
    rows = np.zeros(b * m, np.int32)
    cols = np.zeros(b * m, np.int32)
    for step in range(m * m):
        r, c = row_at[step], col_at[step]
        take = (rows[r] < n) & (cols[c] < n)
        keep[pos_at[step]] = take
        rows[r] += take
        cols[c] += take
    return keep.reshape(b, m, m)


def _augment(
    scores: np.ndarray, keep: np.ndarray, n: int, flush=_ftz
) -> tuple[np.ndarray, np.ndarray]:
    """One augmenting path per tile with a short row (:func:`jaxnm.masks.greedy._augment`)."""
    b, m, _ = scores.shape
    ar = np.arange(m)
    tiles = np.arange(b)
    r = np.min(np.where(keep.sum(-1) < n, ar, m), axis=-1)
    c = np.min(np.where(keep.sum(-2) < n, ar, m), axis=-1)
    active = r < m
    r_idx, c_idx = np.minimum(r, m - 1), np.minimum(c, m - 1)
    row_r = keep[tiles, r_idx][:, None, :]  # (B, 1, m) over c'
    s_row_r = scores[tiles, r_idx][:, None, :]
    col_c = keep[tiles, :, c_idx][:, :, None]  # (B, m, 1) over r'
    s_col_c = scores[tiles, :, c_idx][:, :, None]
    valid = ~row_r & keep & ~col_c
    gain = flush(flush(s_row_r - scores) + s_col_c)
    key = _select(valid, _position_keys(gain), np.int32(np.iinfo(np.int32).min))
    low = (1 << (m * m - 1).bit_length()) - 1
    best = low - (np.max(key.reshape(b, m * m), axis=-1) & low)
    rp, cp = best // m, best % m
    rows, cols = ar[None, :, None], ar[None, None, :]
    add = ((rows == r_idx[:, None, None]) & (cols == cp[:, None, None])) | (
        (rows == rp[:, None, None]) & (cols == c_idx[:, None, None])
    )
    drop = (rows == rp[:, None, None]) & (cols == cp[:, None, None])
    new = np.where(active[:, None, None], (keep | add) & ~drop, keep)
    return new, np.any(new.sum(-1) < n, axis=-1)


def _rounds(step, data: tuple, keep: np.ndarray, max_rounds: int) -> np.ndarray:
    """:func:`jaxnm.masks.compaction.compacted_rounds` on the host: ``step`` on the tiles
    still active, at most ``max_rounds`` times each."""
    keep = keep.copy()
    active = np.arange(keep.shape[0])
    for _ in range(max_rounds):
        if active.size == 0:
            break
        new, still = step(*(d[active] for d in data), keep[active])
        keep[active] = new
        active = active[still]
    return keep


def repair(scores: np.ndarray, keep: np.ndarray, n: int, flush=_ftz) -> np.ndarray:
    """Fills every row and column to exactly ``n`` (:func:`jaxnm.masks.greedy.repair`)."""
    m = scores.shape[-1]
    return _rounds(lambda s, k: _augment(s, k, n, flush), (scores,), keep, n * m)


def tolerance(scores: np.ndarray, flush=_ftz) -> np.ndarray:
    """:func:`jaxnm.masks.residual.tolerance`: float32 ``(B,)``."""
    b, m, _ = scores.shape
    scale = np.max(np.abs(scores).reshape(b, m * m), axis=-1)
    factor = np.float32(_TOL_ULPS * m * _F32.eps)
    return flush(flush(factor * scale) + _TINY)


def _first_min(count: int, fill, shape, flush) -> tuple[np.ndarray, np.ndarray]:
    """Min over ``count`` float32 candidates and the first index reaching it (XLA's argmin
    tie rule), in elementwise passes over preallocated buffers (NumPy reduces a short last
    axis slowly). ``fill(k, out)`` writes candidate ``k`` (then ``flush``-ed) into ``out``.
    Of a ``-0``/``+0`` tie the min may carry either sign, which no comparison downstream
    tells apart. Since the min only decreases, the first index reaching it is the largest
    ``k`` whose candidate beat all earlier ones."""
    best = np.empty(shape, np.float32)
    fill(0, best)
    best = flush(best)
    arg = np.zeros(shape, np.int32)
    value = np.empty(shape, np.float32)
    less = np.empty(shape, bool)
    step = np.empty(shape, np.int32)
    for k in range(1, count):
        fill(k, value)
        value = flush(value)
        np.less(value, best, out=less)
        np.minimum(best, value, out=best)
        np.multiply(less, np.int32(k), out=step)
        np.maximum(arg, step, out=arg)
    return best, arg


def _cancel_round(
    scores: np.ndarray, tol: np.ndarray, keep: np.ndarray, bf_rounds: int, flush=_ftz
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`jaxnm.masks.residual.cancel_round` on float32 scores.

    Cycles are cancelled by flat-index scatters: each cycle row ``v`` drops ``(v, c)``
    (``c = via[v, pred[v]]``) and its predecessor ``pred[v]`` keeps ``(pred[v], c)``: the
    device's ``owner`` reduction, since a cycle row has exactly one successor on its cycle.
    """
    b, m, _ = scores.shape
    add = _select(keep, np.float32(np.inf), -scores)  # [b, u, c]
    drop = _select(keep, scores, np.float32(np.inf))  # [b, v, c]
    # cost[b, v, u] = min_c drop[b, v, c] + add[b, u, c]; via: the first such c.
    drop_c, add_c = np.moveaxis(drop, 2, 0).copy(), np.moveaxis(add, 2, 0).copy()
    cost, via = _first_min(
        m,
        lambda c, out: np.add(drop_c[c][:, :, None], add_c[c][:, None, :], out=out),
        (b, m, m),
        flush,
    )
    cost_u = np.moveaxis(cost, 2, 0).copy()  # [u, b, v]
    dist = np.zeros((b, m), np.float32)
    pred = np.full((b, m), -1, np.int32)
    upd = np.zeros((b, m), bool)
    for _ in range(bf_rounds):
        # cand[b, v, u] = dist[b, u] + cost[b, v, u], minimized over u.
        dist_u = np.ascontiguousarray(dist.T)
        best, arg = _first_min(
            m, lambda u, out, d=dist_u: np.add(d[u][:, None], cost_u[u], out=out), (b, m), flush
        )
        upd = best < flush(dist - tol[:, None])
        pred = _select(upd, arg, pred)
        dist = _select(upd, best, dist)
    changed = np.any(upd, axis=-1)
    base = np.arange(b, dtype=np.intp)[:, None] * m
    flat_pred = np.where(pred < 0, -1, pred + base).reshape(-1)
    far = flat_pred
    for _ in range(max(1, (m - 1).bit_length())):
        far = np.where(far < 0, -1, far[np.maximum(far, 0)])
    on = np.zeros(b * m, bool)
    on[far[far >= 0]] = True  # rows on a cycle: the image of pred^k
    cyc = np.flatnonzero(on)  # flat rows b*m + v
    step_col = via.reshape(b * m, m)[cyc, pred.reshape(-1)[cyc]].astype(np.intp)
    new = keep.copy().reshape(-1)
    new[cyc * m + step_col] = False  # drop (v, c)
    new[flat_pred[cyc] * m + step_col] = True  # keep (pred[v], c)
    return new.reshape(b, m, m), changed


def cancel_cycles(
    scores: np.ndarray, keep: np.ndarray, *, max_rounds: int, bf_rounds: int, flush=_ftz
) -> np.ndarray:
    """:func:`jaxnm.masks.residual.cancel_cycles` on float32 finite scores."""
    return _rounds(
        lambda s, t, k: _cancel_round(s, t, k, bf_rounds, flush),
        (scores, tolerance(scores, flush)),
        keep,
        max_rounds,
    )


def solve(scores: np.ndarray, n: int) -> np.ndarray:
    """:func:`jaxnm.masks.greedy.solve` (default rounds) on the host.

    Args:
      scores: float32 ``(B, m, m)`` tile scores (``>= 0``, ``+inf``, or ``-1`` for NaN),
        a NumPy array.
      n: kept entries per row and column (static int).

    Returns:
      NumPy bool ``(B, m, m)`` with exactly ``n`` per row and column: the device solver's
      masks (see the module docstring for subnormals on other backends).
    """
    scores = np.asarray(scores, np.float32)
    if scores.ndim != 3 or scores.shape[1] != scores.shape[2]:
        raise ValueError(f"`scores` must have shape (B, m, m), got {scores.shape}.")
    out = np.empty(scores.shape, bool)
    starts = range(0, scores.shape[0], CHUNK)

    def one(start: int) -> None:
        out[start : start + CHUNK] = _solve_chunk(scores[start : start + CHUNK], n)

    workers = min(len(starts), _cpus())
    if workers <= 1:
        for start in starts:
            one(start)
        return out
    # Chunks are independent and NumPy releases the GIL in its array loops, so chunks
    # solve in parallel threads (the same masks: each tile depends on itself only).
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, starts))
    return out


def _cpus() -> int:
    """CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _solve_chunk(scores: np.ndarray, n: int) -> np.ndarray:
    """:func:`solve` on one chunk of at most :data:`CHUNK` tiles."""
    m = scores.shape[-1]
    s = finite_scores(scores)
    flush = _flusher(s)
    keep = repair(s, greedy_keep(s, n), n, flush)
    return cancel_cycles(
        s,
        keep,
        max_rounds=default_improve_rounds(m),
        bf_rounds=default_search_depth(m),
        flush=flush,
    )
