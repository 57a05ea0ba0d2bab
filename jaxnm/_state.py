"""The state of :func:`jaxnm.sparsify` and the readers of it: :class:`SparsifyState`,
:func:`find_state`, :func:`current_masks`."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

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
      m: the group size (static).
    """

    count: jax.Array
    masks: Any
    m: int = dataclasses.field(metadata=dict(static=True))


def find_state(opt_state: Any) -> SparsifyState:
    """The one :class:`SparsifyState` inside an optimizer state.

    Searches any nesting: ``optax.chain`` tuples, ``optax.MultiSteps``,
    ``optax.inject_hyperparams``, ``nnx.Optimizer.opt_state``.

    Raises:
      ValueError: no :class:`SparsifyState`, or more than one.
    """
    found = [
        leaf
        for leaf in jax.tree_util.tree_leaves(
            opt_state, is_leaf=lambda x: isinstance(x, SparsifyState)
        )
        if isinstance(leaf, SparsifyState)
    ]
    if len(found) != 1:
        raise ValueError(
            f"`opt_state` must contain exactly one jaxnm.sparsify state, found {len(found)}."
        )
    return found[0]


def current_masks(opt_state: Any) -> Any:
    """The current masks held by :func:`sparsify` in an optimizer state.

    Args:
      opt_state: the state of an optimizer that chains :func:`sparsify` (any nesting; see
        :func:`find_state`).

    Returns:
      pytree matching the params the optimizer was initialised with: a bool mask of each
      sparsified parameter's shape (N:M along axis ``-2``, or transposable over the last two
      axes), ``None`` for the other parameters. These are the masks of the next forward pass.
    """
    state = find_state(opt_state)

    def one(bits):
        bits = variable_value(bits)
        return None if bits is None else unpack(jnp.asarray(bits), state.m)

    return jax.tree.map(one, state.masks, is_leaf=lambda x: x is None or is_variable(x))


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
