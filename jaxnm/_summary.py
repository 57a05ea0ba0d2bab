"""What is sparse: :func:`sparsity_summary`, one row per parameter."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from jaxnm._params import Path, format_path
from jaxnm._state import find_states, sparse_leaves, unpack_leaf


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
    """

    path: Path
    shape: tuple[int, ...]
    n: int | None
    m: int | None
    transposable: bool | None
    density: float
    reason: str = ""

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
        cells = [[cell(r) for _, cell in COLUMNS] for r in self.rows]
        headers = [h for h, _ in COLUMNS]
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


def sparsity_summary(opt_state: Any) -> SparsitySummary:
    """Per parameter: path, shape, ``n:m`` (``-T`` when transposable), the current density,
    and for dense parameters why they are dense.

    Args:
      opt_state: an optimizer state containing :func:`jaxnm.sparsify` state(s): plain
        optax or a Linen training's ``opt_state``, an ``nnx.Optimizer`` or its
        ``opt_state``; several sparse groups (``optax.multi_transform``) are listed
        together. For an NNX model itself see :func:`jaxnm.nnx.sparsity_summary`.

    Returns:
      a :class:`SparsitySummary`; ``print(summary)`` shows the table.

    Raises:
      ValueError: ``opt_state`` holds no sparsify state.

    Example:
      >>> import jax.numpy as jnp, jaxnm
      >>> params = {"a": {"kernel": jnp.ones((8, 8))}, "b": {"kernel": jnp.ones((6, 8))}}
      >>> print(jaxnm.sparsity_summary(jaxnm.sparsify(2, 4).init(params)))
      parameter  shape   n:m    density  dense because
      a/kernel   (8, 8)  2:4-T  0.500
      b/kernel   (6, 8)  -      1.000    axes (6, 8) not multiples of m=4
      1 of 2 parameters sparse (64 of 112 weights); 0.714 of all weights kept
    """
    sparse = []
    for path, bits, state in sparse_leaves(opt_state):
        mask = np.asarray(unpack_leaf(bits, state, path))
        row = SummaryRow(path, mask.shape, state.n, state.m, state.transposable, float(mask.mean()))
        sparse.append(row)
    dense = []
    for state in find_states(opt_state):
        dense += [
            SummaryRow(s.path, s.shape, None, None, None, 1.0, s.reason) for s in state.skipped
        ]
    return SparsitySummary(tuple(sparse + dense))
