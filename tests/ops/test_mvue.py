import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import jaxnm
from jaxnm.ops import approx_2_4_inclusion, mvue, mvue_uniforms, mvue_with_mask

SETTINGS = [(1, 2, "exact"), (2, 4, "exact"), (2, 4, "approx")]
NUM_KEYS = 20000
Z = 5.0  # per-entry z-score bound; seeds are fixed, so the tests are deterministic


def _test_array():
    """(16, 3) with groups of 4 or 2 along axis 0: balanced, dominant, sparse and zero groups."""
    rng = np.random.default_rng(0)
    x = rng.uniform(0.2, 1.0, (16, 3)) * rng.choice([-1.0, 1.0], (16, 3))
    x[0:4, 0] = [-0.5, 0.1, 0.2, -0.05]  # dominant (BRIEF §5)
    x[4:8, 0] = [0.0, 0.0, 0.0, 0.0]  # all zero
    x[8:12, 0] = [0.0, 0.7, 0.0, 0.0]  # one nonzero
    x[12:16, 0] = [0.3, 0.0, -0.3, 0.0]  # two equal nonzeros
    x[0:4, 1] = [0.25, 0.25, 0.25, 0.25]  # ties, exactly balanced
    x[4:8, 1] = [1.0, 1.0, 0.0, 0.0]  # max == S/2
    return x.astype(np.float32)


def _samples(x, n, m, method, num=NUM_KEYS, dtype=jnp.float32):
    keys = jax.random.split(jax.random.key(123), num)
    fn = jax.jit(
        jax.vmap(lambda k: mvue(jnp.asarray(x, dtype), n, m, k, approx=method == "approx"))
    )
    return np.asarray(fn(keys).astype(jnp.float32), np.float64)


@pytest.mark.parametrize("n,m,method", SETTINGS)
def test_unbiased_and_variance_matches_closed_form(n, m, method, mvue_ref):
    x = _test_array()
    out = _samples(x, n, m, method)
    var, mu4 = mvue_ref.moments(x, n, m, method)
    mean_err = np.abs(out.mean(0) - x)
    assert np.all(mean_err <= Z * np.sqrt(var / NUM_KEYS) + 1e-6), mean_err
    emp_var = out.var(0, ddof=1)
    # Std of the sample variance: sqrt((mu4 - var^2) / K), plus the chi-square term from
    # estimating the mean, var * (Z^2 + 1) / K.
    var_bound = (
        Z * np.sqrt(np.maximum(mu4 - var**2, 0) / NUM_KEYS) + var * (Z**2 + 1) / NUM_KEYS + 1e-7
    )
    assert np.all(np.abs(emp_var - var) <= var_bound), (emp_var, var)
    # Entries kept with probability 1 are exact (zero variance).
    np.testing.assert_array_equal(emp_var[var == 0], 0.0)


def test_dominant_case_is_unbiased_and_test_has_power(mvue_ref):
    x = np.array([-0.5, 0.1, 0.2, -0.05], np.float32)
    out = _samples(x, 2, 4, "exact")
    var, _ = mvue_ref.moments(x, 2, 4, "exact")
    np.testing.assert_allclose(var, [0.0, 0.025, 0.03, 0.015], rtol=1e-6)
    bound = Z * np.sqrt(var / NUM_KEYS)
    assert np.all(np.abs(out.mean(0) - x) <= bound + 1e-7)
    np.testing.assert_array_equal(out[:, 0], -0.5)  # the dominant entry is kept as is
    # The S/2 variant's mean [-.425, .121, .243, -.061] lies outside twice the bound.
    biased = np.array([-0.425, 0.121, 0.243, -0.061])
    assert np.all(np.abs(biased - x)[1:] > 2 * bound[1:])


@pytest.mark.parametrize("n,m,method", SETTINGS)
def test_kept_values(n, m, method, mvue_ref):
    x = _test_array()
    out = _samples(x, n, m, method, num=64)
    p = mvue_ref.inclusion(x, n, m, method)
    kept = out != 0
    # A nonzero output equals x / p (the inverse-probability weight) exactly up to rounding.
    expected = np.broadcast_to(np.where(p > 0, x / np.where(p > 0, p, 1), 0), out.shape)
    np.testing.assert_allclose(out[kept], expected[kept], rtol=2e-6)


def test_approx_inclusion_matches_enumeration(mvue_ref):
    x = _test_array()
    groups = np.abs(x).reshape(4, 4, 3)
    got = np.stack(approx_2_4_inclusion([jnp.asarray(groups[:, i]) for i in range(4)]), axis=1)
    np.testing.assert_allclose(
        got.reshape(16, 3), mvue_ref.inclusion(x, 2, 4, "approx"), rtol=1e-6, atol=1e-7
    )


_jit_mvue_with_mask = jax.jit(
    lambda x, n, m, key, method: mvue_with_mask(x, n, m, key, approx=method == "approx"),
    static_argnums=(1, 2, 4),
)


@given(
    x=hnp.arrays(
        np.float32,
        (8, 3),
        elements=st.sampled_from([0.0, -0.0, 1.0, -1.0, 0.5, 1e-30, -3e20, 2.0, 1e-8]),
    ),
    setting=st.sampled_from(SETTINGS),
    seed=st.integers(0, 2**16),
)
def test_exactly_n_kept_per_group(x, setting, seed):
    n, m, method = setting
    values, keep = _jit_mvue_with_mask(jnp.asarray(x), n, m, jax.random.key(seed), method)
    keep, values = np.asarray(keep), np.asarray(values)
    groups = keep.reshape(-1, m, x.shape[1])
    np.testing.assert_array_equal(groups.sum(axis=1), n)
    assert np.all(values[~keep] == 0)
    assert np.all(np.isfinite(values))
    # Zeros are never kept as nonzero; nonzero entries are kept up to n per group.
    nnz = (x != 0).reshape(-1, m, x.shape[1]).sum(axis=1)
    kept_nnz = (values != 0).reshape(-1, m, x.shape[1]).sum(axis=1)
    np.testing.assert_array_equal(kept_nnz, np.minimum(n, nnz))
    assert np.all(np.sign(values[keep]) * np.sign(x[keep]) >= 0)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("n,m,method", SETTINGS)
def test_low_precision(dtype, n, m, method, mvue_ref):
    x = np.asarray(jnp.asarray(_test_array(), dtype).astype(jnp.float32))
    out = mvue(jnp.asarray(x, dtype), n, m, jax.random.key(0), approx=method == "approx")
    assert out.dtype == dtype
    samples = _samples(x, n, m, method, num=4000, dtype=dtype)
    var, _ = mvue_ref.moments(x, n, m, method)
    # Kept values are rounded once to the output dtype: allow that relative error on the mean.
    rounding = (
        float(jnp.finfo(dtype).eps)
        * np.abs(x)
        / np.maximum(mvue_ref.inclusion(x, n, m, method), 1e-3)
    )
    assert np.all(np.abs(samples.mean(0) - x) <= Z * np.sqrt(var / 4000) + rounding)


def test_axis_jit_vmap():
    x = jax.random.normal(jax.random.key(0), (3, 8, 5))
    key = jax.random.key(1)
    values, keep = mvue_with_mask(x, 2, 4, key, axis=1)  # eager
    np.testing.assert_array_equal(np.asarray(keep).reshape(3, 2, 4, 5).sum(axis=2), 2)
    jitted = jax.jit(lambda x, k: mvue(x, 2, 4, k, axis=-2))
    np.testing.assert_array_equal(values, jitted(x, key))
    keys = jax.random.split(key, 3)
    one = jax.jit(lambda x, k: mvue(x, 1, 2, k, axis=0))
    batched = jax.jit(jax.vmap(one))(x, keys)
    for i in range(3):
        np.testing.assert_array_equal(batched[i], one(x[i], keys[i]))
    # Raw uint32 keys work too.
    assert jitted(x, jax.random.PRNGKey(0)).shape == x.shape
    assert jaxnm.mvue is mvue


@pytest.mark.parametrize("n,m,method", SETTINGS)
def test_non_finite_groups_become_nan(n, m, method):
    x = jnp.array([[jnp.nan, 1.0, 2.0, 3.0], [jnp.inf, 1.0, -2.0, 0.0], [1.0, -1.0, 2.0, 0.5]]).T
    values, keep = mvue_with_mask(x, n, m, jax.random.key(0), approx=method == "approx")
    values, keep = np.asarray(values).reshape(-1, m, 3), np.asarray(keep).reshape(-1, m, 3)
    np.testing.assert_array_equal(keep.sum(axis=1), n)
    first = np.arange(m)[None, :] < n
    for col in (0, 1):  # every group of these columns holds a non-finite entry
        np.testing.assert_array_equal(keep[0, :, col], first[0])
        assert np.isnan(values[0, :n, col]).all() and (values[0, n:, col] == 0).all()
    assert np.isfinite(values[..., 2]).all()


def test_bad_inputs():
    x = jnp.ones((8, 3))
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="must be a multiple of m=4"):
        mvue(jnp.ones((6, 3)), 2, 4, key)
    with pytest.raises(ValueError, match="supports n:m in"):
        mvue(x, 4, 8, key)
    with pytest.raises(ValueError, match="supports n:m in"):
        mvue(x, 1, 2, key, approx=True)
    with pytest.raises(TypeError, match="`approx` must be a bool"):
        mvue(x, 2, 4, key, approx="topk")
    with pytest.raises(ValueError, match="`key` is required"):
        mvue(x, 2, 4, None)
    with pytest.raises(ValueError, match="`x` must have a floating dtype"):
        mvue(jnp.ones((8, 3), jnp.int32), 2, 4, key)
    with pytest.raises(TypeError, match="`n` must be a static Python int"):
        mvue(x, 2.5, 4, key)


def test_uniforms_are_uniform_and_decorrelated():
    def chi2(u, bins=64):
        counts = np.histogram(u, bins=bins, range=(0.0, 1.0))[0]
        expected = len(u) / bins
        return np.sum((counts - expected) ** 2 / expected)

    # chi-square with 63 degrees of freedom: mean 63, std sqrt(126) ~ 11.2; 6 std bound.
    bound = 63 + 6 * np.sqrt(126)
    u1, u2 = (np.asarray(v) for v in mvue_uniforms(jax.random.key(0), (256, 256), 2))
    assert u1.dtype == np.float32 and 0 <= u1.min() and u1.max() < 1
    for u in (u1.ravel(), u2.ravel()):
        assert chi2(u) < bound
    # Over keys, one fixed entry is uniform too (the property unbiasedness relies on).
    per_key = jax.jit(jax.vmap(lambda k: mvue_uniforms(k, (4,), 1)[0]))
    first = np.asarray(per_key(jax.random.split(jax.random.key(1), 20000)))
    for j in range(4):
        assert chi2(first[:, j]) < bound
    # Neighbouring entries, the two arrays, and neighbouring keys are uncorrelated.
    num = u1.size
    pairs = [
        (u1[:, :-1], u1[:, 1:]),
        (u1[:-1], u1[1:]),
        (u1, u2),
        (first[:-1, 0], first[1:, 0]),
        (first[:, 0], first[:, 1]),
    ]
    for a, b in pairs:
        r = np.corrcoef(a.ravel(), b.ravel())[0, 1]
        assert abs(r) < 6 / np.sqrt(min(a.size, num)), r


def test_mvue_setting_is_validated_once_and_parses_cli_strings():
    from jaxnm import MVUE

    for spec in (MVUE(1, 2), MVUE(2, 4), MVUE(2, 4, approx=True)):
        assert MVUE.parse(str(spec)) == spec
        assert hash(spec) == hash(MVUE(spec.n, spec.m, approx=spec.approx))
    assert MVUE() == MVUE(2, 4, approx=False) == MVUE.parse("mvue_2_4")
    assert MVUE.parse("none") is None
    assert isinstance(MVUE(np.int64(2), 4).n, int)
    with pytest.raises(ValueError, match=r"exact MVUE supports n:m in \{1:2, 2:4\}, got n:m = 4:8"):
        MVUE(4, 8)
    with pytest.raises(ValueError, match=r"approx=True supports n:m in \{2:4\}"):
        MVUE(1, 2, approx=True)
    with pytest.raises(TypeError, match="`approx` must be a bool"):
        MVUE(2, 4, approx=1)
    with pytest.raises(TypeError, match="`n` must be a static Python int"):
        MVUE(2.0, 4)
    for bad in ("approx_mvue_2_4", "2:4", "mvue_2_4_exact", "MVUE(2, 4)"):
        with pytest.raises(ValueError, match="must be 'none' or 'mvue_<n>_<m>"):
            MVUE.parse(bad)
    with pytest.raises(ValueError, match="exact MVUE supports"):
        MVUE.parse("mvue_4_8")
    with pytest.raises(AttributeError):
        MVUE().n = 1
