"""Greedy transposable-mask solver with a repair phase; jittable and vectorized over tiles.

1. Keep-side greedy (Hubara et al., 2021): visit a tile's entries in descending score and
   keep an entry while its row and its column each hold fewer than ``n``. This is a
   ½-approximation of the optimum but can leave rows and columns short of ``n``.
2. Repair: while a tile has a short row ``r`` (then it also has a short column ``c``),
   apply the best augmenting path ``r -> c' -> r' -> c``: keep ``(r, c')``, drop
   ``(r', c')``, keep ``(r', c)``. Such a path always exists after the greedy pass (the
   greedy keeps every pair whose row and column are both short), and each step adds one
   kept entry to row ``r`` and column ``c`` while the others keep their counts.
3. Improve: cancel profitable 4-cycles (swap ``(r1, c1), (r2, c2)`` for ``(r1, c2), (r2, c1)``)
   for a fixed number of rounds, which lifts the retained score close to the optimum.

Every step is a fixed-shape array program over the whole ``(B, m, m)`` batch: no Python
loop over tiles, so it runs under ``jit``/``vmap`` on CPU, GPU and TPU.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax


def greedy_keep(scores: jax.Array, n: int) -> jax.Array:
    """The paper's greedy pass alone (may leave rows/columns short of ``n``).

    Args:
      scores: float32 ``(B, m, m)`` tile scores.
      n: target count per row and column.

    Returns:
      bool ``(B, m, m)`` with at most ``n`` kept per row and per column.
    """
    b, m, _ = scores.shape
    flat = scores.reshape(b, m * m)
    order = jnp.argsort(-flat, axis=-1, stable=True).astype(jnp.int32)
    slots = jnp.arange(m, dtype=jnp.int32)

    def visit(counts, idx):
        rows, cols = counts
        r_hot = (idx // m)[:, None] == slots
        c_hot = (idx % m)[:, None] == slots
        row_count = jnp.sum(jnp.where(r_hot, rows, 0), axis=-1)
        col_count = jnp.sum(jnp.where(c_hot, cols, 0), axis=-1)
        ok = (row_count < n) & (col_count < n)
        rows = rows + (r_hot & ok[:, None])
        cols = cols + (c_hot & ok[:, None])
        return (rows, cols), ok

    zeros = jnp.zeros((b, m), jnp.int32)
    _, ok = lax.scan(visit, (zeros, zeros), order.T)
    keep = jnp.zeros((b, m * m), bool).at[jnp.arange(b)[:, None], order].set(ok.T)
    return keep.reshape(b, m, m)


def repair(scores: jax.Array, keep: jax.Array, n: int) -> jax.Array:
    """Fills every row and column of every tile to exactly ``n`` by augmenting paths.

    Args:
      scores: float32 ``(B, m, m)``.
      keep: bool ``(B, m, m)`` from :func:`greedy_keep` (at most ``n`` per row/column,
        and no unkept entry whose row and column are both short).
      n: target count.

    Returns:
      bool ``(B, m, m)`` with exactly ``n`` per row and column.
    """
    m = scores.shape[-1]
    neg = jnp.finfo(jnp.float32).min

    def short(keep):
        return jnp.any(jnp.sum(keep, axis=-1) < n, axis=-1)  # (B,)

    def augment(keep):
        rows_short = jnp.sum(keep, axis=-1) < n  # (B, m)
        cols_short = jnp.sum(keep, axis=-2) < n
        active = jnp.any(rows_short, axis=-1)
        r = jnp.argmax(rows_short, axis=-1)  # first short row
        c = jnp.argmax(cols_short, axis=-1)  # first short column
        row_r = jnp.take_along_axis(keep, r[:, None, None], axis=1)[:, 0, :]  # (B, m) over c'
        col_c = jnp.take_along_axis(keep, c[:, None, None], axis=2)[:, :, 0]  # (B, m) over r'
        s_row_r = jnp.take_along_axis(scores, r[:, None, None], axis=1)[:, 0, :]
        s_col_c = jnp.take_along_axis(scores, c[:, None, None], axis=2)[:, :, 0]
        valid = (~row_r)[:, None, :] & keep & (~col_c)[:, :, None]  # [b, r', c']
        gain = s_row_r[:, None, :] - scores + s_col_c[:, :, None]
        best = jnp.argmax(jnp.where(valid, gain, neg).reshape(-1, m * m), axis=-1)
        rp, cp = best // m, best % m
        ar = jnp.arange(m)
        r_hot, c_hot = ar == r[:, None], ar == c[:, None]
        rp_hot, cp_hot = ar == rp[:, None], ar == cp[:, None]
        add = (r_hot[:, :, None] & cp_hot[:, None, :]) | (rp_hot[:, :, None] & c_hot[:, None, :])
        drop = rp_hot[:, :, None] & cp_hot[:, None, :]
        new = (keep | add) & ~drop
        return jnp.where(active[:, None, None], new, keep)

    return lax.while_loop(lambda k: jnp.any(short(k)), augment, keep)


def improve(scores: jax.Array, keep: jax.Array, rounds: int) -> jax.Array:
    """Applies the best profitable 4-cycle swap per tile, ``rounds`` times.

    A swap replaces kept ``(r1, c1), (r2, c2)`` by unkept ``(r1, c2), (r2, c1)``; it keeps
    every row and column count, so the mask stays transposable.
    """
    return (
        keep if rounds == 0 else lax.fori_loop(0, rounds, lambda _, k: _best_swap(scores, k), keep)
    )


def _best_swap(scores: jax.Array, keep: jax.Array) -> jax.Array:
    b, m, _ = scores.shape
    # gain[b, r1, c1, r2, c2] = s[r1,c2] + s[r2,c1] - s[r1,c1] - s[r2,c2]
    s_kept = jnp.where(keep, scores, jnp.inf)
    s_free = jnp.where(keep, -jnp.inf, scores)
    gain = (
        s_free[:, :, None, None, :]
        + jnp.swapaxes(s_free, 1, 2)[:, None, :, :, None]
        - s_kept[:, :, :, None, None]
        - s_kept[:, None, None, :, :]
    )
    flat = gain.reshape(b, -1)
    best = jnp.argmax(flat, axis=-1)
    ok = jnp.take_along_axis(flat, best[:, None], axis=-1)[:, 0] > 0
    r1, c1, r2, c2 = jnp.unravel_index(best, (m, m, m, m))
    ar = jnp.arange(m)

    def cell(r, c):
        return (ar == r[:, None])[:, :, None] & (ar == c[:, None])[:, None, :]

    new = (keep & ~cell(r1, c1) & ~cell(r2, c2)) | cell(r1, c2) | cell(r2, c1)
    return jnp.where(ok[:, None, None], new, keep)


def solve(scores: jax.Array, n: int, *, improve_rounds: int = 0) -> jax.Array:
    """Greedy + repair (+ optional 4-cycle improvement): the ``"greedy"`` method.

    Args:
      scores: float32 ``(B, m, m)`` tile scores.
      n: kept entries per row and column.
      improve_rounds: rounds of best 4-cycle swaps after the repair.

    Returns:
      bool ``(B, m, m)`` with exactly ``n`` per row and column.
    """
    keep = repair(scores, greedy_keep(scores, n), n)
    return improve(scores, keep, improve_rounds)
