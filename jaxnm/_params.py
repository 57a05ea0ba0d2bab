"""Parameter paths and the selection rule: which leaves of a params pytree are sparsified.

A *path* names a leaf of a params pytree as a tuple of plain names: dict keys and attribute
names (str), sequence indices (int), e.g. ``("layers", 0, "kernel")``. ``include``
predicates receive these tuples; errors print them with :func:`format_path`
(``"layers/0/kernel"``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxnm._checks import tiling_problem

Path = tuple[Any, ...]
Include = Callable[[Path, jax.Array], bool]


def key_path_names(path: tuple) -> Path:
    """Plain names of a ``jax.tree_util`` key path: dict keys and attribute names as given
    (str), sequence indices as int; the ``value`` attribute of Flax NNX Variables is dropped
    so that paths agree between ``nnx.State`` of Variables and of plain arrays."""
    names = []
    for entry in path:
        if isinstance(entry, jax.tree_util.DictKey):
            names.append(entry.key)
        elif isinstance(entry, jax.tree_util.SequenceKey):
            names.append(entry.idx)
        elif isinstance(entry, jax.tree_util.GetAttrKey):
            if entry.name != "value":
                names.append(entry.name)
        elif isinstance(entry, jax.tree_util.FlattenedIndexKey):
            names.append(entry.key)
        else:
            names.append(str(entry))
    return tuple(names)


def format_path(path: Path) -> str:
    """``("layers", 0, "kernel") -> "layers/0/kernel"``."""
    return "/".join(str(p) for p in path)


def default_include(m: int, transposable: bool) -> Include:
    """The default ``include`` of :func:`jaxnm.sparsify`: leaves named ``"kernel"`` of rank
    >= 2 whose last two axes tile by ``m`` (only axis ``-2`` when ``transposable=False``)."""

    def include(path: Path, leaf) -> bool:
        return default_skip_reason(path, leaf, m, transposable) is None

    return include


def default_skip_reason(path: Path, leaf, m: int, transposable: bool) -> str | None:
    """Why the default selection leaves ``leaf`` dense (None: it is selected)."""
    if not path or path[-1] != "kernel":
        return "not named 'kernel'"
    return tiling_problem(np.shape(leaf), m, transposable)


class Skipped(NamedTuple):
    """A parameter left dense by the selection."""

    path: Path  # as ``include`` receives it
    shape: tuple[int, ...]
    reason: str


def select_leaves(
    params: Any, include: Include | None, m: int, transposable: bool
) -> tuple[Any, tuple[Skipped, ...]]:
    """Which leaves of ``params`` are sparsified.

    Args:
      params: the params pytree (leaves are arrays; optax's ``MaskedNode`` subtrees are
        ignored).
      include: the user's predicate, or None for :func:`default_include`.
      m: group size.
      transposable: whether both of the last two axes must tile by ``m``.

    Returns:
      ``(selected, skipped)``: a pytree matching ``params`` with True for the sparsified
      leaves and None for the others, and the leaves left dense with the reason.

    Raises:
      ValueError: a leaf ``include`` chooses that is not floating or cannot be tiled by ``m``,
        or an explicit ``include`` that selects nothing (the messages name paths as the
        tuples ``include`` receives).

    Warns:
      UserWarning: the default selection selects nothing (every parameter trains dense).
    """
    skipped: list[Skipped] = []

    def one(path, leaf):
        names = key_path_names(path)
        shape = tuple(np.shape(leaf))
        if include is None:
            reason = default_skip_reason(names, leaf, m, transposable)
            if reason is not None:
                skipped.append(Skipped(names, shape, reason))
                return None
            return True
        if not include(names, leaf):
            skipped.append(Skipped(names, shape, "excluded by `include`"))
            return None
        where = f"parameter `{format_path(names)}` (path {names!r}, shape {shape})"
        if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
            raise ValueError(f"{where} is selected by `include` but is not floating.")
        problem = tiling_problem(shape, m, transposable)
        if problem is not None:
            raise ValueError(
                f"{where} is selected by `include` but does not tile: {problem}; "
                "exclude it with `include` or pad it."
            )
        return True

    selected = jax.tree_util.tree_map_with_path(one, params)
    if skipped and not any(x is True for x in jax.tree.leaves(selected)):
        listing = "; ".join(f"{s.path!r} {s.shape}: {s.reason}" for s in skipped[:12])
        more = f" (and {len(skipped) - 12} more)" if len(skipped) > 12 else ""
        if include is not None:
            raise ValueError(
                "`include` selects no parameter, so nothing would be sparse. It receives "
                "`path` as a tuple of names and indices, e.g. ('dense', 'kernel'); compare "
                "`jaxnm.format_path(path) == 'dense/kernel'` for the string form. "
                f"Parameters: {listing}{more}."
            )
        warnings.warn(
            f"jaxnm.sparsify selects no parameter (m={m}, transposable={transposable}): "
            f"everything trains dense. Parameters: {listing}{more}. Pass "
            "`include=lambda path, leaf: ...` to choose them.",
            stacklevel=3,
        )
    return selected, tuple(skipped)
