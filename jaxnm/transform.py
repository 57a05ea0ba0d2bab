"""``sparsify``: the optax transform that owns N:M masks and refreshes them during training.

Semantics (one step = one ``update`` call; ``count`` = steps done so far):

* The params stay dense and all of them train (straight-through). The *effective* weights
  are ``params ⊙ mask``: :func:`apply_masks` in a plain forward pass, or the N:M ops of
  :mod:`jaxnm.nnx` / :mod:`jaxnm.linen`, which read the masks from this state.
* The masks in the state are the masks of the *next* forward pass. ``init`` computes them
  from the initial params (or all ones when ``start_step > 0``). The update of step ``t``
  sets the masks for step ``c = t + 1``:

  - ``c < start_step``: dense (all ones);
  - ``start_step <= c < end_step``: sparse; at refresh steps
    (``(c - start_step) % refresh_every == 0``) the masks are recomputed from ``params`` —
    the params passed to this ``update``, i.e. those the gradient of step ``t`` was taken
    at — otherwise they are kept;
  - ``c >= end_step``: the masks freeze, or the run goes dense (all ones) with
    ``dense_tail=True``.

  The refresh is a ``lax.switch`` inside the compiled step: no recompilation and no host
  round trip (``method="exact"`` uses its solver's host callback).
* Position in an ``optax.chain``: **first**, before the optimizer, because ``srste`` adds
  the SR-STE term ``srste · (1 − mask) ⊙ params`` to the *gradient*. Apart from that term
  the transform passes updates through untouched and its masks depend only on ``params``
  and ``count``, so with ``srste=0`` any position gives identical results. With
  ``srste > 0`` in a later position the term would be added to the optimizer's output
  (the wrong scale and sign); this cannot be detected at run time, so keep it first.
"""

from __future__ import annotations

import dataclasses
import functools
import operator
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from jaxnm._checks import check_nm
from jaxnm._sharding import explicit_sharding
from jaxnm.mask_packing import pack, packed_shape, unpack, word_dtype
from jaxnm.masks.nm import nm_mask
from jaxnm.masks.tiles import from_tiles, to_tiles
from jaxnm.masks.transposable import transposable_mask

Path = tuple[Any, ...]
Include = Callable[[Path, jax.Array], bool]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SparsifyState:
    """State of :func:`sparsify`.

    A frozen dataclass pytree rather than a NamedTuple because the group size ``m`` must
    stay static (it fixes the unpacked shape) and must travel with the masks through
    ``nnx.Optimizer``, orbax and optax wrappers.

    Attributes:
      count: int32 scalar, number of updates applied so far.
      masks: pytree matching the params: for every sparsified leaf ``(..., R, C)`` its mask
        packed to ``(..., R // m, C)`` unsigned words (see :mod:`jaxnm.mask_packing`;
        groups along axis ``-2``); ``None`` for parameters that are not sparsified.
      m: the group size (static).
    """

    count: jax.Array
    masks: Any
    m: int = dataclasses.field(metadata=dict(static=True))


def sparsify(
    n: int,
    m: int,
    *,
    transposable: bool = True,
    method: str = "greedy",
    refresh_every: int = 40,
    start_step: int = 0,
    end_step: int | None = None,
    dense_tail: bool = False,
    srste: float | jax.Array = 0.0,
    include: Include | None = None,
) -> optax.GradientTransformationExtraArgs:
    """N:M sparse training as an optax transform; chain it *first*.

    ``tx = optax.chain(jaxnm.sparsify(2, 4), optax.adamw(1e-3))``, then use the effective
    weights ``jaxnm.apply_masks(params, jaxnm.masks(opt_state))`` in the forward pass (or
    the :mod:`jaxnm.nnx` / :mod:`jaxnm.linen` layers). See the module docstring for the
    schedule and the chain position.

    Args:
      n: kept per group (static int).
      m: group size, ``1 <= m <= 32`` (static int).
      transposable: transposable N:M masks over the last two axes (``(in, out)``; every
        ``m x m`` tile keeps ``n`` per row and column) if True, else N:M along axis ``-2``
        (``in``, the contraction axis of Flax kernels).
      method: transposable solver, as in :func:`jaxnm.transposable_mask` (``"greedy"``,
        ``"exhaustive"``, ``"exact"``, ``"auto"``). Unused when ``transposable=False``
        (top-``n`` per group is optimal there).
      refresh_every: recompute the masks every this many steps, counted from
        ``start_step`` (positive int).
      start_step: the step whose forward pass is the first sparse one; dense before.
      end_step: the first step after the sparse phase, or None for no end; must be
        greater than ``start_step``.
      dense_tail: after ``end_step``, train dense (True) or keep the masks frozen (False).
      srste: SR-STE weight ``λ >= 0``: adds ``λ · (1 − mask) ⊙ params`` to the gradient of
        every sparsified parameter (BRIEF default ``2e-4``). May be a traced scalar (e.g.
        from ``optax.inject_hyperparams``).
      include: predicate ``include(path, leaf) -> bool`` choosing the sparsified
        parameters; ``path`` is a tuple of dict keys / attribute names (str) and sequence
        indices (int), e.g. ``("layers", 0, "kernel")``. Default: leaves named
        ``"kernel"`` of rank >= 2 whose last two axes tile by ``m`` (axis ``-2`` divisible
        by ``m`` when ``transposable=False``). A leaf the predicate selects that cannot be
        tiled raises a ``ValueError`` naming its path.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with state :class:`SparsifyState`. Its
      ``update`` requires ``params``.

    Raises:
      ValueError / TypeError: invalid settings (eagerly); at ``init``, a selected parameter
        that is not floating or cannot be tiled (naming its path).

    Example:
      >>> import jax.numpy as jnp, optax, jaxnm
      >>> params = {"kernel": jnp.arange(16.0).reshape(4, 4)}
      >>> tx = optax.chain(jaxnm.sparsify(2, 4), optax.sgd(0.1))
      >>> state = tx.init(params)
      >>> jaxnm.masks(state)["kernel"].sum(axis=0)
      Array([2, 2, 2, 2], dtype=int32)
    """
    n, m = check_nm(n, m)
    word_dtype(m)
    refresh_every = _check_int(refresh_every, "refresh_every", minimum=1)
    start_step = _check_int(start_step, "start_step", minimum=0)
    if end_step is not None:
        end_step = _check_int(end_step, "end_step", minimum=start_step + 1)
    if not isinstance(transposable, bool):
        raise TypeError(f"`transposable` must be a bool, got {transposable!r}.")
    if not isinstance(dense_tail, bool):
        raise TypeError(f"`dense_tail` must be a bool, got {dense_tail!r}.")
    if isinstance(srste, (int, float)) and not srste >= 0:
        raise ValueError(f"`srste` (={srste}) must be >= 0.")
    if include is not None and not callable(include):
        raise TypeError(f"`include` must be a callable (path, leaf) -> bool, got {include!r}.")
    if transposable:
        # Traces the solver once on one tile: unknown methods fail here, not mid-training.
        jax.eval_shape(lambda w: transposable_mask(w, n, m, method=method), jnp.ones((m, m)))
    select = include if include is not None else _default_include(m, transposable)
    use_srste = not (isinstance(srste, (int, float)) and srste == 0)

    @jax.jit
    def solve_packed(w: jax.Array) -> jax.Array:
        if transposable:
            return pack(_transposable_tilewise(w, n, m, method), m)
        return pack(nm_mask(w, n, m, axis=-2), m)

    def dense_masks(masks: Any) -> Any:
        # full_like keeps the masks' sharding (lax.switch branches must agree on it).
        return _map_masks(lambda bits: jnp.full_like(bits, _all_ones(m)), masks)

    def init_fn(params: Any) -> SparsifyState:
        masks = _select_leaves(params, select, m, transposable)
        if start_step == 0:
            masks = _map_masks(lambda _, p: solve_packed(p), masks, params)
        else:
            masks = _map_masks(lambda _, p: _packed_ones(p, m), masks, params)
        return SparsifyState(count=jnp.zeros([], jnp.int32), masks=masks, m=m)

    def update_fn(updates, state: SparsifyState, params=None, **extra_args):
        del extra_args
        if params is None:
            raise ValueError(
                "jaxnm.sparsify needs the current params: call `tx.update(grads, state, params)`."
            )
        if use_srste:
            updates = _add_srste(updates, state.masks, params, srste, m)
        step = optax.safe_int32_increment(state.count)
        sparse = step >= start_step
        if end_step is not None:
            sparse &= step < end_step
        dense = step < start_step
        if end_step is not None and dense_tail:
            dense |= step >= end_step
        refresh = sparse & ((step - start_step) % refresh_every == 0)
        branch = jnp.where(dense, 2, jnp.where(refresh, 1, 0))
        masks = lax.switch(
            branch,
            [
                lambda: state.masks,
                lambda: _map_masks(lambda _, p: solve_packed(p), state.masks, params),
                lambda: dense_masks(state.masks),
            ],
        )
        return updates, SparsifyState(count=step, masks=masks, m=m)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _transposable_tilewise(w: jax.Array, n: int, m: int, method: str) -> jax.Array:
    """:func:`jaxnm.transposable_mask`, solved tile by tile (``vmap`` over the tile grid).

    Each tile's mask depends only on that tile, so this equals the batched solve. Keeping
    the ``(R // m, C // m)`` tile grid as vmapped axes lets a sharded weight keep its
    sharding through the refresh: no tile leaves its device (the batched solvers flatten
    the grid into one batch axis, which makes XLA gather sharded weights). The host
    ``"exact"`` solver is called once per layer instead.
    """
    if method == "exact":
        return transposable_mask(w, n, m, method=method)
    solve = functools.partial(transposable_mask, n=n, m=m, method=method)
    tiles = to_tiles(w, m)  # (..., R // m, C // m, m, m)
    for _ in range(tiles.ndim - 2):
        solve = jax.vmap(solve)
    return from_tiles(solve(tiles))


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
    """The current masks held by :func:`sparsify` in an optimizer state (also ``jaxnm.masks``).

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
        bits = _value(bits)
        return None if bits is None else unpack(jnp.asarray(bits), state.m)

    return jax.tree.map(one, state.masks, is_leaf=lambda x: x is None or _is_variable(x))


def apply_masks(params: Any, masks: Any) -> Any:
    """Effective weights ``params ⊙ masks`` with a straight-through gradient.

    Args:
      params: the (dense) params pytree.
      masks: pytree as returned by :func:`current_masks`: bool (or 0/1 numeric) arrays of
        the matching leaves' shapes, ``None`` where a parameter stays dense (``masks`` may also be a
        prefix of ``params`` with ``None`` for whole dense subtrees).

    Returns:
      ``params`` with every masked leaf replaced by ``where(mask, leaf, 0)`` (same dtype).
      The gradient flows to the dense leaf unmasked (straight-through estimator), so pruned
      weights keep training and masks can change at the next refresh. Export a trained model
      for inference with ``apply_masks(params, masks)`` outside any gradient.
    """
    return jax.tree.map(
        lambda mask, p: p if mask is None else _masked_ste(p, mask),
        masks,
        params,
        is_leaf=lambda x: x is None,
    )


@jax.custom_vjp
def _masked_ste(w: jax.Array, mask: jax.Array) -> jax.Array:
    return jnp.where(mask, w, jnp.zeros((), w.dtype))


def _masked_ste_fwd(w, mask):
    return _masked_ste(w, mask), mask


def _masked_ste_bwd(mask, g):
    if jnp.issubdtype(mask.dtype, jnp.inexact):
        return g, jnp.zeros_like(mask)
    return g, np.zeros(np.shape(mask), jax.dtypes.float0)


_masked_ste.defvjp(_masked_ste_fwd, _masked_ste_bwd)


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


def _default_include(m: int, transposable: bool) -> Include:
    def include(path: Path, leaf) -> bool:
        shape = np.shape(leaf)
        if not path or path[-1] != "kernel" or len(shape) < 2:
            return False
        if transposable:
            return shape[-1] % m == 0 and shape[-2] % m == 0
        return shape[-2] % m == 0

    return include


def _select_leaves(params: Any, select: Include, m: int, transposable: bool) -> Any:
    """Pytree matching ``params``: True for the sparsified leaves, None for the others."""

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


def _map_masks(fn: Callable, masks: Any, *rest: Any) -> Any:
    """Maps ``fn`` over the non-None leaves of ``masks`` (and the matching leaves of
    ``rest``); None leaves stay None."""
    return jax.tree.map(
        lambda mask, *xs: None if mask is None else fn(mask, *xs),
        masks,
        *rest,
        is_leaf=lambda x: x is None,
    )


def _add_srste(updates: Any, masks: Any, params: Any, srste, m: int) -> Any:
    def one(bits, g, p):
        keep = unpack(_array(bits), m)
        decay = jnp.where(keep, jnp.zeros((), p.dtype), p)
        return (g + jnp.asarray(srste, g.dtype) * decay).astype(g.dtype)

    return jax.tree.map(
        lambda bits, g, p: g if bits is None else one(bits, g, p),
        masks,
        updates,
        params,
        is_leaf=lambda x: x is None,
    )


def _all_ones(m: int) -> int:
    return (1 << m) - 1


def _packed_ones(w, m: int) -> jax.Array:
    """All-ones packed mask of ``w``, sharded as ``pack`` shards ``w``'s mask."""
    if explicit_sharding(w) is None:
        return jnp.full(packed_shape(tuple(np.shape(w)), m), _all_ones(m), word_dtype(m))
    return pack(jnp.ones_like(w, dtype=bool), m)


def _is_variable(x) -> bool:
    """Whether ``x`` is a Flax NNX Variable (``nnx.Optimizer`` wraps its state in them)."""
    return callable(getattr(x, "get_value", None))


def _value(x):
    """The value inside a Flax NNX Variable (may be None), or ``x`` itself."""
    return x.get_value() if _is_variable(x) else x


def _array(x) -> jax.Array:
    return jnp.asarray(_value(x))


def _check_int(value, name: str, *, minimum: int) -> int:
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"`{name}` must be a Python int, got {value!r}.") from None
    if value < minimum:
        raise ValueError(f"`{name}` (={value}) must be >= {minimum}.")
    return value
