"""Transposable N:M masks: every ``m x m`` tile keeps exactly ``n`` per row and per column.

Then ``W * mask`` is N:M along ``in`` (the forward GEMM) and along ``out`` (the
input-gradient GEMM ``dX = dY @ W.T``). The solvers live in their own modules and share
one contract: ``solve(scores, n) -> keep`` with ``scores`` a float32 ``(B, m, m)`` batch of
tiles (``-1`` marks NaN, see :mod:`jaxnm.masks.scores`) and ``keep`` a bool ``(B, m, m)``.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxnm._checks import check_floating, check_nm, check_tileable
from jaxnm.masks import device_exact, exact, exhaustive, greedy
from jaxnm.masks.scores import importance
from jaxnm.masks.tiles import from_tiles, to_tiles

Solver = Callable[[jax.Array, int], jax.Array]


def _solvers() -> dict[str, Solver]:
    return {
        "greedy": greedy.solve,
        "exact": exact.solve,
        "exhaustive": exhaustive.solve,
        "exact_device": device_exact.solve,
    }


def transposable_mask(w: jax.Array, n: int, m: int, *, method: str = "auto") -> jax.Array:
    """Transposable N:M mask over the last two axes of ``w``.

    The last two axes (``(in, out)`` for Flax kernels) are tiled into ``m x m`` blocks;
    leading axes (e.g. conv ``kh, kw``) are batch. Each tile keeps exactly ``n`` entries
    in every row and every column, chosen to retain as much ``|w|`` as the method can.

    Args:
      w: floating array ``(..., R, C)`` with ``R`` and ``C`` multiples of ``m``; weights
        or non-negative scores (float32, bfloat16, float16, ...).
      n: entries kept per row and per column of every tile (static int).
      m: tile size (static int).
      method: ``"greedy"`` (jittable, device-side, greedy + repair + a few rounds of
        cycle cancelling; >= 99.9% of the optimum on Gaussian weights), ``"exact"``
        (optimal, min-cost flow on the host via ``jax.pure_callback``), ``"exact_device"``
        (optimal, jittable, on device: cycle cancelling to convergence, any n:m),
        ``"exhaustive"`` (optimal by enumerating all tile patterns; only where their number
        is small: 1:2, 2:4, 1:4, 3:4, ...), or ``"auto"`` (exhaustive where cheap, greedy
        otherwise).

    Returns:
      bool array of ``w``'s shape; :func:`is_transposable_nm` holds for it. NaN scores rank
      last, ``±inf`` first. Results are deterministic; among equally good masks, greedy
      visits ties lower index first and exhaustive takes the first pattern, while exact
      and exact_device return their solver's (deterministic) choice.

    Raises:
      ValueError: non-floating ``w``, bad ``n``/``m``, rank < 2, last two axes not
        multiples of ``m``, or an unknown ``method``.
    """
    n, m = check_nm(n, m)
    check_floating(w)
    check_tileable(jnp.shape(w), m)
    solver = _select(method, n, m)
    tiles = to_tiles(importance(w), m)
    lead = tiles.shape[:-2]
    keep = solver(tiles.reshape(-1, m, m), n)
    return from_tiles(keep.reshape(*lead, m, m))


def _select(method: str, n: int, m: int) -> Solver:
    solvers = _solvers()
    if method == "auto":
        method = (
            "exhaustive" if "exhaustive" in solvers and _cheap_to_enumerate(n, m) else ("greedy")
        )
    if method not in solvers:
        raise ValueError(f"`method` (={method!r}) must be one of {sorted(solvers) + ['auto']}.")
    return solvers[method]


def _cheap_to_enumerate(n: int, m: int) -> bool:
    return exhaustive.pattern_count_at_most(n, m, exhaustive.AUTO_MAX_PATTERNS)


def is_transposable_nm(mask: jax.Array, n: int, m: int) -> jax.Array:
    """Whether every ``m x m`` tile of the last two axes has exactly ``n`` kept per row and
    per column.

    Args:
      mask: array ``(..., R, C)`` of any dtype; nonzero entries count as kept.
      n, m: the pattern.

    Returns:
      scalar bool ``jax.Array``.
    """
    n, m = check_nm(n, m)
    check_tileable(jnp.shape(mask), m, name="mask")
    tiles = to_tiles(mask != 0, m)
    rows = jnp.sum(tiles, axis=-1)
    cols = jnp.sum(tiles, axis=-2)
    return jnp.all(rows == n) & jnp.all(cols == n)
