"""Parameter paths and the selection rule: which leaves of a params pytree are sparsified.

A *path* names a leaf of a params pytree as a tuple of plain names: dict keys and attribute
names (str), sequence indices (int), e.g. ``("layers", 0, "kernel")``. ``include``
predicates receive these tuples; errors print them with :func:`format_path`
(``"layers/0/kernel"``).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxnm._checks import tiling_problem

Path = tuple[Any, ...]


@dataclasses.dataclass(frozen=True)
class KernelView:
    """How a kernel of rank > 2 with several contracted or output axes carries its N:M mask:
    its leading ``in_axes`` axes are contracted and its other axes are outputs (a Flax
    ``LinearGeneral`` / ``DenseGeneral`` kernel, e.g. an attention projection ``(in, heads,
    head_dim)`` has ``in_axes=1``, its output projection ``(heads, head_dim, out)``
    ``in_axes=2``). The mask is N:M (or transposable N:M) on the flattened 2-D view
    ``(prod(in shape), prod(out shape))``, i.e. grouped along the contraction.

    An ``include`` predicate may return one instead of ``True``; :class:`jaxnm.nnx.Optimizer`
    sets it for ``nnx.LinearGeneral`` kernels (the Variable metadata ``KERNEL_VIEW``).
    """

    in_axes: int

    def __post_init__(self):
        if not isinstance(self.in_axes, int) or isinstance(self.in_axes, bool) or self.in_axes < 1:
            raise ValueError(f"`in_axes` must be a positive int, got {self.in_axes!r}.")

    def matrix_shape(self, shape: tuple[int, ...]) -> tuple[int, int]:
        """The flattened ``(in, out)`` view of a kernel of ``shape``."""
        if not 0 < self.in_axes < len(shape):
            raise ValueError(
                f"KernelView(in_axes={self.in_axes}) needs a kernel of rank > {self.in_axes}, "
                f"got shape {shape}."
            )
        return math.prod(shape[: self.in_axes]), math.prod(shape[self.in_axes :])


KERNEL_VIEW = "jaxnm_kernel_view"
"""Name of the NNX Variable metadata holding a kernel's :class:`KernelView`."""

ATTENTION_VIEWS = {
    "query": KernelView(1),
    "key": KernelView(1),
    "value": KernelView(1),
    "out": KernelView(2),
}
"""The views the default selection gives the rank-3 ``kernel`` of a module named like Flax's
attention projections (``nn.MultiHeadDotProductAttention`` / ``nnx.MultiHeadAttention``:
``query``/``key``/``value`` ``(in, heads, head_dim)``, ``out`` ``(heads, head_dim, out)``), so
that a stock attention's masks group along its contraction, not along ``heads``."""


def attention_view(path: Path, shape: tuple[int, ...]) -> KernelView | None:
    """:data:`ATTENTION_VIEWS`' view of a rank-3 ``.../query|key|value|out/kernel``, or None."""
    if len(shape) == 3 and len(path) >= 2 and path[-1] == "kernel":
        return ATTENTION_VIEWS.get(path[-2]) if isinstance(path[-2], str) else None
    return None


Include = Callable[[Path, jax.Array], "bool | KernelView"]


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
    >= 2 whose last two axes tile by ``m`` (only axis ``-2`` when ``transposable=False``).

    The rank-3 kernels of Flax's attention projections get their :data:`ATTENTION_VIEWS`
    view (returned instead of ``True``), so passing this predicate explicitly selects what the
    default selection (``include=None``) does; :func:`select_leaves` also reads NNX
    Variables' :class:`KernelView` metadata, which a predicate cannot see."""

    def include(path: Path, leaf) -> bool | KernelView:
        view = attention_view(path, tuple(np.shape(leaf)))
        if default_skip_reason(path, leaf, m, transposable, view) is not None:
            return False
        return view or True

    return include


def default_skip_reason(
    path: Path, leaf, m: int, transposable: bool, view: KernelView | None = None
) -> str | None:
    """Why the default selection leaves ``leaf`` dense (None: it is selected)."""
    if not path or path[-1] != "kernel":
        return "not named 'kernel'"
    return view_tiling_problem(tuple(np.shape(leaf)), m, transposable, view)


def view_tiling_problem(
    shape: tuple[int, ...], m: int, transposable: bool, view: KernelView | None
) -> str | None:
    """:func:`jaxnm._checks.tiling_problem` of a kernel, on its flattened view if it has one."""
    if view is None:
        return tiling_problem(shape, m, transposable)
    if not 0 < view.in_axes < len(shape):
        return f"KernelView(in_axes={view.in_axes}) does not fit rank {len(shape)}"
    problem = tiling_problem(view.matrix_shape(shape), m, transposable)
    if problem is not None:
        return f"flattened (in, out) view {view.matrix_shape(shape)}: {problem}"
    return None


def kernel_views(params: Any) -> dict[Path, KernelView]:
    """The :class:`KernelView` metadata of the NNX Variables in ``params``, by path."""
    flat, _ = jax.tree_util.tree_flatten_with_path(
        params, is_leaf=lambda x: callable(getattr(x, "get_metadata", None))
    )
    views = {}
    for path, leaf in flat:
        get = getattr(leaf, "get_metadata", None)
        view = get().get(KERNEL_VIEW) if callable(get) else None
        if isinstance(view, KernelView):
            views[key_path_names(path)] = view
    return views


class Skipped(NamedTuple):
    """A parameter left dense by the selection."""

    path: Path  # as ``include`` receives it
    shape: tuple[int, ...]
    reason: str


def select_leaves(
    params: Any, include: Include | None, m: int, transposable: bool
) -> tuple[Any, tuple[Skipped, ...], tuple[tuple[Path, KernelView, tuple[int, ...]], ...]]:
    """Which leaves of ``params`` are sparsified, and on which view.

    Args:
      params: the params pytree (leaves are arrays; optax's ``MaskedNode`` subtrees are
        ignored; NNX Variables may carry a :class:`KernelView` as metadata).
      include: the user's predicate (returning a bool or a :class:`KernelView`), or None
        for :func:`default_include` (with the Variables' kernel views).
      m: group size.
      transposable: whether both axes of the (flattened) kernel must tile by ``m``.

    Returns:
      ``(selected, skipped, views)``: a pytree matching ``params`` with True for the
      sparsified leaves and None for the others; the leaves left dense with the reason; and
      ``(path, view, shape)`` of every selected kernel of rank > 2 masked on a flattened
      view.

    Raises:
      ValueError: a leaf ``include`` chooses that is not floating or cannot be tiled by ``m``,
        or an explicit ``include`` that selects nothing (the messages name paths as the
        tuples ``include`` receives).

    Warns:
      UserWarning: the default selection selects nothing (every parameter trains dense).
    """
    skipped: list[Skipped] = []
    views: list[tuple[Path, KernelView, tuple[int, ...]]] = []
    metadata_views = kernel_views(params) if include is None else {}

    def one(path, leaf):
        names = key_path_names(path)
        shape = tuple(np.shape(leaf))
        if include is None:
            view = metadata_views.get(names) or attention_view(names, shape)
            reason = default_skip_reason(names, leaf, m, transposable, view)
            if reason is not None:
                skipped.append(Skipped(names, shape, reason))
                return None
        else:
            chosen = include(names, leaf)
            if not chosen:
                skipped.append(Skipped(names, shape, "excluded by `include`"))
                return None
            view = chosen if isinstance(chosen, KernelView) else None
            where = f"parameter `{format_path(names)}` (path {names!r}, shape {shape})"
            if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
                raise ValueError(f"{where} is selected by `include` but is not floating.")
            problem = view_tiling_problem(shape, m, transposable, view)
            if problem is not None:
                raise ValueError(
                    f"{where} is selected by `include` but does not tile: {problem}; "
                    "exclude it with `include` or pad it."
                )
        if view is not None and (len(shape) > 2 or view.in_axes != 1):
            views.append((names, view, shape))
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
    return selected, tuple(skipped), tuple(views)
