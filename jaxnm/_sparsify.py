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

  The refresh is a ``lax.switch`` inside the compiled step: no recompilation. With the
  default ``solve_on="auto"`` and the weights on one CPU device, the refresh branch calls
  the compiled solver as an executable of its own (a ``jax.pure_callback``; compiled at
  the first refresh, cached by shapes), so the step's compile holds no solver; elsewhere
  the solver is compiled into the step (``method="exact"`` uses its solver's host
  callback).
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
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from jaxnm._checks import check_int, check_nm, check_nonnegative_scalar
from jaxnm._params import Include, key_path_names, select_leaves
from jaxnm._sharding import explicit_sharding
from jaxnm._state import SparsifyState, map_masks, variable_array
from jaxnm.masks.kernel import kernel_masks_packed
from jaxnm.masks.layers import default_plan, host_solver, layer_masks_host
from jaxnm.masks.packing import MAX_GROUP, pack, pack_host, packed_shape, unpack, word_dtype
from jaxnm.masks.solvers import MaskMethod, Solver, resolve_solver

SolveOn = Literal["auto", "device", "host"]
"""Where :func:`sparsify` solves transposable masks (see its ``solve_on``)."""


def sparsify(
    n: int,
    m: int,
    *,
    transposable: bool = True,
    method: MaskMethod | Solver = "auto",
    refresh_every: int = 40,
    start_step: int = 0,
    end_step: int | None = None,
    dense_tail: bool = False,
    srste: float | jax.Array = 0.0,
    include: Include | None = None,
    solve_on: SolveOn = "auto",
) -> optax.GradientTransformationExtraArgs:
    """N:M sparse training as an optax transform; chain it *first*.

    ``tx = optax.chain(jaxnm.sparsify(2, 4), optax.adamw(1e-3))``, then use the effective
    weights ``jaxnm.apply_masks(params, jaxnm.current_masks(opt_state))`` in the forward pass (or
    the :mod:`jaxnm.nnx` / :mod:`jaxnm.linen` layers). See the module docstring for the
    schedule and the chain position.

    Args:
      n: kept per group (static int).
      m: group size, ``1 <= m <= 32`` (static int).
      transposable: transposable N:M masks over the last two axes (``(in, out)``; every
        ``m x m`` tile keeps ``n`` per row and column) if True, else N:M along axis ``-2``
        (``in``, the contraction axis of Flax kernels).
      method: transposable solver, as in :func:`jaxnm.transposable_mask`: a name in
        :data:`jaxnm.masks.SOLVERS` (default ``"auto"``) or a solver callable. Unused when
        ``transposable=False`` (top-``n`` per group is optimal there). An unknown name
        raises here; a solver that cannot serve ``n:m`` (``"exhaustive"`` at 8:16, or
        ``"exact"`` without OR-Tools) raises at ``init``.
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
        by ``m`` when ``transposable=False``); when it selects nothing a ``UserWarning``
        says so. A leaf the predicate selects that cannot be tiled, or a predicate that
        selects nothing, raises a ``ValueError`` naming the paths. Under
        ``optax.inject_hyperparams`` list ``"include"`` in ``static_args`` (see
        :data:`jaxnm.SPARSIFY_STATIC_ARGS`).
      solve_on: where transposable masks are solved, the same masks either way:
        ``"auto"`` (default): ``init`` on the host by the solver's NumPy twin
        (:func:`jaxnm.masks.layers.host_solver`: ``"greedy"``, and ``"auto"`` where it
        means greedy), so ``init`` compiles no solver; the refresh branch of the train
        step by the compiled solver: on a CPU with the weights on one device as an
        executable of its own, called through ``jax.pure_callback`` (the step's compile
        holds no solver; the solver compiles at the first refresh, once per set of kernel
        shapes and settings, and is shared by every step and ``sparsify`` instance that
        refreshes those shapes), elsewhere compiled into the step (GPU, TPU, several
        devices). Where XLA runs that callback on one of its worker threads, the thread
        waits while the solver runs on the others, so on a CPU with few cores such a
        refresh is slower than in the step (2 cores: up to 2x; BENCHMARKS.md,
        "Start-up"). ``"device"``: the compiled solver at ``init`` too, and always
        compiled into the step (use it for long CPU runs on few cores, and for a train
        step exported with ``jax.export``, which cannot serialize a callback).
        ``"host"``: the twin in the step too, through ``jax.pure_callback``: the step
        compiles no solver, but every refresh copies the weights to the host and solves
        there, several times slower than the compiled solver on the CPU (BENCHMARKS.md,
        "Start-up"). The host solves only weights on one device with a solver that has a
        twin; elsewhere ``"auto"`` uses the device and ``"host"`` raises.

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
      >>> jaxnm.current_masks(state)["kernel"].sum(axis=0)
      Array([2, 2, 2, 2], dtype=int32)
    """
    n, m = check_nm(n, m)
    if m > MAX_GROUP:
        raise ValueError(f"`m` (={m}) must be <= {MAX_GROUP} (one packed mask word per group).")
    _check_not_traced(
        end_step=end_step,
        refresh_every=refresh_every,
        start_step=start_step,
        transposable=transposable,
        dense_tail=dense_tail,
    )
    refresh_every = check_int(refresh_every, "refresh_every", minimum=1)
    start_step = check_int(start_step, "start_step", minimum=0)
    if end_step is not None:
        end_step = check_int(end_step, "end_step", minimum=start_step + 1)
    if not isinstance(transposable, bool):
        raise TypeError(f"`transposable` must be a bool, got {transposable!r}.")
    if not isinstance(dense_tail, bool):
        raise TypeError(f"`dense_tail` must be a bool, got {dense_tail!r}.")
    use_srste = check_nonnegative_scalar(srste, "srste")
    tail_dense = end_step is not None and dense_tail
    # Without a dense phase the all-ones branch of the mask switch is never taken: it is
    # left out (XLA would compile one fill per kernel for it).
    has_dense_phase = start_step > 0 or tail_dense
    if include is not None and not callable(include):
        raise TypeError(f"`include` must be a callable (path, leaf) -> bool, got {include!r}.")
    solver = resolve_solver(method)
    if solve_on not in ("auto", "device", "host"):
        raise ValueError(f"`solve_on` (={solve_on!r}) must be 'auto', 'device' or 'host'.")
    if solve_on == "host" and not (transposable and host_solver(solver, n, m)):
        raise ValueError(
            f"`solve_on='host'` needs transposable masks and a solver with a NumPy twin "
            f"('greedy', or 'auto' where it means greedy); got transposable={transposable}, "
            f"method={method!r} at {n}:{m}."
        )

    def solve_packed(masks: Any, params: Any, views, *, refresh: bool) -> Any:
        on_host = solve_on == "host" or (solve_on == "auto" and not refresh)
        return _solve_packed_tree(
            masks,
            params,
            n,
            m,
            transposable,
            solver,
            {path: view for path, view, _ in views},
            on_host=on_host,
            must=solve_on == "host",
            separate=solve_on == "auto",
        )

    def dense_masks(masks: Any) -> Any:
        # full_like keeps the masks' sharding (lax.switch branches must agree on it).
        return map_masks(lambda bits: jnp.full_like(bits, _all_ones(m)), masks)

    def init_fn(params: Any) -> SparsifyState:
        masks, skipped, views = select_leaves(params, include, m, transposable)
        if start_step == 0:
            masks = solve_packed(masks, params, views, refresh=False)
        else:
            shapes = {path: view.matrix_shape(shape) for path, view, shape in views}
            masks = jax.tree_util.tree_map_with_path(
                lambda path, keep, p: (
                    None if keep is None else _packed_ones(p, m, shapes.get(key_path_names(path)))
                ),
                masks,
                params,
                is_leaf=lambda x: x is None,
            )
        return SparsifyState(
            count=jnp.zeros([], jnp.int32),
            masks=masks,
            n=n,
            m=m,
            transposable=transposable,
            skipped=skipped,
            views=views,
        )

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
        if tail_dense:
            dense |= step >= end_step
        refresh = sparse & ((step - start_step) % refresh_every == 0)
        branches = [
            lambda: state.masks,
            lambda: solve_packed(state.masks, params, state.views, refresh=True),
        ]
        if has_dense_phase:
            branches.append(lambda: dense_masks(state.masks))
        branch = jnp.where(dense, 2, jnp.where(refresh, 1, 0))
        masks = lax.switch(branch, branches)
        return updates, dataclasses.replace(state, count=step, masks=masks)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _solve_packed_tree(
    masks: Any,
    params: Any,
    n: int,
    m: int,
    transposable: bool,
    solver,
    views: dict,
    *,
    on_host: bool,
    must: bool = False,
    separate: bool = False,
):
    """Packed masks of the leaves of ``params`` where ``masks`` is not None, all solved by
    one call; a pytree like ``map_masks(fn, masks, params)``. Kernels with a
    :class:`~jaxnm._params.KernelView` (``views``, by path) are solved and packed on their
    flattened ``(in, out)`` view.

    ``on_host``: where the solver has a NumPy twin (:func:`jaxnm.masks.layers.host_solver`)
    and the weights sit on one device (``default_plan`` is ``"flat"``), the masks are
    solved on the host (:func:`_solve_packed_host`), the same masks with no solver compile;
    otherwise by the compiled :func:`_solve_packed` (``must``: raise instead): under a
    trace with ``separate`` and the weights on one device, as its own executable
    (:func:`_solve_packed_separately`), else traced into the caller.
    """
    selected = map_masks(lambda _, p: variable_array(p), masks, params)
    flat, treedef = jax.tree_util.tree_flatten_with_path(selected)
    if not flat:
        return selected
    leaves, matrices = [], []
    for path, w in flat:
        view = views.get(key_path_names(path))
        matrices.append(None if view is None else view.matrix_shape(w.shape))
        leaves.append(w)
    host = host_solver(solver, n, m) if on_host and transposable else None
    flat_plan = default_plan(leaves) == "flat"
    traced = any(isinstance(w, jax.core.Tracer) for w in leaves)
    settings = dict(n=n, m=m, transposable=transposable, solver=solver, views=tuple(matrices))
    if host is not None and flat_plan:
        packed = _solve_packed_host(leaves, n, m, host, tuple(matrices))
    elif must:
        raise ValueError(
            "`solve_on='host'` needs the weights on one device (this process sees "
            f"{jax.device_count()} devices or the weights carry a sharding); use 'auto'."
        )
    elif separate and transposable and flat_plan and traced:
        packed = _solve_packed_separately(tuple(leaves), **settings)
    else:
        packed = _solve_packed(tuple(leaves), **settings)
    return jax.tree.unflatten(treedef, packed)


def _packed_shapes(ws, views: tuple, m: int) -> list[jax.ShapeDtypeStruct]:
    """The packed masks' shapes and dtype of the weights ``ws`` (``views`` as in
    :func:`_solve_packed`): a callback's result shapes."""
    return [
        jax.ShapeDtypeStruct(packed_shape(tuple(w.shape) if v is None else v, m), word_dtype(m))
        for w, v in zip(ws, views, strict=True)
    ]


def _solve_packed_host(ws: list, n: int, m: int, host, views: tuple) -> list:
    """Packed transposable masks of ``ws`` solved on the host by ``host`` (``views`` as in
    :func:`_solve_packed`).

    Concrete weights are copied to NumPy and the packed masks put back next to them; under
    a trace (``init`` inside ``jit``) the same NumPy solve runs through
    ``jax.pure_callback``. Either way XLA compiles no solver.
    """

    def solve(*arrays) -> list:
        arrays = [np.asarray(a) for a in arrays]
        flat = [a if v is None else a.reshape(v) for a, v in zip(arrays, views, strict=True)]
        masks = layer_masks_host(flat, n, m, host)
        return [pack_host(k, m) for k in masks]

    if any(isinstance(w, jax.core.Tracer) for w in ws):
        shapes = _packed_shapes(ws, views, m)
        return list(jax.pure_callback(solve, shapes, *ws, vmap_method="sequential"))
    # Committed like the weights: committed masks beside uncommitted params (fresh from
    # `model.init`) make the train step's outputs committed, and its second call compile
    # the step again for the new argument shardings.
    return [
        jax.device_put(p, w.sharding) if getattr(w, "committed", False) else jnp.asarray(p)
        for p, w in zip(solve(*ws), ws, strict=True)
    ]


def _solve_packed_separately(ws: tuple, **settings) -> list:
    """:func:`_solve_packed` of the traced weights ``ws`` (``settings``: its static
    arguments) without tracing the solver into the caller's program, where that program
    runs on a CPU.

    On a CPU the caller's program calls the jitted :func:`_solve_packed` through
    ``jax.pure_callback``: it is compiled as an executable of its own at the first call
    (the caller's compile holds no solver; jit's cache keeps it by shapes and settings) and
    run on the process's first CPU device: the callback's arrays and that device's buffers
    are in the same memory, so the round trip costs copies, not transfers (about 1 ms of an
    87 ms refresh on the MNIST CNN's kernels). Compiled for any other platform (GPU, TPU),
    the solver is traced into the caller as :func:`_solve_packed` itself
    (``lax.platform_dependent``; a program lowered for several platforms holds both). The
    same masks either way: the solver is position-independent (see
    :mod:`jaxnm.masks.residual`).
    """
    shapes = _packed_shapes(ws, settings["views"], settings["m"])

    def solve_compiled(*arrays) -> list:
        # jax sets a default device inside callbacks, eager calls have none: without it, and
        # with uncommitted weights (as params usually are), this is the entry of jit's cache
        # that an eager `init` filled (a solver without a NumPy twin compiles once for both).
        with jax.default_device(None):
            if jax.default_backend() == "cpu":
                weights = tuple(jnp.asarray(np.asarray(a)) for a in arrays)
            else:  # a step on the CPU of a process whose default backend is another
                cpu = jax.local_devices(backend="cpu")[0]
                weights = tuple(jax.device_put(np.asarray(a), cpu) for a in arrays)
            return [np.asarray(p) for p in _solve_packed(weights, **settings)]

    def on_cpu(*arrays) -> list:
        return list(jax.pure_callback(solve_compiled, shapes, *arrays, vmap_method="sequential"))

    def traced_in(*arrays) -> list:
        return list(_solve_packed(arrays, **settings))

    return lax.platform_dependent(*ws, cpu=on_cpu, default=traced_in)


@functools.partial(jax.jit, static_argnames=("n", "m", "transposable", "solver", "views"))
def _solve_packed(
    ws: tuple, *, n: int, m: int, transposable: bool, solver, views: tuple = ()
) -> list:
    """Packed masks of the weights ``ws``, one compiled call for all of them.

    :func:`jaxnm.masks.kernel.kernel_masks_packed`; transposable:
    :func:`jaxnm.masks.layers.layer_masks_packed` solves the tiles of every weight in one
    solver call (on one device: one flat batch, whatever the kernel shapes, packed at once;
    where weights may be sharded: every tile grid kept, so no tile leaves its device). A jitted
    module-level function, so compiled solvers are cached by shapes and settings across
    :func:`sparsify` instances, and ``init`` and the refresh branch trace the same code.
    ``views``: per weight, None or the 2-D ``(in, out)`` shape its mask is solved and packed
    on (:func:`jaxnm._state.unpack_leaf` restores the weight's shape).
    """
    views = views or (None,) * len(ws)
    flat = [w if view is None else w.reshape(view) for w, view in zip(ws, views, strict=True)]
    return kernel_masks_packed(flat, n, m, transposable=transposable, solver=solver)


def _add_srste(updates: Any, masks: Any, params: Any, srste, m: int) -> Any:
    def one(bits, g, p):
        keep = unpack(variable_array(bits), m).reshape(jnp.shape(p))
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


def _packed_ones(w, m: int, view: tuple[int, int] | None = None) -> jax.Array:
    """All-ones packed mask of ``w`` (of its 2-D ``view`` shape if given), sharded as
    ``pack`` shards ``w``'s mask."""
    if view is not None or explicit_sharding(w) is None:
        shape = tuple(np.shape(w)) if view is None else view
        return jnp.full(packed_shape(shape, m), _all_ones(m), word_dtype(m))
    return pack(jnp.ones_like(w, dtype=bool), m)


SPARSIFY_STATIC_ARGS: tuple[str, ...] = (
    "n",
    "m",
    "transposable",
    "method",
    "refresh_every",
    "start_step",
    "end_step",
    "dense_tail",
    "include",
    "solve_on",
)
"""Every argument of :func:`sparsify` except ``srste``: the ``static_args`` of
``optax.inject_hyperparams(jaxnm.sparsify, static_args=jaxnm.SPARSIFY_STATIC_ARGS)``, which
makes ``srste`` schedulable and keeps the step settings Python ints and ``include`` a
predicate (optax would otherwise take a callable for a schedule)."""


def _check_not_traced(**settings) -> None:
    for name, value in settings.items():
        if isinstance(value, jax.Array):
            raise TypeError(
                f"`{name}` must be a Python value, got an array ({value!r}); under "
                "optax.inject_hyperparams pass `static_args=jaxnm.SPARSIFY_STATIC_ARGS`."
            )
