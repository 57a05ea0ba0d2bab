import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxnm


def test_nm_mask_keeps_largest_along_axis():
    w = jnp.array([[1.0, -4.0, 2.0, 3.0]])
    np.testing.assert_array_equal(jaxnm.nm_mask(w, 2, 4, axis=-1), [[False, True, False, True]])


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("n,m", [(1, 2), (2, 4), (4, 8), (2, 8), (8, 16)])
def test_nm_mask_valid_default_axis(dtype, n, m):
    w = jax.random.normal(jax.random.key(0), (3, 2 * m, 5), dtype)
    mask = jaxnm.nm_mask(w, n, m)
    assert mask.dtype == jnp.bool_ and mask.shape == w.shape
    assert bool(jaxnm.is_nm(mask, n, m))
    counts = np.asarray(mask).reshape(3, 2, m, 5).sum(axis=2)
    np.testing.assert_array_equal(counts, n)


def test_nm_mask_matches_numpy_reference():
    w = np.asarray(jax.random.normal(jax.random.key(1), (16, 8)))
    mask = np.asarray(jaxnm.nm_mask(jnp.asarray(w), 2, 4, axis=0))
    groups = np.abs(w).reshape(4, 4, 8)
    order = np.argsort(-groups, axis=1, kind="stable")[:, :2, :]
    ref = np.zeros_like(groups, dtype=bool)
    np.put_along_axis(ref, order, True, axis=1)
    np.testing.assert_array_equal(mask, ref.reshape(16, 8))


def test_ties_and_nonfinite_are_deterministic_and_valid():
    w = jnp.array([[jnp.nan, 1.0, jnp.inf, 1.0, 0.0, 0.0, -jnp.inf, jnp.nan]])
    mask = jaxnm.nm_mask(w, 2, 4, axis=-1)
    # inf ranks first, the earlier of two equal values next, NaN last.
    np.testing.assert_array_equal(mask, [[False, True, True, False, True, False, True, False]])


def test_jit_vmap_eager_agree():
    w = jax.random.normal(jax.random.key(2), (4, 16, 8))
    eager = jaxnm.nm_mask(w, 2, 4)
    jitted = jax.jit(lambda x: jaxnm.nm_mask(x, 2, 4))(w)
    vmapped = jax.vmap(lambda x: jaxnm.nm_mask(x, 2, 4))(w)
    np.testing.assert_array_equal(eager, jitted)
    np.testing.assert_array_equal(eager, vmapped)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: jaxnm.nm_mask(jnp.ones((8, 8), jnp.int32), 2, 4), "floating"),
        (lambda: jaxnm.nm_mask(jnp.ones((8, 8)), 0, 4), "`n`"),
        (lambda: jaxnm.nm_mask(jnp.ones((8, 8)), 5, 4), "`n`"),
        (lambda: jaxnm.nm_mask(jnp.ones((6, 8)), 2, 4), r"\(6, 8\)"),
        (lambda: jaxnm.nm_mask(jnp.ones((8, 8)), 2, 4, axis=2), "`axis`"),
    ],
)
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_is_nm_rejects_wrong_counts():
    mask = jnp.array([[True, True, True, False]])
    assert not bool(jaxnm.is_nm(mask, 2, 4, axis=-1))
    assert bool(jaxnm.is_nm(mask, 3, 4, axis=-1))
