"""jaxnm.sparsify (jaxnm/_sparsify.py): the mask schedule, dense tail, frozen masks, SR-STE,
chain position, optax MultiSteps / inject_hyperparams, bf16 params, orbax, argument errors.
Selection is tested in test_params.py, the optax wrappers in test_wrappers.py."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from toy_params import params as _params

import jaxnm
from jaxnm import SparsifyState, find_state

N, M = 2, 4


def _data(key=1, batch=32):
    kx, kw = jax.random.split(jax.random.key(key))
    x = jax.random.normal(kx, (batch, 6))
    y = jnp.tanh(x @ jax.random.normal(kw, (6, 4)))
    return x, y


def _forward(p, x):
    h = jnp.tanh(x @ p["odd"]["kernel"])  # (B, 4)
    h = jnp.concatenate([h, h], axis=-1)  # (B, 8)
    h = jnp.tanh(h @ p["dense"]["kernel"] + p["dense"]["bias"])
    return h @ p["out"]["kernel"]


def _loss(p, x, y):
    return jnp.mean((_forward(p, x) - y) ** 2)


def _make_step(tx):
    @jax.jit
    def step(params, opt_state, x, y):
        def loss_fn(p):
            return _loss(jaxnm.apply_masks(p, jaxnm.current_masks(opt_state)), x, y)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step


def _run(tx, steps, params=None):
    params = _params() if params is None else params
    opt_state = tx.init(params)
    step = _make_step(tx)
    x, y = _data()
    history = [(params, opt_state)]
    losses = []
    for _ in range(steps):
        params, opt_state, loss = step(params, opt_state, x, y)
        history.append((params, opt_state))
        losses.append(float(loss))
    return history, losses, step


def _mask_leaves(opt_state):
    masks = jaxnm.current_masks(opt_state)
    return masks["dense"]["kernel"], masks["out"]["kernel"]


def test_training_schedule_refresh_only_at_refresh_steps():
    refresh, start, end = 3, 2, 11
    tx = optax.chain(
        jaxnm.sparsify(N, M, refresh_every=refresh, start_step=start, end_step=end),
        optax.adam(0.05),
    )
    history, losses, step = _run(tx, 14)
    assert losses[-1] < losses[0]
    assert step._cache_size() == 1  # refresh and non-refresh steps share one compilation
    prev = None
    for t, (params, opt_state) in enumerate(history):
        assert int(find_state(opt_state).count) == t
        masks = _mask_leaves(opt_state)
        eff = jaxnm.apply_masks(params, jaxnm.current_masks(opt_state))
        if t < start:
            assert all(bool(mk.all()) for mk in masks), t
        else:
            for e, mk in zip((eff["dense"]["kernel"], eff["out"]["kernel"]), masks, strict=True):
                assert bool(jaxnm.is_transposable_nm(mk, N, M)), t
                assert not bool(jnp.any(jnp.where(mk, 0, e))), t  # effective weights are N:M
        if prev is not None:
            changed = any(bool(jnp.any(a != b)) for a, b in zip(masks, prev, strict=True))
            is_refresh = start <= t < end and (t - start) % refresh == 0
            if not is_refresh and t != start:
                assert not changed, t
            if is_refresh and t > start:
                # Refresh t recomputes from the params of step t - 1.
                w = history[t - 1][0]["dense"]["kernel"]
                # sparsify and transposable_mask share the default method ("auto").
                np.testing.assert_array_equal(masks[0], jaxnm.transposable_mask(w, N, M))
        prev = masks
    # At least one refresh after the start actually changed a mask in this run.
    changes = [
        t
        for t in range(1, len(history))
        if any(
            bool(jnp.any(a != b))
            for a, b in zip(
                _mask_leaves(history[t][1]), _mask_leaves(history[t - 1][1]), strict=True
            )
        )
    ]
    assert start in changes and set(changes) <= {start, 5, 8}


def test_dense_tail():
    tx = optax.chain(jaxnm.sparsify(N, M, end_step=3, dense_tail=True), optax.sgd(0.1))
    history, _, _ = _run(tx, 4)
    assert not bool(_mask_leaves(history[2][1])[0].all())
    assert all(bool(mk.all()) for mk in _mask_leaves(history[3][1]))


def test_frozen_masks_equal_hand_masking():
    """sparsify with frozen masks + adamw trains the kept weights exactly like a model whose
    forward multiplies by the fixed masks."""
    params = _params()
    opt = optax.adamw(0.03, weight_decay=1e-2)
    history, losses, _ = _run(optax.chain(jaxnm.sparsify(N, M, end_step=1), opt), 8, params)
    fixed = jaxnm.current_masks(jaxnm.sparsify(N, M).init(params))

    def hand_loss(p, x, y):
        eff = jax.tree.map(
            lambda mk, w: w if mk is None else w * mk, fixed, p, is_leaf=lambda v: v is None
        )
        return _loss(eff, x, y)

    p, s = params, opt.init(params)
    x, y = _data()

    @jax.jit
    def hand_step(p, s):
        loss, g = jax.value_and_grad(hand_loss)(p, x, y)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s, loss

    for t in range(8):
        p, s, loss = hand_step(p, s)
        np.testing.assert_allclose(float(loss), losses[t], rtol=1e-6)
    eff_sparse = jaxnm.apply_masks(history[-1][0], jaxnm.current_masks(history[-1][1]))
    eff_hand = jaxnm.apply_masks(p, fixed)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), eff_sparse, eff_hand
    )


def test_chain_position_is_irrelevant_without_srste():
    sp = dict(transposable=False, refresh_every=2)  # cheap plain N:M: the point is the order
    first, _, _ = _run(optax.chain(jaxnm.sparsify(N, M, **sp), optax.adam(0.05)), 5)
    last, _, _ = _run(optax.chain(optax.adam(0.05), jaxnm.sparsify(N, M, **sp)), 5)
    jax.tree.map(np.testing.assert_array_equal, first[-1][0], last[-1][0])
    jax.tree.map(
        np.testing.assert_array_equal,
        jaxnm.current_masks(first[-1][1]),
        jaxnm.current_masks(last[-1][1]),
    )


def test_srste_adds_decay_on_pruned_weights():
    params = _params()
    lam = 0.3
    tx = jaxnm.sparsify(N, M, srste=lam)
    state = tx.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = jax.jit(tx.update)(grads, state, params)
    mk = jaxnm.current_masks(state)["dense"]["kernel"]
    w = params["dense"]["kernel"]
    np.testing.assert_allclose(updates["dense"]["kernel"], 1 + lam * jnp.where(mk, 0, w))
    np.testing.assert_array_equal(updates["odd"]["kernel"], grads["odd"]["kernel"])


def test_multisteps_and_inject_hyperparams():
    inner = optax.chain(jaxnm.sparsify(N, M, transposable=False, refresh_every=1), optax.sgd(0.1))
    tx = optax.MultiSteps(inner, every_k_schedule=2)
    history, losses, _ = _run(tx, 4)
    assert [int(find_state(s).count) for _, s in history] == [0, 0, 1, 1, 2]
    assert losses[-1] < losses[0]
    injected = optax.inject_hyperparams(
        jaxnm.sparsify,
        static_args=("n", "m", "refresh_every", "start_step", "transposable", "dense_tail"),
    )(n=N, m=M, refresh_every=2, srste=0.1)
    tx = optax.chain(injected, optax.inject_hyperparams(optax.adam)(learning_rate=0.05))
    history, losses, _ = _run(tx, 3)
    assert losses[-1] < losses[0]
    assert float(history[-1][1][0].hyperparams["srste"]) == pytest.approx(0.1)
    assert bool(jaxnm.is_transposable_nm(_mask_leaves(history[-1][1])[1], N, M))


def test_bfloat16_params():
    tx = optax.chain(jaxnm.sparsify(N, M, refresh_every=1, srste=1e-3), optax.sgd(0.1))
    history, _, _ = _run(tx, 2, _params(dtype=jnp.bfloat16))
    params, state = history[-1]
    assert params["dense"]["kernel"].dtype == jnp.bfloat16
    assert bool(jaxnm.is_transposable_nm(_mask_leaves(state)[0], N, M))


def test_orbax_round_trip_continues_bit_identically(tmp_path):
    import orbax.checkpoint as ocp

    tx = optax.chain(jaxnm.sparsify(N, M, refresh_every=2, srste=1e-3), optax.adamw(0.05))
    history, losses, step = _run(tx, 6)
    params, opt_state = history[3]
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(tmp_path / "state", {"params": params, "opt_state": opt_state})
        ckpt.wait_until_finished()
        abstract = jax.tree.map(
            ocp.utils.to_shape_dtype_struct, {"params": params, "opt_state": opt_state}
        )
        restored = ckpt.restore(tmp_path / "state", abstract)
    p, s = restored["params"], restored["opt_state"]
    assert isinstance(find_state(s), SparsifyState)
    x, y = _data()
    for t in range(3, 6):
        p, s, loss = step(p, s, x, y)
        assert float(loss) == losses[t]
    jax.tree.map(np.testing.assert_array_equal, p, history[-1][0])
    jax.tree.map(
        np.testing.assert_array_equal, jaxnm.current_masks(s), jaxnm.current_masks(history[-1][1])
    )


def test_errors():
    with pytest.raises(ValueError, match="refresh_every"):
        jaxnm.sparsify(N, M, refresh_every=0)
    with pytest.raises(ValueError, match="end_step"):
        jaxnm.sparsify(N, M, start_step=5, end_step=5)
    with pytest.raises(ValueError, match="method"):
        jaxnm.sparsify(N, M, method="nope")
    with pytest.raises(ValueError, match="exhaustive.*4:8"):  # cannot serve 4:8: at init
        jaxnm.sparsify(4, 8, method="exhaustive").init({"kernel": jnp.ones((8, 8))})
    with pytest.raises(ValueError, match="`m`"):
        jaxnm.sparsify(2, 64)
    with pytest.raises(TypeError, match="`n`"):
        jaxnm.sparsify(2.0, M)
    with pytest.raises(ValueError, match="srste"):
        jaxnm.sparsify(N, M, srste=-1.0)
    tx = jaxnm.sparsify(N, M)
    state = tx.init(_params())
    with pytest.raises(ValueError, match="params"):
        tx.update(_params(), state)
    with pytest.raises(ValueError, match="found 0"):
        jaxnm.current_masks(optax.adam(0.1).init(_params()))


@pytest.mark.parametrize("committed", [False, True])
@pytest.mark.parametrize("solve_on", ["auto", "device", "host"])
def test_the_train_step_compiles_as_often_as_the_dense_step(solve_on, committed):
    """4:8 greedy masks solved at init by the NumPy twin ("auto", "host") or the compiled
    solver ("device") carry the params' commitment. Fresh (uncommitted) params used to get
    committed masks: the step's outputs were committed and its second call compiled the
    whole step again. Committed params: the dense step compiles twice as well (optax's
    uncommitted counters), and the sparse step no more often."""
    rng = np.random.default_rng(0)
    params = {
        "hidden": {"kernel": jnp.asarray(rng.standard_normal((8, 16)), jnp.float32)},
        "out": {"kernel": jnp.asarray(rng.standard_normal((16, 8)), jnp.float32)},
    }
    if committed:
        params = jax.device_put(params, jax.devices()[0])
    x = jnp.ones((4, 8))

    def compiles(tx, sparse: bool) -> int:
        @jax.jit
        def step(params, opt_state):
            def loss_fn(p):
                if sparse:
                    p = jaxnm.apply_masks(p, jaxnm.current_masks(opt_state))
                return jnp.sum(jnp.tanh(x @ p["hidden"]["kernel"]) @ p["out"]["kernel"])

            grads = jax.grad(loss_fn)(params)
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state

        p, opt_state = params, tx.init(params)
        for _ in range(3):
            p, opt_state = step(p, opt_state)
        return step._cache_size()

    dense = compiles(optax.adam(0.1), sparse=False)
    sparsify = jaxnm.sparsify(4, 8, method="greedy", solve_on=solve_on)
    assert compiles(optax.chain(sparsify, optax.adam(0.1)), sparse=True) == dense
    if not committed:
        assert dense == 1
