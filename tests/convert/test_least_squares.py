"""Tests of jaxnm.convert.least_squares: masked least squares and Gram matrices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxnm
from jaxnm import convert


def _problem(seed=0, p=96, k=16, out=8, n=2, m=4):
    rng = np.random.default_rng(seed)
    # correlated features, as layer inputs are: then re-fitting the kept weights pays off
    x = (rng.normal(size=(p, k)) @ rng.normal(size=(k, k))).astype(np.float32)
    w = rng.normal(size=(k, out)).astype(np.float32)
    mask = np.asarray(jaxnm.nm_mask(jnp.asarray(w), n, m, axis=0))
    return x, w, mask


def test_masked_least_squares_matches_lstsq_per_column():
    x, w, mask = _problem()
    gram = convert.dense_gram(jnp.asarray(x))
    got = np.asarray(convert.masked_least_squares(gram, jnp.asarray(w), mask, damp=1e-7))
    for j in range(w.shape[1]):
        kept = mask[:, j]
        sol, *_ = np.linalg.lstsq(x[:, kept], x @ w[:, j], rcond=None)
        np.testing.assert_allclose(got[kept, j], sol, rtol=2e-3, atol=2e-3)
        assert np.all(got[~kept, j] == 0.0)


def test_refit_never_worse_than_magnitude_and_chunking_agrees():
    x, w, mask = _problem(seed=1, k=32, out=16)
    gram = convert.dense_gram(jnp.asarray(x))
    full = convert.masked_least_squares(gram, jnp.asarray(w), mask)
    chunked = convert.masked_least_squares(gram, jnp.asarray(w), mask, chunk_size=3)
    np.testing.assert_allclose(full, chunked, rtol=1e-4, atol=1e-5)
    magnitude = jnp.where(mask, w, 0.0)
    err_mag = convert.reconstruction_error(gram, w, magnitude)
    err_fit = convert.reconstruction_error(gram, w, full)
    assert float(err_fit) < 0.7 * float(err_mag)
    # reconstruction_error is the relative output error, computed directly:
    direct = np.sum((x @ (w - np.asarray(full))) ** 2) / np.sum((x @ w) ** 2)
    np.testing.assert_allclose(float(err_fit), direct, rtol=1e-3)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_masked_least_squares_low_precision_dtype(dtype):
    x, w, mask = _problem(seed=2)
    gram = convert.dense_gram(jnp.asarray(x, dtype))
    got = convert.masked_least_squares(gram, jnp.asarray(w, dtype), mask)
    assert got.dtype == dtype
    assert bool(jnp.all(jnp.where(mask, True, got == 0)))
    ref = convert.masked_least_squares(gram, jnp.asarray(w), mask)
    np.testing.assert_allclose(np.asarray(got, np.float32), ref, rtol=0.05, atol=0.05)


def test_masked_least_squares_vmaps_over_layers():
    xs, ws, masks = zip(*[_problem(seed=s) for s in range(3)], strict=True)
    grams = jax.vmap(convert.dense_gram)(jnp.asarray(np.stack(xs)))
    batched = jax.vmap(convert.masked_least_squares)(grams, jnp.stack(ws), jnp.stack(masks))
    for i in range(3):
        np.testing.assert_allclose(
            batched[i], convert.masked_least_squares(grams[i], ws[i], masks[i]), rtol=1e-5
        )


def test_masked_least_squares_bad_shapes():
    x, w, mask = _problem()
    gram = convert.dense_gram(jnp.asarray(x))
    with pytest.raises(ValueError, match="`gram`"):
        convert.masked_least_squares(gram[:3], w, mask)
    with pytest.raises(ValueError, match="`w`"):
        convert.masked_least_squares(gram, w[:4], mask[:4])
    with pytest.raises(ValueError, match="`mask`"):
        convert.masked_least_squares(gram, w, mask[:, :2])


@pytest.mark.parametrize(
    "strides,padding,dilation",
    [((1, 1), "SAME", (1, 1)), ((2, 2), "VALID", (1, 1)), ((1, 2), ((1, 0), (2, 1)), (2, 1))],
)
def test_conv_gram_reproduces_conv_outputs(strides, padding, dilation):
    # For kernels A, B: sum(conv(x, A) * conv(x, B)) == trace(A2^T G B2), A2 = A.reshape(K, out).
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 7, 6, 3)), jnp.float32)
    a = jnp.asarray(rng.normal(size=(3, 2, 3, 4)), jnp.float32)
    b = jnp.asarray(rng.normal(size=(3, 2, 3, 4)), jnp.float32)
    dn = ("NHWC", "HWIO", "NHWC")
    kw = dict(rhs_dilation=dilation, dimension_numbers=dn, precision=jax.lax.Precision.HIGHEST)
    ya = jax.lax.conv_general_dilated(x, a, strides, padding, **kw)
    yb = jax.lax.conv_general_dilated(x, b, strides, padding, **kw)
    gram = convert.conv_gram(
        x, a.shape, strides, padding, rhs_dilation=dilation, dimension_numbers=dn
    )
    assert gram.shape == (18, 18)
    a2, b2 = a.reshape(18, 4), b.reshape(18, 4)
    np.testing.assert_allclose(jnp.sum(ya * yb), jnp.sum(a2 * (gram @ b2)), rtol=1e-4)
