"""The built-in transposable-mask solvers and the one contract they share.

A solver is any callable ``solve(scores, n) -> keep``: ``scores`` a float32 ``(B, m, m)``
batch of tiles (``-1`` marks NaN, see :mod:`jaxnm.masks.scores`), ``keep`` a bool
``(B, m, m)`` with exactly ``n`` True per row and per column of every tile. Wherever jaxnm
takes a ``method`` (:func:`jaxnm.transposable_mask`, :func:`jaxnm.sparsify`,
:mod:`jaxnm.convert`), it takes a :data:`MaskMethod` name of :data:`SOLVERS` or such a
callable, the extension point for a solver of one's own. The default everywhere is
``"auto"``.

Each tile's mask depends on that tile only, so a batch can be solved whole or tile by
tile with the same masks. A solver that works in rounds on the tiles still active (greedy)
may take a keyword ``compact: bool``: ``True`` (its default) shrinks the
batch to the active tiles as rounds go, ``False`` runs every round on the whole batch,
the cheapest program to compile. :func:`jaxnm.masks.layers.solve_tiles` passes
``compact=False`` to a solver that takes it (:func:`takes_compact`) instead of ``vmap``-ing
it over single tiles, which computes the same but costs far more to trace.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable, Mapping
from typing import Literal

import jax

from jaxnm.masks import device_exact, exact, exhaustive, greedy

Solver = Callable[[jax.Array, int], jax.Array]
"""``solve(scores: float32 (B, m, m), n: int) -> bool (B, m, m)``."""

MaskMethod = Literal["auto", "greedy", "exact", "exact_device", "exhaustive"]
"""The names of the built-in solvers, the keys of :data:`SOLVERS`."""


def auto(scores: jax.Array, n: int, *, compact: bool = True) -> jax.Array:
    """The ``"auto"`` method: ``"exhaustive"`` (optimal) where the tile patterns are few
    (at most :data:`jaxnm.masks.exhaustive.AUTO_MAX_PATTERNS`, e.g. 1:2, 2:4, 1:4, 3:4),
    ``"greedy"`` otherwise. Same contract as every solver; ``compact`` goes to greedy
    (the enumeration has no rounds to compact)."""
    m = scores.shape[-1]
    if exhaustive.pattern_count_at_most(n, m, exhaustive.AUTO_MAX_PATTERNS):
        return exhaustive.solve(scores, n)
    return greedy.solve(scores, n, compact=compact)


SOLVERS: Mapping[str, Solver] = types.MappingProxyType(
    {
        "auto": auto,
        "greedy": greedy.solve,
        "exact": exact.solve,
        "exact_device": device_exact.solve,
        "exhaustive": exhaustive.solve,
    }
)
"""Read-only mapping of the built-in solvers by :data:`MaskMethod` name:

* ``"greedy"``: jittable, on device: greedy + repair + a few rounds of cycle cancelling
  (>= 99.9% of the optimum on Gaussian weights);
* ``"exact"``: optimal, min-cost flow on the host (OR-Tools, ``pip install jaxnm[exact]``)
  through ``jax.pure_callback``;
* ``"exact_device"``: optimal, jittable, on device: cycle cancelling to convergence;
* ``"exhaustive"``: optimal by enumerating every tile pattern, where they are few;
* ``"auto"``: :func:`auto`.
"""

assert set(SOLVERS) == set(typing.get_args(MaskMethod))


def resolve_solver(method: MaskMethod | Solver) -> Solver:
    """The solver a ``method`` argument names: a :data:`SOLVERS` key or a solver callable.

    Raises:
      ValueError: an unknown name (the message lists :data:`SOLVERS`).
      TypeError: neither a string nor a callable.
    """
    if isinstance(method, str):
        try:
            return SOLVERS[method]
        except KeyError:
            raise ValueError(
                f"`method` (={method!r}) must be one of {sorted(SOLVERS)} or a solver "
                "callable solve(scores, n)."
            ) from None
    if callable(method):
        return method
    raise TypeError(
        f"`method` must be a name in {sorted(SOLVERS)} or a solver callable "
        f"solve(scores, n), got {method!r}."
    )


def takes_compact(solve: Solver) -> bool:
    """Whether ``solve`` accepts the keyword ``compact`` (see the module docstring)."""
    try:
        parameters = inspect.signature(solve).parameters
    except (TypeError, ValueError):  # no signature (e.g. some builtins)
        return False
    compact = parameters.get("compact")
    return compact is not None and compact.kind in (
        inspect.Parameter.KEYWORD_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
    )
