"""Exhaustive transposable-mask solver: score every admissible tile pattern, keep the best.

An ``m x m`` tile has ``K(m, n)`` admissible patterns (0/1 matrices with ``n`` ones in every
row and column; :func:`jaxnm.count_transposable_tiles`): 2 for 1:2, 24 for 1:4 and 3:4, 90
for 2:4, but 116,963,796,250 for 4:8. Where ``K`` is small, one matmul
``tiles (B, m*m) @ patterns (m*m, K)`` scores them all and the argmax is the exact optimum.
It is a fixed-shape array program: jittable, vmappable, on every backend.

Pattern order (and so tie-breaking) is deterministic: patterns are enumerated row by row,
each row's column sets in lexicographic order (row 0 first), so among equally good patterns
the one keeping the lowest columns in the earliest rows wins.
"""

from __future__ import annotations

import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxnm._checks import check_nm
from jaxnm._sharding import explicit_context
from jaxnm.masks.diversity import count_transposable_tiles

#: Largest number of patterns ``method="exhaustive"`` accepts (2:5 has 2040, 1:7 has 5040).
MAX_PATTERNS = 4096
#: ``method="auto"`` enumerates only up to this many patterns (2:4 has 90), else greedy.
AUTO_MAX_PATTERNS = 256


def pattern_count_at_most(n: int, m: int, limit: int) -> bool:
    """Whether ``K(m, n) <= limit``, without counting when ``K`` is obviously large.

    ``K(m, m) = 1``; for ``0 < n < m`` every row permutation of a circulant pattern is a
    distinct admissible pattern, so ``K(m, n) >= m!`` and large tiles are rejected at once.
    """
    n, m = check_nm(n, m)
    if n == m:
        return 1 <= limit
    if math.factorial(m) > limit:
        return False
    return count_transposable_tiles(n, m) <= limit


@functools.cache
def tile_patterns(n: int, m: int) -> np.ndarray:
    """All ``m x m`` 0/1 patterns with ``n`` ones per row and column, in the canonical order.

    Args:
      n, m: the pattern; ``K(m, n)`` must not exceed :data:`MAX_PATTERNS`.

    Returns:
      read-only bool numpy array ``(K, m, m)``; ``K = count_transposable_tiles(n, m)``.

    Raises:
      ValueError: if there are more than :data:`MAX_PATTERNS` patterns.
    """
    check_exhaustive(n, m)
    rows = [np.isin(np.arange(m), c) for c in itertools.combinations(range(m), n)]
    found: list[np.ndarray] = []

    def extend(prefix: list[np.ndarray], counts: np.ndarray) -> None:
        left = m - len(prefix)
        if left == 0:
            found.append(np.stack(prefix))
            return
        for row in rows:
            new = counts + row
            # Each column still needs n - count ones from the `left - 1` remaining rows.
            if np.all(new <= n) and np.all(n - new <= left - 1):
                extend(prefix + [row], new)

    extend([], np.zeros(m, int))
    patterns = np.stack(found)
    patterns.setflags(write=False)
    return patterns


def check_exhaustive(n: int, m: int) -> None:
    """Raises ``ValueError`` unless ``method="exhaustive"`` may enumerate ``n:m`` tiles."""
    n, m = check_nm(n, m)
    if not pattern_count_at_most(n, m, MAX_PATTERNS):
        # Counting is slow for large tiles (seconds for 16x16); m! bounds K from below.
        count = f"at least {m}! = {math.factorial(m)}" if m > 8 else count_transposable_tiles(n, m)
        raise ValueError(
            f"method='exhaustive' enumerates every {m}x{m} tile pattern with n={n} per row and "
            f"column; {n}:{m} has {count} of them, more than the limit of {MAX_PATTERNS}. "
            "It suits 1:2, 2:4, 1:4, 3:4 and other small tiles; use method='exact' or "
            "'greedy' here."
        )


def solve(scores: jax.Array, n: int) -> jax.Array:
    """Optimal transposable tiles by enumeration: the ``"exhaustive"`` method.

    Args:
      scores: float32 ``(B, m, m)`` tile scores (``-1`` marks NaN, ``+inf`` allowed; a raw
        NaN or ``-inf`` counts as ``-1``).
      n: kept entries per row and column of every tile.

    Returns:
      bool ``(B, m, m)`` with exactly ``n`` per row and column, maximising the tile's total
      score. Patterns keeping more ``+inf`` entries win first (``inf * 0`` never enters the
      matmul); among the rest the highest finite total wins, and exact ties go to the
      lowest pattern index. Totals are float32 sums (``precision=HIGHEST``), so patterns
      whose totals differ by less than float32 rounding count as tied.

    Raises:
      ValueError: if ``K(m, n)`` exceeds :data:`MAX_PATTERNS`.
    """
    b, m, _ = scores.shape
    patterns = tile_patterns(n, m)
    table = jnp.asarray(patterns.reshape(len(patterns), m * m).T, jnp.float32)  # (m*m, K)
    flat = scores.reshape(b, m * m).astype(jnp.float32)
    infinite = jnp.isposinf(flat)
    finite = jnp.nan_to_num(flat, nan=-1.0, posinf=0.0, neginf=-1.0)
    totals = jnp.matmul(finite, table, precision=lax.Precision.HIGHEST)

    def most_inf_first(totals):
        inf_kept = jnp.matmul(infinite.astype(jnp.float32), table)  # exact small integers
        most_inf = inf_kept == jnp.max(inf_kept, axis=-1, keepdims=True)
        return jnp.where(most_inf, totals, -jnp.inf)

    any_inf = jnp.any(infinite)
    best = lambda ranked: jnp.argmax(ranked, axis=-1)  # noqa: E731
    if not explicit_context(scores):
        # The second matmul only runs when some score is +inf (both branches under vmap).
        ranked = lax.cond(any_inf, most_inf_first, lambda t: t, totals)
        return jnp.asarray(patterns)[best(ranked)]
    # On Explicit meshes (jax 0.10) neither a vmapped lax.cond nor the pattern gather can
    # state their output sharding: select both branches (under vmap, as sparsify's tile-wise
    # solve runs, a cond computes both anyway) and decode the pattern index with a one-hot
    # matmul (exact: 0/1 entries).
    ranked = jnp.where(any_inf, most_inf_first(totals), totals)
    onehot = jax.nn.one_hot(best(ranked), len(patterns), dtype=jnp.float32)  # (B, K)
    keep = jnp.matmul(onehot, table.T) > 0.5
    return keep.reshape(b, m, m)
