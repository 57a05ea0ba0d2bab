"""The state of :func:`jaxnm.sparsify` and the readers of it: :class:`SparsifyState`,
:func:`find_state`, :func:`current_masks`."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxnm._params import KernelView, Path, Skipped, key_path_names
from jaxnm.masks.packing import unpack


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SparsifyState:
    """State of :func:`jaxnm.sparsify`.

    A frozen dataclass pytree rather than a NamedTuple because the group size ``m`` must
    stay static (it fixes the unpacked shape) and must travel with the masks through
    ``nnx.Optimizer``, orbax and optax wrappers.

    Attributes:
      count: int32 scalar, number of updates applied so far.
      masks: pytree matching the params: for every sparsified leaf ``(..., R, C)`` its mask
        packed to ``(..., R // m, C)`` unsigned words (see :mod:`jaxnm.masks.packing`;
        groups along axis ``-2``); ``None`` for parameters that are not sparsified.
      n: kept per group (static).
      m: the group size (static).
      transposable: whether the masks are transposable N:M (static).
      skipped: the parameters left dense at ``init``, each with the reason (static).
      views: ``(path, KernelView, shape)`` of the sparsified kernels whose masks are N:M on
        a flattened ``(in, out)`` view (``LinearGeneral`` kernels of rank > 2; static): their
        packed masks are those of the 2-D view; :func:`unpack_leaf` gives them the kernel's
        ``shape`` back.
    """

    count: jax.Array
    masks: Any
    n: int = dataclasses.field(metadata=dict(static=True))
    m: int = dataclasses.field(metadata=dict(static=True))
    transposable: bool = dataclasses.field(metadata=dict(static=True))
    skipped: tuple[Skipped, ...] = dataclasses.field(metadata=dict(static=True))
    views: tuple[tuple[Path, KernelView, tuple[int, ...]], ...] = dataclasses.field(
        default=(), metadata=dict(static=True)
    )

    def kernel_shape(self, path: Path) -> tuple[int, ...] | None:
        """The shape of the kernel at ``path`` if its mask is stored as a flattened view."""
        for view_path, _, shape in self.views:
            if view_path == path:
                return shape
        return None


def unpack_leaf(bits, state: SparsifyState, path: Path) -> jax.Array:
    """The bool mask of the sparsified parameter at ``path`` (as ``include`` receives it)
    from its packed ``bits`` (an array or NNX Variable) in ``state``: unpacked, and reshaped
    to the kernel's shape when it is stored as a flattened view."""
    mask = unpack(jnp.asarray(variable_value(bits)), state.m)
    shape = state.kernel_shape(path)
    return mask if shape is None else mask.reshape(shape)


def find_states(opt_state: Any) -> list[SparsifyState]:
    """Every :class:`SparsifyState` inside an optimizer state, in tree order.

    Searches any nesting: ``optax.chain`` tuples, ``optax.MultiSteps``,
    ``optax.inject_hyperparams``, ``optax.masked``, ``optax.multi_transform`` (one state
    per sparse group), ``nnx.Optimizer`` and its ``opt_state``.

    Raises:
      ValueError: none found; the message says how to restore an orbax checkpoint that lost
        the state's type.
    """
    found = [
        leaf
        for leaf in jax.tree_util.tree_leaves(
            opt_state, is_leaf=lambda x: isinstance(x, SparsifyState)
        )
        if isinstance(leaf, SparsifyState)
    ]
    if not found:
        raise ValueError(
            "`opt_state` must contain a jaxnm.sparsify state, found 0. If it was restored "
            "from an orbax checkpoint without a target, the restore returned plain dicts and "
            "lost the state's type: restore with a target instead, e.g. "
            "`ckpt.restore(path, jax.tree.map(ocp.utils.to_shape_dtype_struct, "
            "tx.init(params)))` (for NNX: `nnx.state((model, optimizer))` as the target)."
        )
    return found


def find_state(opt_state: Any) -> SparsifyState:
    """The one :class:`SparsifyState` inside an optimizer state (see :func:`find_states`).

    Raises:
      ValueError: none, or more than one (e.g. two sparse groups of
        ``optax.multi_transform``: use :func:`find_states`).
    """
    found = find_states(opt_state)
    if len(found) != 1:
        raise ValueError(
            f"`opt_state` must contain exactly one jaxnm.sparsify state, found {len(found)}; "
            "use jaxnm.find_states for several."
        )
    return found[0]


def current_masks(opt_state: Any) -> Any:
    """The current masks held by :func:`sparsify` in an optimizer state.

    Args:
      opt_state: the state of an optimizer that chains :func:`sparsify` (any nesting; see
        :func:`find_states`). Several states (parameter groups of ``optax.multi_transform``
        or ``optax.masked``, each with its own ``n:m``) are merged.

    Returns:
      pytree matching the params the optimizer was initialised with: a bool mask of each
      sparsified parameter's shape (N:M along axis ``-2``, or transposable over the last two
      axes), ``None`` for the other parameters (also those an optax wrapper masked out).
      These are the masks of the next forward pass.
    """
    merged = None
    for state in find_states(opt_state):
        flat, treedef = jax.tree_util.tree_flatten_with_path(state.masks, is_leaf=is_mask_leaf)
        masks = [
            None if is_unmasked(bits) else unpack_leaf(bits, state, key_path_names(path))
            for path, bits in flat
        ]
        if merged is None:
            merged, merged_def = masks, treedef
            continue
        if treedef.num_leaves != merged_def.num_leaves:
            raise ValueError("the jaxnm.sparsify states in `opt_state` hold different params.")
        for i, mask in enumerate(masks):
            if mask is not None and merged[i] is not None:
                raise ValueError("two jaxnm.sparsify states in `opt_state` mask one parameter.")
            merged[i] = mask if merged[i] is None else merged[i]
    return jax.tree_util.tree_unflatten(merged_def, merged)


def sparse_leaves(opt_state: Any) -> list[tuple[Path, Any, SparsifyState]]:
    """``(path, packed bits, state)`` of every sparsified parameter of every sparsify state
    in ``opt_state`` (paths as ``include`` receives them; bits may be NNX Variables)."""
    out = []
    for state in find_states(opt_state):
        flat, _ = jax.tree_util.tree_flatten_with_path(state.masks, is_leaf=is_mask_leaf)
        out += [(key_path_names(p), bits, state) for p, bits in flat if not is_unmasked(bits)]
    return out


def is_mask_leaf(x) -> bool:
    """Leaves of a packed-mask tree: packed arrays, None, ``MaskedNode``, NNX Variables."""
    return x is None or isinstance(x, optax.MaskedNode) or is_variable(x)


def is_unmasked(bits) -> bool:
    """Whether a packed-mask leaf stands for a dense (or optax-masked-out) parameter."""
    bits = variable_value(bits)
    return bits is None or isinstance(bits, optax.MaskedNode)


def map_masks(fn: Callable, masks: Any, *rest: Any) -> Any:
    """Maps ``fn`` over the non-None leaves of ``masks`` (and the matching leaves of
    ``rest``); None leaves stay None."""
    return jax.tree.map(
        lambda mask, *xs: None if mask is None else fn(mask, *xs),
        masks,
        *rest,
        is_leaf=lambda x: x is None,
    )


def is_variable(x) -> bool:
    """Whether ``x`` is a Flax NNX Variable (``nnx.Optimizer`` wraps its state in them)."""
    return callable(getattr(x, "get_value", None))


def variable_value(x):
    """The value inside a Flax NNX Variable (may be None), or ``x`` itself."""
    return x.get_value() if is_variable(x) else x


def variable_array(x) -> jax.Array:
    """:func:`variable_value` as a jax array."""
    return jnp.asarray(variable_value(x))
