"""What is sparse: :func:`sparsity_summary`, one row per parameter."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from jaxnm._params import Path, format_path, key_path_names
from jaxnm._state import find_states, is_variable, sparse_leaves, unpack_leaf, variable_value
from jaxnm.masks.certificate import certify
from jaxnm.masks.scores import importance


@dataclasses.dataclass(frozen=True)
class SummaryRow:
    """One parameter of a :class:`SparsitySummary`.

    Attributes:
      path: the parameter's path, as ``include`` receives it.
      shape: its shape.
      n: kept per group, or None when the parameter is dense.
      m: group size, or None when dense.
      transposable: whether its mask is transposable N:M, or None when dense.
      density: fraction of weights the current mask keeps (1.0 for a dense parameter or
        during a dense phase of the schedule).
      reason: why a dense parameter is dense ("" for sparse ones).
      certified: a proven lower bound on the fraction of the best achievable retained
        ``|w|`` that the mask keeps (1.0: provably optimal); None when not computed (see
        :func:`sparsity_summary`'s ``params``), for dense parameters and during a dense
        phase. Transposable masks: ``sum(value) / sum(bound)`` of
        :func:`jaxnm.masks.certify` (the LP-dual bound per tile, no exact solve); N:M
        masks: retained over the top-``n`` per group, exact.
    """

    path: Path
    shape: tuple[int, ...]
    n: int | None
    m: int | None
    transposable: bool | None
    density: float
    reason: str = ""
    certified: float | None = None

    @property
    def sparse(self) -> bool:
        return self.m is not None


def _nm(row: SummaryRow) -> str:
    if not row.sparse:
        return "-"
    return f"{row.n}:{row.m}" + ("-T" if row.transposable else "")


# (header, cell) of each table column; a new column is one more entry.
COLUMNS: tuple[tuple[str, Callable[[SummaryRow], str]], ...] = (
    ("parameter", lambda r: format_path(r.path)),
    ("shape", lambda r: str(r.shape)),
    ("n:m", _nm),
    ("density", lambda r: f"{r.density:.3f}"),
    ("dense because", lambda r: r.reason),
)
#: The column :func:`sparsity_summary` adds when given the params.
CERTIFIED_COLUMN: tuple[str, Callable[[SummaryRow], str]] = (
    "certified >=",
    lambda r: "-" if r.certified is None else f"{r.certified:.6f}",
)


@dataclasses.dataclass(frozen=True)
class SparsitySummary:
    """What :func:`jaxnm.sparsify` made sparse; ``str()`` is a table.

    Attributes:
      rows: one :class:`SummaryRow` per parameter, sparse ones first (tree order).
    """

    rows: tuple[SummaryRow, ...]

    @property
    def sparse(self) -> tuple[SummaryRow, ...]:
        return tuple(r for r in self.rows if r.sparse)

    @property
    def dense(self) -> tuple[SummaryRow, ...]:
        return tuple(r for r in self.rows if not r.sparse)

    def __str__(self) -> str:
        columns = COLUMNS
        if any(r.certified is not None for r in self.rows):
            columns = (*COLUMNS[:-1], CERTIFIED_COLUMN, COLUMNS[-1])
        cells = [[cell(r) for _, cell in columns] for r in self.rows]
        headers = [h for h, _ in columns]
        widths = [max(len(x) for x in col) for col in zip(headers, *cells, strict=False)]
        lines = [
            "  ".join(x.ljust(w) for x, w in zip(line, widths, strict=True)).rstrip()
            for line in [headers, *cells]
        ]
        sparse_size = sum(int(np.prod(r.shape)) for r in self.sparse)
        total = sum(int(np.prod(r.shape)) for r in self.rows)
        kept = sum(r.density * int(np.prod(r.shape)) for r in self.rows)
        lines.append(
            f"{len(self.sparse)} of {len(self.rows)} parameters sparse "
            f"({sparse_size} of {total} weights); {kept / max(total, 1):.3f} of all weights kept"
        )
        return "\n".join(lines)


def sparsity_summary(opt_state: Any, params: Any = None) -> SparsitySummary:
    """Per parameter: path, shape, ``n:m`` (``-T`` when transposable), the current density,
    and for dense parameters why they are dense; with ``params``, also how close each mask
    is to the best possible one (the "certified >=" column).

    Args:
      opt_state: an optimizer state containing :func:`jaxnm.sparsify` state(s): plain
        optax or a Linen training's ``opt_state``, an ``nnx.Optimizer`` or its
        ``opt_state``; several sparse groups (``optax.multi_transform``) are listed
        together. For an NNX model itself see :func:`jaxnm.nnx.sparsity_summary`.
      params: optional, the dense params the masks were solved from (the tree passed to
        ``init`` / ``update``: plain arrays, or ``nnx.State`` of Variables). When given,
        each sparse row's ``certified`` is a proven lower bound on the fraction of the
        optimal retained ``|w|`` its mask keeps (:attr:`SummaryRow.certified`: the LP-dual
        certificate of :func:`jaxnm.masks.certify` for transposable masks, so a greedy
        mask's gap per layer shows without an exact solve). Off by default: it runs the
        certificate (a jitted Bellman–Ford per layer shape) on every sparse weight.

    Returns:
      a :class:`SparsitySummary`; ``print(summary)`` shows the table.

    Raises:
      ValueError: ``opt_state`` holds no sparsify state, or ``params`` lacks a sparsified
        parameter or has it in another shape.

    Example:
      >>> import jax.numpy as jnp, jaxnm
      >>> params = {"a": {"kernel": jnp.ones((8, 8))}, "b": {"kernel": jnp.ones((6, 8))}}
      >>> print(jaxnm.sparsity_summary(jaxnm.sparsify(2, 4).init(params)))
      parameter  shape   n:m    density  dense because
      a/kernel   (8, 8)  2:4-T  0.500
      b/kernel   (6, 8)  -      1.000    axes (6, 8) not multiples of m=4
      1 of 2 parameters sparse (64 of 112 weights); 0.714 of all weights kept
    """
    weights = None if params is None else _leaves_by_path(params)
    sparse = []
    for path, bits, state in sparse_leaves(opt_state):
        mask = np.asarray(unpack_leaf(bits, state, path))
        certified = None
        if weights is not None:
            certified = _certified(_weight(weights, path, mask.shape), mask, bits, state)
        row = SummaryRow(
            path,
            mask.shape,
            state.n,
            state.m,
            state.transposable,
            float(mask.mean()),
            certified=certified,
        )
        sparse.append(row)
    dense = []
    for state in find_states(opt_state):
        dense += [
            SummaryRow(s.path, s.shape, None, None, None, 1.0, s.reason) for s in state.skipped
        ]
    return SparsitySummary(tuple(sparse + dense))


def _leaves_by_path(params: Any) -> dict[Path, Any]:
    flat, _ = jax.tree_util.tree_flatten_with_path(params, is_leaf=is_variable)
    return {key_path_names(p): variable_value(x) for p, x in flat}


def _weight(weights: dict[Path, Any], path: Path, shape: tuple[int, ...]) -> np.ndarray:
    if path not in weights:
        raise ValueError(f"`params` has no parameter `{format_path(path)}` (a sparsified one).")
    w = np.asarray(weights[path])
    if w.shape != shape:
        raise ValueError(
            f"`params` has `{format_path(path)}` of shape {w.shape}; its mask is {shape}."
        )
    return w


#: Jitted once per layer shape and pattern.
_certify = jax.jit(certify, static_argnums=(2, 3))


def _certified(w: np.ndarray, mask: np.ndarray, bits: Any, state: Any) -> float | None:
    """Proven lower bound on the fraction of the optimal retained ``|w|`` that ``mask``
    (the unpacked ``bits``, in the kernel's shape) keeps, or None for a mask that is not N:M
    (a dense phase).

    The mask and ``w`` are taken on the stored 2-D view (the shape ``bits`` unpacks to;
    kernels with a
    :class:`jaxnm.KernelView`). Transposable: ``1 - sum(gap) / sum(value)`` of the tiles'
    certificates (``optimum - retained <= sum(gap)``, ``optimum >= sum(value)``); N:M:
    retained over the top-``n`` of every group. Sums are exact, then rounded outwards
    (``math.fsum``, ``nextafter``), so the result never overstates the truth."""
    n, m = state.n, state.m
    *lead, rows, cols = np.shape(variable_value(bits))
    mask = mask.reshape(*lead, rows * m, cols)  # unpack's shape: no second unpack
    w = w.reshape(mask.shape)
    if state.transposable:
        cert = _certify(w, mask, n, m)
        gap = np.asarray(cert.gap, np.float64).ravel()
        if not np.all(np.isfinite(gap)):
            return None  # some tile does not keep exactly n per row and column
        # optimum - retained <= sum(gap) and optimum >= retained >= sum(value), so the
        # fraction is >= 1 - sum(gap) / sum(value): exactly 1 when every tile is proven.
        lost = math.fsum(gap)
        if lost == 0.0:
            return 1.0
        lost = np.nextafter(lost, np.inf)
        value = np.nextafter(math.fsum(np.asarray(cert.value, np.float64).ravel()), 0.0)
        return float(np.nextafter(max(0.0, 1.0 - lost / value), 0.0)) if value > 0 else 0.0
    groups = np.moveaxis(mask, -2, -1).reshape(-1, m)
    if not np.all(groups.sum(-1) == n):
        return None
    scores = np.maximum(np.asarray(importance(w), np.float64), 0.0)
    scores = np.moveaxis(scores, -2, -1).reshape(-1, m)
    value = math.fsum((scores * groups).ravel())
    bound = math.fsum(np.sort(scores, axis=-1)[:, m - n :].ravel())
    if not math.isfinite(bound):
        return None  # an infinite weight: the fraction is not a number
    if value >= bound:
        return 1.0  # optimal (also: nothing to keep, every mask is optimal)
    return float(np.nextafter(value / bound, 0.0))
