"""Never silently dense: selection errors and warnings, the summary, strict apply_masks,
compressing from the state, and the orbax restore hint."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxnm


def _params():
    k1, k2 = jax.random.split(jax.random.key(0))
    return {
        "dense": {"kernel": jax.random.normal(k1, (16, 8)), "bias": jnp.zeros(8)},
        "odd": {"kernel": jax.random.normal(k2, (6, 8))},
    }


def test_include_selecting_nothing_raises_with_the_path_form():
    tx = jaxnm.sparsify(2, 4, include=lambda path, leaf: path == "dense/kernel")
    with pytest.raises(
        ValueError, match=r"selects no parameter.*format_path.*\('dense', 'kernel'\)"
    ):
        tx.init(_params())
    tx = jaxnm.sparsify(2, 4, include=lambda p, _: jaxnm.format_path(p) == "dense/kernel")
    assert jaxnm.current_masks(tx.init(_params()))["dense"]["kernel"] is not None


def test_default_selection_of_nothing_warns():
    params = {"w1": jnp.ones((8, 8)), "layer": {"kernel": jnp.ones((30, 64))}}
    with pytest.warns(UserWarning, match=r"selects no parameter.*'w1'.*not named 'kernel'"):
        state = jaxnm.sparsify(2, 4).init(params)
    reasons = {jaxnm.format_path(r.path): r.reason for r in jaxnm.sparsity_summary(state).rows}
    assert reasons == {
        "w1": "not named 'kernel'",
        "layer/kernel": "axes (30, 64) not multiples of m=4",
    }


def test_summary_of_a_plain_pytree():
    state = jaxnm.sparsify(2, 4).init(_params())
    assert (state.n, state.m, state.transposable) == (2, 4, True)
    summary = jaxnm.sparsity_summary(state)
    assert str(summary).splitlines() == [
        "parameter     shape    n:m    density  dense because",
        "dense/kernel  (16, 8)  2:4-T  0.500",
        "dense/bias    (8,)     -      1.000    not named 'kernel'",
        "odd/kernel    (6, 8)   -      1.000    axes (6, 8) not multiples of m=4",
        "1 of 3 parameters sparse (128 of 184 weights); 0.652 of all weights kept",
    ]
    dense_start = jaxnm.sparsify(2, 4, start_step=2, transposable=False).init(_params())
    (row,) = jaxnm.sparsity_summary(dense_start).sparse
    assert (row.density, row.transposable) == (1.0, False)


def test_apply_masks_rejects_a_broadcasting_mask():
    params = {"k": jnp.ones((64, 64))}
    with pytest.raises(ValueError, match=r"`k`.*\(64, 1\).*\(64, 64\)"):
        jaxnm.apply_masks(params, {"k": jnp.ones((64, 1), bool)})


def test_compress_params_end_to_end():
    """train -> export (apply_masks) -> compress from the state -> nm_matmul == masked dense."""
    params = {"kernel": jax.random.normal(jax.random.key(0), (16, 8))}
    x = jax.random.normal(jax.random.key(1), (5, 16))
    tx = optax.chain(jaxnm.sparsify(2, 4, refresh_every=1), optax.adam(0.1))
    state = tx.init(params)

    def loss(p, s):
        return jnp.sum(jnp.sin(x @ jaxnm.apply_masks(p, jaxnm.current_masks(s))["kernel"]))

    for _ in range(3):
        grads = jax.grad(loss)(params, state)
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    exported = jaxnm.apply_masks(params, jaxnm.current_masks(state))["kernel"]
    c = jaxnm.compress_params(params, state)["kernel"]  # no n, no m
    assert (c.n, c.m, c.shape) == (2, 4, (16, 8))
    np.testing.assert_allclose(jaxnm.kernels.nm_matmul(x, c), x @ exported, rtol=1e-5, atol=1e-5)
    dense_phase = jaxnm.sparsify(2, 4, start_step=5).init(params)
    with pytest.raises(ValueError):
        jaxnm.compress_params(params, dense_phase)  # all-ones masks are not 2:4


def test_untargeted_orbax_restore_says_how(tmp_path):
    import orbax.checkpoint as ocp

    state = optax.chain(jaxnm.sparsify(2, 4), optax.sgd(0.1)).init(_params())
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(tmp_path / "s", state)
        ckpt.wait_until_finished()
        restored = ckpt.restore(tmp_path / "s")
    with pytest.raises(ValueError, match=r"found 0.*without a target.*to_shape_dtype_struct"):
        jaxnm.current_masks(restored)
