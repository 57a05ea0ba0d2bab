"""jaxnm.linen layers (jaxnm/linen/layers.py): N:M training of Linen models with masks passed
from the optimizer state (``jl.variables``). ``jl.include`` is tested in test_selection.py."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxnm
import jaxnm.linen as jl

N, M = 2, 4

MVUE_2_4 = jaxnm.MVUE(2, 4)


def _mlp(layers, grad_sparsity=MVUE_2_4):
    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = jnp.tanh(layers.Dense(16, name="inp")(x))  # in=6: stays dense
            h = jnp.tanh(layers.Dense(16, name="hidden", **_gs(layers, grad_sparsity))(h))
            h = layers.DenseGeneral(8, name="general", **_gs(layers, grad_sparsity))(h)
            return layers.Dense(4, name="out", **_gs(layers, grad_sparsity))(jnp.tanh(h))

    return MLP()


def _convnet(layers):
    class ConvNet(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = nn.relu(layers.Conv(8, (3, 3), name="c1")(x))  # in=3: stays dense
            h = nn.relu(layers.Conv(8, (3, 3), strides=2, name="c2", **_gs(layers))(h))
            return layers.Dense(4, name="head", **_gs(layers))(h.mean(axis=(1, 2)))

    return ConvNet()


def _key():
    return jax.random.key(7)


def _gs(layers, grad_sparsity=MVUE_2_4):
    return {"grad_sparsity": grad_sparsity} if layers is jl else {}


def _task(build):
    kx, kt = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, (32, 6) if build is _mlp else (16, 8, 8, 3))
    teacher = build(nn)  # jitted: eager Flax init/apply compiles every op on its own
    return x, jax.jit(teacher.apply)(jax.jit(teacher.init)(kt, x), x)


def _train(build, steps, **kwargs):
    model = build(jl)
    x, y = _task(build)
    params = jax.jit(model.init)(jax.random.key(1), x)["params"]
    tx = optax.chain(jaxnm.sparsify(N, M, **kwargs), optax.adam(0.02))
    opt_state = jax.jit(tx.init)(params)

    @jax.jit
    def step(params, opt_state, key):
        def loss_fn(p):
            out = model.apply(jl.variables(p, opt_state), x, rngs={jl.RNG_STREAM: key})
            return jnp.mean((out - y) ** 2)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    history, losses = [(params, opt_state)], []
    for t in range(steps):
        params, opt_state, loss = step(params, opt_state, jax.random.key(100 + t))
        history.append((params, opt_state))
        losses.append(float(loss))
    return model, (x, y), history, losses


@pytest.mark.parametrize(
    "build, expected",
    # the conv model's run is compile-heavy (~25 s): slow (CI budget); test_errors and
    # test_plain_flax_layers_... train no conv, tests/ops/test_nm_conv.py covers the op
    [(_mlp, 3), pytest.param(_convnet, 2, marks=pytest.mark.slow)],
)
def test_end_to_end_schedule(build, expected):
    refresh, start, end = 3, 2, 12
    model, (x, _), history, losses = _train(
        build, 16, refresh_every=refresh, start_step=start, end_step=end
    )
    plain = build(nn)
    plain_apply, model_apply = jax.jit(plain.apply), jax.jit(model.apply)
    prev = None
    for t, (params, opt_state) in enumerate(history):
        masks = jl.variables(params, opt_state)[jl.MASKS]
        flat = [(p, mk) for p, mk in jax.tree_util.tree_leaves_with_path(masks) if mk.ndim]
        assert len(flat) == expected  # the others are jl.DENSE entries
        for path, mk in flat:
            if t < start:
                assert bool(mk.all()), (t, path)
            else:
                assert bool(jaxnm.is_transposable_nm(mk, N, M)), (t, path)
        if prev is not None and not (start <= t < end and (t - start) % refresh == 0):
            jax.tree.map(np.testing.assert_array_equal, masks, prev)
        prev = masks
        if t in (start, len(history) - 1):
            # Export: dense masked params in the plain Flax model give the same outputs.
            exported = jaxnm.apply_masks(params, jaxnm.current_masks(opt_state))
            np.testing.assert_allclose(
                plain_apply({"params": exported}, x),
                model_apply(jl.variables(params, opt_state), x, rngs={"mvue": _key()}),
                rtol=1e-6,
                atol=1e-6,
            )
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3])


def test_gradients_match_straight_through_masking():
    model = _mlp(jl, grad_sparsity=None)
    x, y = _task(_mlp)
    params = model.init(jax.random.key(1), x)["params"]
    state = jaxnm.sparsify(N, M).init(params)
    masks = jaxnm.current_masks(state)

    def op_loss(p):
        return jnp.mean((model.apply(jl.variables(p, state), x) - y) ** 2)

    def ste_loss(p):
        return jnp.mean((_mlp(nn).apply({"params": jaxnm.apply_masks(p, masks)}, x) - y) ** 2)

    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
        jax.grad(op_loss)(params),
        jax.grad(ste_loss)(params),
    )


def test_errors():
    model = _mlp(jl)
    x, _ = _task(_mlp)
    params = model.init(jax.random.key(1), x)["params"]
    state = jaxnm.sparsify(N, M).init(params)
    variables = jl.variables(params, state)
    masks = variables[jl.MASKS]
    # Inference needs no MVUE stream (MVUE acts in the backward pass only) ...
    np.testing.assert_array_equal(
        model.apply(variables, x), model.apply(variables, x, rngs={jl.RNG_STREAM: _key()})
    )
    # ... a gradient does.
    with pytest.raises(ValueError, match="mvue"):
        jax.grad(lambda p: model.apply(jl.variables(p, state), x).sum())(params)
    # No masks, or masks of other paths: an error, never a silently dense layer.
    with pytest.raises(ValueError, match="no 'nm_masks' collection"):
        model.apply({"params": params}, x)
    renamed = {f"renamed_{k}": v for k, v in masks.items()}
    with pytest.raises(ValueError, match="no entry for it"):
        model.apply({"params": params, jl.MASKS: renamed}, x)

    class Bad(nn.Module):
        @nn.compact
        def __call__(self, x):
            return jl.DenseGeneral((4, 8), name="g")(x)

    bad = Bad()
    x = jnp.ones((2, 8))
    params = bad.init(jax.random.key(0), x)["params"]
    masks = {"g": {"kernel": jnp.ones((8, 4, 8), bool)}}
    with pytest.raises(ValueError, match="layer `g`"):
        bad.apply({"params": params, jl.MASKS: masks}, x)


def test_summary_of_a_linen_training():
    # The summary reads the optimizer state; no step is compiled for it (CI budget: the conv
    # model's step compiles for ~25 s), the state after init has every row.
    model, _, history, _ = _train(_convnet, 0)
    summary = jaxnm.sparsity_summary(history[-1][1])
    rows = {jaxnm.format_path(r.path): r for r in summary.rows}
    assert {k for k, r in rows.items() if r.sparse} == {"c2/kernel", "head/kernel"}
    assert rows["c2/kernel"].shape == (3, 3, 8, 8) and rows["c2/kernel"].density == 0.5
    assert rows["c1/kernel"].reason == "axes (3, 8) not multiples of m=4"
    assert rows["c1/bias"].reason == "not named 'kernel'"


def _mixed(layers=jl):
    """jaxnm layers (``layers=jl``) next to plain nn.Dense / nn.Conv; ``layers=nn``: the same
    structure in plain Flax."""

    class Mixed(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = jnp.tanh(layers.Dense(16, name="nm", **_gs(layers))(x))
            h = jnp.tanh(nn.Dense(16, name="plain")(h))
            h = nn.relu(nn.Conv(8, (3,), name="plain_conv")(h[:, :, None].repeat(8, -1)))
            return layers.Dense(4, name="head")(h.mean(axis=1))

    return Mixed()


def test_mixed_linen_model_trains_sparse_under_the_default_selection():
    """Plain nn.Dense / nn.Conv next to jaxnm layers, default sparsify selection: the plain
    kernels are selected and, through jl.variables, train masked (not dense), so the exported
    model is the trained one."""
    model, x = _mixed(), jax.random.normal(jax.random.key(0), (8, 8))
    params = model.init(jax.random.key(1), x)["params"]
    tx = optax.chain(jaxnm.sparsify(N, M, refresh_every=1), optax.adam(0.05))
    opt_state = tx.init(params)
    masks = jaxnm.current_masks(opt_state)
    assert masks["plain"]["kernel"] is not None and masks["plain_conv"]["kernel"] is not None

    def loss(p, opt_state, key):
        out = model.apply(jl.variables(p, opt_state), x, rngs={jl.RNG_STREAM: key})
        return jnp.mean((out - 1.0) ** 2)

    @jax.jit
    def step(params, opt_state, key):
        grads = jax.grad(loss)(params, opt_state, key)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    for t in range(3):
        params, opt_state = step(params, opt_state, jax.random.key(t))
    masks = jaxnm.current_masks(opt_state)
    plain = _mixed(nn)
    np.testing.assert_allclose(
        model.apply(jl.variables(params, opt_state), x),
        plain.apply({"params": jaxnm.apply_masks(params, masks)}, x),  # the export
        rtol=1e-5,
        atol=1e-6,
    )
    # The plain layers' kernel gradients are the straight-through ones of the masked model.
    g = jax.grad(loss)(params, opt_state, jax.random.key(9))
    g_ste = jax.grad(
        lambda p: jnp.mean((plain.apply({"params": jaxnm.apply_masks(p, masks)}, x) - 1.0) ** 2)
    )(params)
    for name in ("plain", "plain_conv"):
        np.testing.assert_allclose(g[name]["kernel"], g_ste[name]["kernel"], rtol=1e-5, atol=1e-7)


def test_plain_flax_attention_gets_masks_along_its_contraction():
    """A stock nn.MultiHeadDotProductAttention (no jaxnm seams) under the default selection:
    every projection's mask is transposable N:M on its flattened (in, out) view, and the
    masked training forward equals the plain model on the exported kernels."""
    model = nn.MultiHeadDotProductAttention(num_heads=4, qkv_features=16)
    x = jax.random.normal(jax.random.key(0), (2, 4, 16))
    params = model.init(jax.random.key(1), x)["params"]
    opt_state = jaxnm.sparsify(N, M).init(params)
    masks = jaxnm.current_masks(opt_state)
    # The public default predicate, passed explicitly, selects the same views and masks.
    explicit = jaxnm.sparsify(N, M, include=jaxnm.default_include(M, True)).init(params)
    jax.tree.map(np.testing.assert_array_equal, jaxnm.current_masks(explicit), masks)
    for name in ("query", "key", "value", "out"):
        mask = masks[name]["kernel"]
        assert mask.shape == params[name]["kernel"].shape
        assert bool(jaxnm.is_transposable_nm(mask.reshape(16, 16), N, M)), name
    exported = jaxnm.apply_masks(params, masks)
    np.testing.assert_allclose(
        model.apply(jl.variables(params, opt_state), x),
        model.apply({"params": exported}, x),
        rtol=1e-6,
    )
