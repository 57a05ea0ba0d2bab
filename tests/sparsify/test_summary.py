"""jaxnm.sparsity_summary (jaxnm/_summary.py) of a plain pytree's optimizer state."""

import jax
import jax.numpy as jnp

import jaxnm


def _params():
    k1, k2 = jax.random.split(jax.random.key(0))
    return {
        "dense": {"kernel": jax.random.normal(k1, (16, 8)), "bias": jnp.zeros(8)},
        "odd": {"kernel": jax.random.normal(k2, (6, 8))},
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
