"""Transposable N:M masks: every ``m x m`` tile keeps exactly ``n`` per row and per column.

Then ``W * mask`` is N:M along ``in`` (the forward GEMM) and along ``out`` (the
input-gradient GEMM ``dX = dY @ W.T``). The solvers live in their own modules and share
one contract, see :mod:`jaxnm.masks.solvers`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxnm._checks import check_floating, check_nm, check_tileable
from jaxnm.masks.scores import importance
from jaxnm.masks.solvers import MaskMethod, Solver, resolve_solver
from jaxnm.masks.tiles import from_tiles, to_tiles


def transposable_mask(
    w: jax.Array, n: int, m: int, *, method: MaskMethod | Solver = "auto"
) -> jax.Array:
    """Transposable N:M mask over the last two axes of ``w``.

    The last two axes (``(in, out)`` for Flax kernels) are tiled into ``m x m`` blocks;
    leading axes (e.g. conv ``kh, kw``) are batch. Each tile keeps exactly ``n`` entries
    in every row and every column, chosen to retain as much ``|w|`` as the method can.

    Args:
      w: floating array ``(..., R, C)`` with ``R`` and ``C`` multiples of ``m``; weights
        or non-negative scores (float32, bfloat16, float16, ...).
      n: entries kept per row and per column of every tile (static int).
      m: tile size (static int).
      method: a name in :data:`jaxnm.masks.SOLVERS`: ``"auto"`` (default; exhaustive
        where cheap, greedy otherwise), ``"greedy"`` (jittable, device-side, greedy +
        repair + a few rounds of cycle cancelling; >= 99.9% of the optimum on Gaussian
        weights), ``"exact"`` (optimal, min-cost flow on the host via
        ``jax.pure_callback``; needs OR-Tools), ``"exact_device"`` (optimal, jittable, on
        device: cycle cancelling to convergence, any n:m), ``"exhaustive"`` (optimal by
        enumerating all tile patterns; only where their number is small: 1:2, 2:4, 1:4,
        3:4, ...); or a solver callable ``solve(scores, n)`` (see
        :mod:`jaxnm.masks.solvers`).

    Returns:
      bool array of ``w``'s shape; :func:`is_transposable_nm` holds for it. NaN scores rank
      last, ``±inf`` first. Results are deterministic; among equally good masks, greedy
      visits ties lower index first and exhaustive takes the first pattern, while exact
      and exact_device return their solver's (deterministic) choice.

    Raises:
      ValueError: non-floating ``w``, bad ``n``/``m``, rank < 2, last two axes not
        multiples of ``m``, or an unknown ``method`` name.
    """
    n, m = check_nm(n, m)
    check_floating(w)
    check_tileable(jnp.shape(w), m)
    solver = resolve_solver(method)
    try:
        hash(solver)
    except TypeError:  # a solver object that cannot be a static argument: traced as is
        return _solve_layer(w, n, m, solver)
    return _solve_layer_jit(w, n, m, solver)


def _solve_layer(w: jax.Array, n: int, m: int, solver: Solver) -> jax.Array:
    """The mask of a validated ``w`` (see :func:`transposable_mask`)."""
    tiles = to_tiles(importance(w), m)
    lead = tiles.shape[:-2]
    keep = solver(tiles.reshape(-1, m, m), n)
    return from_tiles(keep.reshape(*lead, m, m))


# Compiled once per shape, dtype, n:m and solver: an eager call runs as one program instead
# of dispatching the solver op by op (3-4x faster for greedy); inlined under an outer jit.
_solve_layer_jit = jax.jit(_solve_layer, static_argnums=(1, 2, 3))


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
