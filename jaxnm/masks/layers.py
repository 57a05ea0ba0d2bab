"""Transposable masks of whole layers: every tile of a list of weights in one solver call.

A layer's transposable mask is its ``m x m`` tiles' masks, each depending on its tile only
(the solver contract: ``solve(scores: float32 (B, m, m), n) -> bool (B, m, m)``, see
:mod:`jaxnm.masks.solvers`). So a list of weights can be solved in two ways, with the
same masks:

* ``"flat"``: the tiles of every weight are concatenated into one ``(B, m, m)`` batch and
  solved by one solver call; one compiled solver serves a whole model, whatever its
  kernel shapes. With ``compact=True`` the batch goes to the solver as it is, so the
  greedy and ``exact_device`` solvers shrink it to the tiles still working (compaction);
  with ``compact=False`` there is no compaction (every tile runs as long as the slowest,
  but XLA compiles a fraction of the code): the solver gets the batch with
  ``compact=False`` if it takes that keyword (:func:`jaxnm.masks.solvers.takes_compact`),
  else it is ``vmap``-ed over single tiles.
* ``"grid"``: every weight keeps its tile grid ``(..., R // m, C // m)`` as ``vmap``-ed
  axes (no compaction). A sharded weight keeps its sharding: no tile leaves its device,
  while merging a sharded grid into one batch axis would make XLA gather the weight.

:func:`default_plan` picks ``"grid"`` wherever a weight may be sharded (more than one
device, or a sharding in the arrays' types) and ``"flat"`` otherwise; :func:`default_compact`
compacts only batches of at least :data:`COMPACT_MIN_TILES` tiles, measured by
``benchmarks/layer_masks.py`` (BENCHMARKS.md, "Layer masks").

:func:`layer_masks_packed` gives the masks bit-packed (:mod:`jaxnm.masks.packing`); on the
flat plan it packs the whole tile batch at once, which :func:`jaxnm.sparsify` uses so that
its train step compiles one packing for all kernels rather than one per kernel.

:func:`layer_masks_host` computes the same masks in NumPy for the solvers that have a host
twin (:func:`host_solver`: ``"greedy"``, and ``"auto"`` where it means greedy), with no XLA
compile: :func:`jaxnm.sparsify` solves its initial masks this way (BENCHMARKS.md,
"Start-up").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from jaxnm._checks import check_floating, check_nm, check_tileable
from jaxnm._sharding import explicit_sharding
from jaxnm.masks import exhaustive, greedy, greedy_host, solvers
from jaxnm.masks.packing import pack, packed_shape
from jaxnm.masks.scores import importance
from jaxnm.masks.solvers import Solver
from jaxnm.masks.tiles import from_tiles, to_tiles

HostSolver = Callable[[np.ndarray, int], np.ndarray]
"""``solve(scores: NumPy float32 (B, m, m), n: int) -> NumPy bool (B, m, m)``."""

Plan = Literal["flat", "grid"]
"""How the tiles of several weights reach the solver (see the module docstring)."""

#: Flat batches of at least this many tiles are solved compacted (``compact=True``).
#: Below it the uncompacted solve runs as fast or faster and compiles in a fraction of the
#: time (BENCHMARKS.md, "Layer masks").
COMPACT_MIN_TILES = 1 << 18


def default_plan(ws: Sequence[jax.Array]) -> Plan:
    """``"grid"`` if any of ``ws`` may be sharded, else ``"flat"``.

    A weight may be sharded when the process sees more than one device or when its type
    carries an ``Explicit`` mesh sharding. Under ``jit`` on an ``Auto`` mesh a tracer does
    not say how it is sharded, hence the device count.
    """
    if jax.device_count() > 1 or any(explicit_sharding(w) is not None for w in ws):
        return "grid"
    return "flat"


def default_compact(tiles: int) -> bool:
    """Whether a flat batch of ``tiles`` tiles is solved compacted (see
    :data:`COMPACT_MIN_TILES`)."""
    return tiles >= COMPACT_MIN_TILES


def solve_tiles(
    tiles: jax.Array, n: int, solve: Solver, *, compact: bool, keep_axes: bool = False
) -> jax.Array:
    """Solves a batch of tile scores with any number of batch axes.

    Args:
      tiles: float32 ``(..., m, m)`` tile scores (``-1`` marks NaN).
      n: kept per row and column of every tile (static int).
      solve: a solver ``solve(scores (B, m, m), n) -> bool (B, m, m)``.
      compact: pass all tiles to ``solve`` as one batch that the solver may compact
        (True), or solve without compaction (False): one batch with ``compact=False``
        where ``solve`` takes that keyword, else ``solve`` ``vmap``-ed over single tiles.
      keep_axes: keep the batch axes (``vmap`` over each of them, one tile per call, so
        their sharding is kept; ``compact`` is then ignored) instead of merging them into
        one batch (static).

    Returns:
      bool ``(..., m, m)``, each tile's mask: the same whatever ``compact`` and
      ``keep_axes``.
    """
    *lead, m, _ = tiles.shape
    if not keep_axes:
        flat = tiles.reshape(-1, m, m)
        if compact:
            return solve(flat, n).reshape(tiles.shape)
        if solvers.takes_compact(solve):
            return solve(flat, n, compact=False).reshape(tiles.shape)
        tiles = flat

    # One tile per call: the solver's default forms (its compile-cheap uncompacted forms
    # run slower on the large tile grids of sharded weights).
    def one(tile: jax.Array) -> jax.Array:
        return solve(tile[None], n)[0]

    for _ in tiles.shape[:-2]:
        one = jax.vmap(one)
    return one(tiles).reshape(*lead, m, m)


def layer_masks(
    ws: Sequence[jax.Array],
    n: int,
    m: int,
    solve: Solver,
    *,
    plan: Plan | None = None,
    compact: bool | None = None,
) -> list[jax.Array]:
    """Transposable N:M masks of several weights, all tiles solved by one solver call.

    Args:
      ws: floating arrays ``(..., R, C)`` (any shapes and float dtypes), ``R`` and ``C``
        multiples of ``m``; weights or non-negative scores. Leading axes are batch.
      n: kept per row and per column of every tile (static int).
      m: tile size (static int).
      solve: the solver, ``solve(scores: float32 (B, m, m), n) -> bool (B, m, m)``.
      plan: ``"flat"`` or ``"grid"`` (see the module docstring); None:
        :func:`default_plan`.
      compact: for ``plan="flat"``, solve the batch compacted; None:
        :func:`default_compact` of the batch size. Ignored by ``"grid"`` (never compacted).

    Returns:
      list of bool arrays, ``ws``'s shapes: the mask of each weight, identical whatever
      ``plan`` and ``compact`` (each tile's mask depends on that tile only).

    Raises:
      ValueError: bad ``n``/``m``/``plan``, a non-floating weight or one whose last two
        axes do not tile by ``m``.
    """
    return _layer_masks(ws, n, m, solve, plan=plan, compact=compact, packed=False)


def layer_masks_packed(
    ws: Sequence[jax.Array],
    n: int,
    m: int,
    solve: Solver,
    *,
    plan: Plan | None = None,
    compact: bool | None = None,
) -> list[jax.Array]:
    """:func:`layer_masks`, bit-packed: ``jaxnm.masks.packing.pack(mask, m)`` of every mask.

    With ``plan="flat"`` the flat batch of tiles is packed once, in the tile domain (an
    ``m x m`` tile's rows are one packing group, so its mask packs to ``m`` words, one per
    column), and each weight's packed mask is a slice of it reshaped, with no transpose:
    one small packing computation for all the weights instead of one per weight, which is
    most of what XLA compiles around the solver (BENCHMARKS.md, "Start-up"). ``"grid"``
    packs each weight's mask (``pack`` keeps its sharding).

    Args:
      ws, n, m, solve, plan, compact: as in :func:`layer_masks`.

    Returns:
      list of arrays ``(..., R // m, C)`` of :func:`~jaxnm.masks.packing.word_dtype`
      ``(m)``, the packed masks of ``ws``: equal to ``pack(layer_masks(ws, ...)[i], m)``.

    Raises:
      ValueError: as :func:`layer_masks`.
    """
    return _layer_masks(ws, n, m, solve, plan=plan, compact=compact, packed=True)


def _layer_masks(
    ws: Sequence[jax.Array],
    n: int,
    m: int,
    solve: Solver,
    *,
    plan: Plan | None,
    compact: bool | None,
    packed: bool,
) -> list[jax.Array]:
    """:func:`layer_masks` (``packed=False``) or :func:`layer_masks_packed` (True)."""
    n, m = check_nm(n, m)
    for i, w in enumerate(ws):
        check_floating(w, name=f"ws[{i}]")
        check_tileable(jnp.shape(w), m, name=f"ws[{i}]")
    if plan is None:
        plan = default_plan(ws)
    if plan not in ("flat", "grid"):
        raise ValueError(f"`plan` (={plan!r}) must be 'flat' or 'grid'.")
    finish = (lambda mask: pack(mask, m)) if packed else (lambda mask: mask)
    tiles = [to_tiles(importance(w), m) for w in ws]  # (..., R // m, C // m, m, m)
    if plan == "grid":
        return [
            finish(from_tiles(solve_tiles(t, n, solve, compact=False, keep_axes=True)))
            for t in tiles
        ]
    counts = [math.prod(t.shape[:-2]) for t in tiles]
    total = sum(counts)
    if total == 0:
        return [finish(jnp.zeros(jnp.shape(w), bool)) for w in ws]
    if compact is None:
        compact = default_compact(total)
    flat = jnp.concatenate([t.reshape(-1, m, m) for t in tiles])
    keep = solve_tiles(flat, n, solve, compact=compact)  # (B, m, m)
    if packed:
        keep = pack(keep, m)[:, 0]  # (B, m): a tile's rows are one group, a word per column
    out, start = [], 0
    for w, t, count in zip(ws, tiles, counts, strict=True):
        part = keep[start : start + count]
        if packed:  # (..., R // m, C // m, m) words -> (..., R // m, C)
            out.append(part.reshape(packed_shape(jnp.shape(w), m)))
        else:
            out.append(from_tiles(part.reshape(t.shape)))
        start += count
    return out


def host_solver(solve: Solver, n: int, m: int) -> HostSolver | None:
    """The NumPy twin of ``solve`` at ``n:m``, giving the same masks bit for bit, or None.

    ``"greedy"`` (:func:`jaxnm.masks.greedy.solve`) has one,
    :func:`jaxnm.masks.greedy_host.solve`, and so has ``"auto"`` where it resolves to
    greedy (4:8, 8:16, ...); the other solvers and solver callables have none.
    """
    if solve is greedy.solve:
        return greedy_host.solve
    if solve is solvers.auto and not exhaustive.pattern_count_at_most(
        n, m, exhaustive.AUTO_MAX_PATTERNS
    ):
        return greedy_host.solve
    return None


def layer_masks_host(
    ws: Sequence[np.ndarray], n: int, m: int, solve: HostSolver
) -> list[np.ndarray]:
    """:func:`layer_masks` on the host: the tiles of every weight in one NumPy solve.

    Args:
      ws: NumPy floating arrays ``(..., R, C)`` (any float dtype, bfloat16 included),
        ``R`` and ``C`` multiples of ``m``.
      n, m: the pattern (static ints).
      solve: a host solver (:func:`host_solver`).

    Returns:
      list of NumPy bool arrays, ``ws``'s shapes: the masks :func:`layer_masks` gives with
      the device twin of ``solve``.

    Raises:
      ValueError: bad ``n``/``m``, a non-floating weight or one that does not tile by ``m``.
    """
    n, m = check_nm(n, m)
    tiles = []
    for i, w in enumerate(ws):
        check_floating(w, name=f"ws[{i}]")
        check_tileable(np.shape(w), m, name=f"ws[{i}]")
        s = np.abs(np.asarray(w).astype(np.float32))  # importance(), on the host
        s = np.where(np.isnan(s), np.float32(-1), s)
        *lead, rows, cols = s.shape
        tiles.append(np.swapaxes(s.reshape(*lead, rows // m, m, cols // m, m), -3, -2))
    counts = [math.prod(t.shape[:-2]) for t in tiles]
    flat = np.concatenate([t.reshape(-1, m, m) for t in tiles]) if tiles else None
    keep = solve(flat, n) if sum(counts) else np.zeros((0, m, m), bool)
    out, start = [], 0
    for w, t, count in zip(ws, tiles, counts, strict=True):
        grid = keep[start : start + count].reshape(t.shape)
        out.append(np.swapaxes(grid, -3, -2).reshape(np.shape(w)))
        start += count
    return out
