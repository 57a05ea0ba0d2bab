"""Greedy transposable-mask solver with repair and cycle cancelling; jittable, vectorized.

1. Keep-side greedy (Hubara et al., 2021): visit a tile's entries in descending score and
   keep an entry while its row and its column each hold fewer than ``n``. This is a
   ½-approximation of the optimum but can leave rows and columns short of ``n``. It is
   computed without a sort, by a few rounds of locally dominant choices on bit sets
   (:func:`greedy_keep`), with exactly the sequential greedy's result.
2. Repair: while a tile has a short row ``r`` (then it also has a short column ``c``),
   apply the best augmenting path ``r -> c' -> r' -> c``: keep ``(r, c')``, drop
   ``(r', c')``, keep ``(r', c)``. Such a path always exists after the greedy pass: the
   greedy keeps every pair whose row and column are both short, so row ``r`` keeps all
   short columns and has an unkept full column ``c'``; column ``c'`` holds ``n`` kept rows
   and column ``c`` fewer than ``n``, so one of the rows kept in ``c'`` is unkept in ``c``.
   Each step adds one kept entry to row ``r`` and column ``c``; other counts are unchanged.
3. Improve: a few rounds of negative-cycle cancelling in the residual graph
   (:mod:`jaxnm.masks.residual`), which lifts the retained score to ≥ 99.9 % of the
   optimum on Gaussian weights; run to convergence it is the ``"exact_device"`` method.

Every step is a fixed-shape array program over the whole ``(B, m, m)`` batch (no Python
loop over tiles); the repair and the improvement work on compacted batches of the tiles
that still need them. It runs under ``jit``/``vmap`` on CPU, GPU and TPU.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxnm.masks.compaction import compacted_rounds
from jaxnm.masks.packing import bit_words
from jaxnm.masks.residual import cancel_cycles, finite_scores


def _ordered_int(x: jax.Array) -> jax.Array:
    """int32 keys ordered like the float32 values ``x`` (finite or infinite)."""
    i = lax.bitcast_convert_type(x.astype(jnp.float32), jnp.int32)
    return i ^ ((i >> 31) & 0x7FFFFFFF)


def _position_keys(values: jax.Array, *, positions_from_iota: bool = True) -> jax.Array:
    """Distinct int32 keys ordering every tile's entries by value, best first.

    The order-preserving int32 image of a float32 value with its lowest ``log2(m*m)`` bits
    replaced by the position, so equal values put the lower position first. Values that
    agree in all but those lowest bits (relative difference below ``m*m * 2**-23``) count
    as ties.

    Args:
      values: float ``(B, m, m)`` per-entry values (scores, gains).
      positions_from_iota: the positions as an ``iota`` computed inside the fused kernels
        (static; True: measured 2x faster for the compacted greedy pass on 262,144 tiles
        at 4:8), or as a NumPy constant (False: XLA:CPU compiles one kernel fewer, which
        is what the uncompacted solve is for). The same keys.

    Returns:
      int32 ``(B, m, m)``, distinct within each tile; larger is better.
    """
    m = values.shape[-1]
    low = (1 << (m * m - 1).bit_length()) - 1
    if positions_from_iota:
        low_minus_pos = low - jnp.arange(m * m, dtype=jnp.int32).reshape(m, m)
    else:
        low_minus_pos = (low - np.arange(m * m, dtype=np.int32)).reshape(m, m)
    return (_ordered_int(values) & ~low) | low_minus_pos


def _key_position(key: jax.Array, m: int) -> jax.Array:
    """Inverse of the position part of :func:`_position_keys`: flat position ``row*m+col``."""
    low = (1 << (m * m - 1).bit_length()) - 1
    return low - (key & low)


class _Bits:
    """Bit sets over ``m`` positions, stored as ``words`` unsigned words of ``dtype``."""

    def __init__(self, m: int):
        self.m = m
        dtype, self.words = bit_words(m)
        self.dtype = jnp.dtype(dtype)
        self.width = 8 * self.dtype.itemsize

    def _bit(self, positions: np.ndarray | int) -> np.ndarray:
        """The bit of each static position in its word (a NumPy constant)."""
        return np.left_shift(self.dtype.type(1), np.asarray(positions) % self.width).astype(
            self.dtype
        )

    def pack(self, flags: jax.Array, axis: int) -> list[jax.Array]:
        """bool ``flags`` with ``m`` entries along ``axis`` -> one word array per word."""
        shape = [1] * flags.ndim
        shape[axis] = -1
        out = []
        for w in range(self.words):
            lo, hi = w * self.width, min(self.m, (w + 1) * self.width)
            part = lax.slice_in_dim(flags, lo, hi, axis=axis)
            # Summed in uint32, then narrowed: a uint8/uint16 sum of this reduction made
            # XLA:CPU emit ~4x the code (90 kB of LLVM IR a fusion), compiled in every step.
            bit = (np.uint32(1) << np.arange(hi - lo, dtype=np.uint32)).reshape(shape)
            word = jnp.sum(jnp.where(part, bit, jnp.uint32(0)), axis=axis, dtype=jnp.uint32)
            out.append(word.astype(self.dtype))
        return out

    def unpack(self, words: list[jax.Array]) -> jax.Array:
        """Word arrays ``(...,)`` -> bool ``(..., m)``."""
        pos = np.arange(self.m)
        word = words[0][..., None]
        for w in range(1, self.words):
            word = jnp.where(pos // self.width == w, words[w][..., None], word)
        return (word & self._bit(pos)) != 0

    def count(self, words: list[jax.Array]) -> jax.Array:
        """Number of set bits, in ``dtype`` (``m`` fits in it)."""
        return sum(lax.population_count(w) for w in words)

    def better(self, key: jax.Array, *, unrolled: bool) -> jax.Array:
        """For every entry of ``key`` ``(B, m, m)``: the sets of entries of its row and of
        its column with a larger key, as words ``(B, 2 * words, m, m)`` (the row's words,
        then the column's).

        ``unrolled``: one elementwise step per entry of the line (fast to run), or one
        compare of every entry with its row and its column, ``(B, 2, m, m, m)``, reduced to
        words (fewer, smaller kernels, faster to compile; slower to run on large batches).
        The same sets.
        """
        if not unrolled:
            rows = key[:, :, None, :] > key[..., None]  # [b, r, c, k]: key[r, k] > key[r, c]
            cols = jnp.swapaxes(key, 1, 2)[:, None, :, :] > key[..., None]  # key[k, c] > ...
            return jnp.stack(self.pack(rows, 3) + self.pack(cols, 3), axis=1)
        out = []
        for axis in (2, 1):
            for w in range(self.words):
                acc = jnp.zeros(key.shape, self.dtype)
                for k in range(w * self.width, min(self.m, (w + 1) * self.width)):
                    other = lax.slice_in_dim(key, k, k + 1, axis=axis)
                    acc = acc | jnp.where(other > key, self._bit(k), 0)
                out.append(acc)
        return jnp.stack(out, axis=1)


def greedy_keep(scores: jax.Array, n: int, *, compact: bool = True) -> jax.Array:
    """The paper's greedy pass alone (may leave rows/columns short of ``n``).

    The result is exactly that of visiting every tile's entries in descending score (ties:
    lower position first) and keeping an entry while its row and its column each hold fewer
    than ``n``. It is computed without sorting, by rounds of *locally dominant* choices: an
    entry is *available* while it is unkept and its row and column are both short; a round
    keeps every available entry that is among the ``n - kept`` best available entries of
    its row and also of its column. The sequential greedy keeps each of them (no better
    available entry of its row or column can fill them first), the best available entry of
    a tile is always chosen, and the rounds stop when nothing is available, so the result
    is the greedy's. Gaussian 8x8 tiles need 3-4 rounds; the slowest of 262,144 needs 7.

    Every entry's better neighbours are precomputed as bit sets, so a round is a few
    integer ops (``population_count`` of the available bits) on ``(B, m, m)`` arrays of
    small words; rounds run on compacted batches of the tiles that still have available
    entries (:func:`~jaxnm.masks.compaction.compacted_rounds`).

    Args:
      scores: float32 ``(B, m, m)`` tile scores.
      n: target count per row and column.
      compact: run the rounds on compacted batches (static; False: whole-batch rounds,
        see :func:`~jaxnm.masks.compaction.compacted_rounds`). Same result either way.

    Returns:
      bool ``(B, m, m)`` with at most ``n`` kept per row and per column, maximal (no unkept
      entry has both its row and its column short).
    """
    m = scores.shape[-1]
    bits = _Bits(m)
    key = _position_keys(scores, positions_from_iota=compact)  # the visiting order
    # (B, 2 * words, m, m): better entries of the row, then of the column, per word. (The
    # uncompacted solve is the one kept cheap to compile.)
    better = bits.better(key, unrolled=compact)
    # State (B, 2 * words, m): each row's kept columns, then each column's kept rows.
    empty = jnp.zeros((scores.shape[0], 2 * bits.words, m), bits.dtype)
    kept = compacted_rounds(
        lambda b, k: _greedy_round(b, k, n, bits, idle_round=not compact),
        better,
        empty,
        max_rounds=m * m,
        compact=compact,
        finished_is_fixed=True,  # nothing available: a round keeps nothing
    )
    return bits.unpack([kept[:, w] for w in range(bits.words)])


def _greedy_round(
    better: jax.Array, kept: jax.Array, n: int, bits: _Bits, *, idle_round: bool
) -> tuple[jax.Array, jax.Array]:
    """One round of :func:`greedy_keep` on ``(K, 2 * words, m)`` kept bits: returns the
    new bits and whether each tile goes on, bool ``(K,)``.

    A round keeps an entry whenever one is available (the best available one of the tile
    is always chosen). So a tile can stop when nothing is left available, found by
    counting again (``idle_round=False``), or after its first round that keeps nothing
    (``idle_round=True``: one idle round per tile, but fewer kernels for XLA to compile,
    which is what the uncompacted solve is for). The result is the same."""
    w = bits.words
    row_kept = [kept[:, i] for i in range(w)]  # words (K, m) over columns
    col_kept = [kept[:, w + i] for i in range(w)]  # words (K, m) over rows
    row_count, col_count = _counts(bits, row_kept), _counts(bits, col_kept)  # (K, m)
    row_avail = _available(bits, row_kept, row_count < n, col_count < n)  # over columns
    col_avail = _available(bits, col_kept, col_count < n, row_count < n)  # over rows
    # Kept plus better available entries in the row / column of every entry.
    in_row = row_count[:, :, None]
    in_col = col_count[:, None, :]
    for a, better_w in zip(row_avail, [better[:, i] for i in range(w)], strict=True):
        in_row = in_row + lax.population_count(a[:, :, None] & better_w).astype(jnp.int32)
    for a, better_w in zip(col_avail, [better[:, w + i] for i in range(w)], strict=True):
        in_col = in_col + lax.population_count(a[:, None, :] & better_w).astype(jnp.int32)
    chosen = bits.unpack(row_avail) & (in_row < n) & (in_col < n)  # (K, m, m)
    row_kept = [k | c for k, c in zip(row_kept, bits.pack(chosen, 2), strict=True)]
    col_kept = [k | c for k, c in zip(col_kept, bits.pack(chosen, 1), strict=True)]
    new = jnp.stack(row_kept + col_kept, axis=1)
    if idle_round:
        # Whether anything was chosen, read off the new words (every chosen entry was
        # unkept): the choice reduced again on its own made XLA:CPU emit its whole
        # computation a second time (40 kB of LLVM IR more).
        still = jnp.any(new != kept, axis=(1, 2))
    else:  # still available: an unkept entry in an open row and an open column
        left = _available(bits, row_kept, _counts(bits, row_kept) < n, _counts(bits, col_kept) < n)
        still = jnp.any(jnp.stack(left) != 0, axis=(0, 2))
    return new, still


def _counts(bits: _Bits, kept: list[jax.Array]) -> jax.Array:
    """Kept entries per line, int32 ``(K, m)``.

    int32, not the word type: a uint8 compare fused with a broadcast once crashed XLA:CPU's
    LLVM instruction selection on AVX-512 in a draft (int32 measured as fast here).
    """
    return bits.count(kept).astype(jnp.int32)


def _available(
    bits: _Bits, kept: list[jax.Array], own_open: jax.Array, other_open: jax.Array
) -> list[jax.Array]:
    """Available entries of each line (unkept, own line and crossing line both open).

    Args:
      bits: the bit-set layout.
      kept: words ``(K, m)``: each line's kept crossing lines.
      own_open: bool ``(K, m)``: lines with fewer than ``n`` kept.
      other_open: bool ``(K, m)``: the same for the crossing lines.

    Returns:
      words ``(K, m)``: each line's available crossing lines.
    """
    return [
        jnp.where(own_open, ~k & o[:, None], 0)
        for k, o in zip(kept, bits.pack(other_open, 1), strict=True)
    ]


def _augment(
    scores: jax.Array, keep: jax.Array, n: int, *, one_hot: bool
) -> tuple[jax.Array, jax.Array]:
    """One best length-3 augmenting path per tile with a short row (see the module doc).

    The path starts at the first short row ``r`` and ends at the first short column ``c``;
    among its middle steps ``(r', c')`` the best gain wins, compared on int32 keys whose
    lowest ``log2(m*m)`` bits hold the position (gains within a relative ``m*m * 2**-23``
    count as equal; any valid path keeps the counts right). ``one_hot``: row ``r`` and
    column ``c`` are read by one-hot selects (fewer kernels for XLA to compile) rather
    than gathers (faster to run on large batches); the same result.
    """
    m = scores.shape[-1]
    ar = jnp.arange(m, dtype=jnp.int32)
    rows_short = jnp.sum(keep, axis=-1, dtype=jnp.int32) < n  # (B, m)
    cols_short = jnp.sum(keep, axis=-2, dtype=jnp.int32) < n
    r = jnp.min(jnp.where(rows_short, ar, m), axis=-1)  # first short row; m: none
    c = jnp.min(jnp.where(cols_short, ar, m), axis=-1)  # first short column
    active = r < m
    r_idx = jnp.minimum(r, m - 1)[:, None, None]
    c_idx = jnp.minimum(c, m - 1)[:, None, None]
    rows, cols = ar[:, None], ar[None, :]
    at_r, at_c = rows == r_idx, cols == c_idx  # (B, m, 1), (B, 1, m)
    if one_hot:  # one entry of each sum is selected, the others are 0: exact
        row_r = jnp.any(keep & at_r, axis=1, keepdims=True)  # (B, 1, m) over c'
        s_row_r = jnp.sum(jnp.where(at_r, scores, 0.0), axis=1, keepdims=True)
        col_c = jnp.any(keep & at_c, axis=2, keepdims=True)  # (B, m, 1) over r'
        s_col_c = jnp.sum(jnp.where(at_c, scores, 0.0), axis=2, keepdims=True)
    else:
        row_r = jnp.take_along_axis(keep, r_idx, axis=1)
        s_row_r = jnp.take_along_axis(scores, r_idx, axis=1)
        col_c = jnp.take_along_axis(keep, c_idx, axis=2)
        s_col_c = jnp.take_along_axis(scores, c_idx, axis=2)
    valid = ~row_r & keep & ~col_c  # [b, r', c']: keep (r, c'), drop (r', c'), keep (r', c)
    gain = s_row_r - scores + s_col_c
    key = _position_keys(gain, positions_from_iota=not one_hot)
    key = jnp.where(valid, key, jnp.iinfo(jnp.int32).min)
    best = _key_position(jnp.max(key.reshape(-1, m * m), axis=-1), m)
    rp, cp = (best // m)[:, None, None], (best % m)[:, None, None]
    add = (at_r & (cols == cp)) | ((rows == rp) & at_c)
    drop = (rows == rp) & (cols == cp)
    new = jnp.where(active[:, None, None], (keep | add) & ~drop, keep)
    return new, jnp.any(jnp.sum(new, axis=-1, dtype=jnp.int32) < n, axis=-1)


def repair(scores: jax.Array, keep: jax.Array, n: int, *, compact: bool = True) -> jax.Array:
    """Fills every row and column of every tile to exactly ``n`` by augmenting paths.

    Args:
      scores: float32 ``(B, m, m)`` finite scores.
      keep: bool ``(B, m, m)`` from :func:`greedy_keep` (at most ``n`` per row/column,
        and no unkept entry whose row and column are both short).
      n: target count.
      compact: as in :func:`greedy_keep`.

    Returns:
      bool ``(B, m, m)`` with exactly ``n`` per row and column.
    """
    m = scores.shape[-1]
    # Each augmentation removes one unit of deficit; a tile lacks at most n * m entries.
    return compacted_rounds(
        lambda s, k: _augment(s, k, n, one_hot=not compact),
        scores,
        keep,
        max_rounds=n * m,
        compact=compact,
        finished_is_fixed=True,  # no short row (so no short column): nothing to augment
    )


def default_improve_rounds(m: int) -> int:
    """Cycle-cancelling rounds used by :func:`solve` by default: ``max(2, m // 4)``."""
    return max(2, m // 4)


def default_search_depth(m: int) -> int:
    """Bellman–Ford rounds per cancelling round in :func:`solve`: ``min(m, max(4, m // 2))``.

    Half the ``m`` rounds needed to prove optimality finds nearly all the gain (measured on
    Gaussian tiles, 2 rounds at 4:8: 99.955 % of the optimum with depth 4, 99.965 % with 8).
    """
    return min(m, max(4, m // 2))


def solve(
    scores: jax.Array, n: int, *, improve_rounds: int | None = None, compact: bool = True
) -> jax.Array:
    """Greedy + repair + a few rounds of cycle cancelling: the ``"greedy"`` method.

    Args:
      scores: float32 ``(B, m, m)`` tile scores (``>= 0``, ``+inf``, or ``-1`` for NaN).
      n: kept entries per row and column.
      improve_rounds: cycle-cancelling rounds per tile after the repair (static int;
        ``None``: :func:`default_improve_rounds`: 2 for 2:4 and 4:8, 4 for 8:16;
        ``0``: greedy + repair only). Each round searches cycles with
        :func:`default_search_depth` Bellman–Ford rounds.
      compact: run every stage's rounds on compacted batches of the tiles still working
        (static; False: whole-batch rounds, the cheapest program to compile; see
        :func:`~jaxnm.masks.compaction.compacted_rounds`). The same masks either way.

    Returns:
      bool ``(B, m, m)`` with exactly ``n`` per row and column.
    """
    m = scores.shape[-1]
    if improve_rounds is None:
        improve_rounds = default_improve_rounds(m)
    scores = finite_scores(scores)
    keep = repair(scores, greedy_keep(scores, n, compact=compact), n, compact=compact)
    return cancel_cycles(
        scores,
        keep,
        max_rounds=improve_rounds,
        bf_rounds=default_search_depth(m),
        compact=compact,
    )
