"""Mask diversity: how many masks satisfy a sparsity constraint (log10 counts)."""

from __future__ import annotations

import functools
import math

from jaxnm._checks import check_nm

_KINDS = ("unstructured", "nm", "transposable")


@functools.cache
def count_transposable_tiles(n: int, m: int) -> int:
    """K(m, n): the number of ``m x m`` 0/1 matrices with ``n`` ones in every row and column.

    Exact, by dynamic programming over rows with the multiset of column counts as state.
    K(4, 2) = 90 and K(8, 4) = 116,963,796,250.
    """
    n, m = check_nm(n, m)
    # state[k] = number of columns that already hold k ones (k = 0..n).
    states: dict[tuple[int, ...], int] = {(m,) + (0,) * n: 1}
    for _ in range(m):
        # Place the row's n ones class by class, from the fullest class down, so that a
        # column moved up from class k is never chosen again in the same row. Partial
        # placements that reach the same (state, ones left) are merged.
        partial = {(state, n): ways for state, ways in states.items()}
        for k in range(n - 1, -1, -1):
            nxt: dict[tuple[tuple[int, ...], int], int] = {}
            for (state, left), ways in partial.items():
                for x in range(min(left, state[k]) + 1):
                    new = list(state)
                    new[k] -= x
                    new[k + 1] += x
                    key = (tuple(new), left - x)
                    nxt[key] = nxt.get(key, 0) + ways * math.comb(state[k], x)
            partial = nxt
        states = {state: ways for (state, left), ways in partial.items() if left == 0}
    return states.get((0,) * n + (m,), 0)


def _log10_comb(a: int, b: int) -> float:
    return (math.lgamma(a + 1) - math.lgamma(b + 1) - math.lgamma(a - b + 1)) / math.log(10)


def mask_diversity(n: int, m: int, size: int, *, kind: str = "nm") -> float:
    """log10 of the number of admissible masks for a region of ``size`` weights at density n/m.

    Args:
      n, m: the N:M pattern (density ``n / m``).
      size: number of weights ``T`` in the region (e.g. 64 for an 8x8 block, or a layer's
        size). Must be a multiple of ``m`` (``"nm"``, ``"unstructured"``) or of ``m**2``
        (``"transposable"``, a region made of whole ``m x m`` tiles).
      kind: ``"unstructured"`` (``C(T, T n/m)``), ``"nm"`` (``C(m, n)^(T/m)``) or
        ``"transposable"`` (``K(m, n)^(T/m^2)`` with exact tile counts ``K``).

    Returns:
      float: ``log10`` of the count (computed in log space, so any layer size works).

    Example:
      >>> round(10 ** jaxnm.mask_diversity(2, 4, 64, kind="transposable"))  # 90**4
      65610000
    """
    n, m = check_nm(n, m)
    if kind not in _KINDS:
        raise ValueError(f"`kind` (={kind!r}) must be one of {_KINDS}.")
    block = m * m if kind == "transposable" else m
    if size <= 0 or size % block:
        raise ValueError(
            f"`size` (={size}) must be a positive multiple of {block} for kind={kind!r} with m={m}."
        )
    if kind == "unstructured":
        return _log10_comb(size, size * n // m)
    if kind == "nm":
        return size // m * math.log10(math.comb(m, n))
    return size // (m * m) * math.log10(count_transposable_tiles(n, m))
