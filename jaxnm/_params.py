"""Parameter paths and the selection rule: which leaves of a params pytree are sparsified.

A *path* names a leaf of a params pytree as a tuple of plain names: dict keys and attribute
names (str), sequence indices (int), e.g. ``("layers", 0, "kernel")``. ``include``
predicates receive these tuples; errors print them with :func:`format_path`
(``"layers/0/kernel"``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

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
        shape = np.shape(leaf)
        if not path or path[-1] != "kernel" or len(shape) < 2:
            return False
        if transposable:
            return shape[-1] % m == 0 and shape[-2] % m == 0
        return shape[-2] % m == 0

    return include


def select_leaves(params: Any, select: Include, m: int, transposable: bool) -> Any:
    """Pytree matching ``params``: True for the sparsified leaves, None for the others.

    Raises:
      ValueError: a leaf ``select`` chooses that is not floating or cannot be tiled by ``m``
        (the message names its path).
    """

    def one(path, leaf):
        names = key_path_names(path)
        if not select(names, leaf):
            return None
        shape = tuple(np.shape(leaf))
        where = f"parameter `{format_path(names)}` (shape {shape})"
        if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
            raise ValueError(f"{where} is selected by `include` but is not floating.")
        if len(shape) < 2:
            raise ValueError(f"{where} is selected by `include` but has rank < 2.")
        rows, cols = shape[-2:]
        if rows % m or (transposable and cols % m):
            need = "its last two axes" if transposable else "its axis -2"
            raise ValueError(
                f"{where} is selected by `include` but {need} are not multiples of m={m}; "
                "exclude it with `include` or pad it."
            )
        return True

    return jax.tree_util.tree_map_with_path(one, params)
