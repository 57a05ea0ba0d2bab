"""jaxnm.sparsify inside optax wrappers: masked, multi_transform, inject_hyperparams."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxnm


def _params():
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    return {
        "a": {"kernel": jax.random.normal(k1, (8, 8)), "bias": jnp.zeros(8)},
        "b": {"kernel": jax.random.normal(k2, (8, 16))},
        "c": {"kernel": jax.random.normal(k3, (16, 8))},
    }


def _loss(p, x):
    h = jnp.tanh(x @ p["a"]["kernel"] + p["a"]["bias"])
    return jnp.mean((jnp.tanh(h @ p["b"]["kernel"]) @ p["c"]["kernel"] - 1.0) ** 2)


def _train(tx, steps=3):
    params, x = _params(), jax.random.normal(jax.random.key(1), (4, 8))
    state = tx.init(params)

    @jax.jit
    def step(params, state):
        loss, g = jax.value_and_grad(
            lambda p: _loss(jaxnm.apply_masks(p, jaxnm.current_masks(state)), x)
        )(params)
        updates, state = tx.update(g, state, params)
        return optax.apply_updates(params, updates), state, loss

    losses = []
    for _ in range(steps):
        params, state, loss = step(params, state)
        losses.append(float(loss))
    return params, state, losses


def test_masked_wrapper():
    mask = {"a": {"kernel": True, "bias": False}, "b": {"kernel": False}, "c": {"kernel": True}}
    tx = optax.chain(optax.masked(jaxnm.sparsify(2, 4, refresh_every=1), mask), optax.sgd(0.1))
    params, state, losses = _train(tx)
    masks = jaxnm.current_masks(state)
    assert masks["b"]["kernel"] is None and masks["a"]["bias"] is None
    assert bool(jaxnm.is_transposable_nm(masks["c"]["kernel"], 2, 4))
    assert losses[-1] < losses[0]
    # A mask function, as optax accepts.
    fn = lambda p: jax.tree_util.tree_map_with_path(lambda k, _: k[0].key != "b", p)  # noqa: E731
    tx = optax.chain(optax.masked(jaxnm.sparsify(2, 4), fn), optax.sgd(0.1))
    assert jaxnm.current_masks(_train(tx, 1)[1])["b"]["kernel"] is None


def test_multi_transform_groups_with_their_own_settings():
    labels = {
        "a": {"kernel": "s24", "bias": "dense"},
        "b": {"kernel": "s48"},
        "c": {"kernel": "dense"},
    }
    tx = optax.multi_transform(
        {
            "s24": optax.chain(jaxnm.sparsify(2, 4), optax.adam(0.01)),
            "s48": optax.chain(jaxnm.sparsify(4, 8, transposable=False), optax.adam(0.01)),
            "dense": optax.adam(0.01),
        },
        labels,
    )
    params, state, losses = _train(tx)
    masks = jaxnm.current_masks(state)  # both groups merged
    assert masks["c"]["kernel"] is None and masks["a"]["bias"] is None
    assert bool(jaxnm.is_transposable_nm(masks["a"]["kernel"], 2, 4))
    assert bool(jaxnm.is_nm(masks["b"]["kernel"], 4, 8, axis=-2))
    assert [(s.n, s.m) for s in jaxnm.find_states(state)] == [(2, 4), (4, 8)]
    with pytest.raises(ValueError, match="find_states"):
        jaxnm.find_state(state)
    rows = {jaxnm.format_path(r.path): r for r in jaxnm.sparsity_summary(state).sparse}
    assert (rows["a/kernel"].n, rows["a/kernel"].m, rows["a/kernel"].transposable) == (2, 4, True)
    assert (rows["b/kernel"].n, rows["b/kernel"].m, rows["b/kernel"].transposable) == (4, 8, False)
    assert losses[-1] < losses[0]
    # Compressed from the state: each group with its own n:m, no settings restated.
    compressed = jaxnm.compress_params(params, state)
    assert (compressed["a"]["kernel"].n, compressed["b"]["kernel"].m) == (2, 8)
    np.testing.assert_array_equal(compressed["c"]["kernel"], params["c"]["kernel"])
    np.testing.assert_array_equal(
        jaxnm.decompress(compressed["b"]["kernel"]),
        jnp.where(masks["b"]["kernel"], params["b"]["kernel"], 0),
    )


def test_inject_hyperparams_recipe_with_end_step_and_include():
    """The documented recipe: every setting but srste static, srste scheduled."""
    injected = optax.inject_hyperparams(jaxnm.sparsify, static_args=jaxnm.SPARSIFY_STATIC_ARGS)(
        n=2,
        m=4,
        refresh_every=1,
        end_step=2,
        dense_tail=True,
        include=lambda path, leaf: path[0] != "c" and path[-1] == "kernel",
        srste=optax.linear_schedule(0.0, 0.1, 4),
    )
    tx = optax.chain(injected, optax.sgd(0.1))
    _, state, losses = _train(tx, 3)
    assert jaxnm.current_masks(state)["c"]["kernel"] is None
    assert bool(jaxnm.current_masks(state)["a"]["kernel"].all())  # dense after end_step=2
    assert float(state[0].hyperparams["srste"]) == pytest.approx(0.05)  # used by the 3rd update
    assert np.isfinite(losses).all()
    # end_step left schedulable: a clear error naming the recipe, not a tracer error.
    bad = optax.inject_hyperparams(jaxnm.sparsify, static_args=("n", "m"))(n=2, m=4, end_step=5)
    with pytest.raises(TypeError, match="SPARSIFY_STATIC_ARGS"):
        bad.init(_params())
