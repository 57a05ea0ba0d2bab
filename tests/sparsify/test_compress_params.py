"""jaxnm.compress_params (jaxnm/_compress_params.py): compressing a trained model from its state."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxnm


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
