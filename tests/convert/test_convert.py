"""Tests of jaxnm.convert: masked least squares, Gram matrices, AdaPrune, BN recalibration."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

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


class _Net(nnx.Module):
    def __init__(self, rngs):
        self.conv = nnx.Conv(8, 8, (3, 3), rngs=rngs)
        self.bn = nnx.BatchNorm(8, rngs=rngs)
        self.fc = nnx.Linear(8, 16, rngs=rngs)
        self.head = nnx.Linear(16, 3, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.bn(self.conv(x)))
        return self.head(nnx.relu(self.fc(x.mean(axis=(1, 2)))))


def _net_and_data():
    model = _Net(nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (16, 6, 6, 8))
    model.train()
    model(x)  # non-trivial running statistics
    model.eval()
    return model, x


@pytest.mark.parametrize("transposable,sequential", [(True, True), (False, False)])
def test_adaprune_converts_selected_layers_and_beats_magnitude(transposable, sequential):
    model, x = _net_and_data()
    dense_out = model(x)
    dense_kernels = {p: m.kernel[...] for p, m in nnx.iter_modules(model) if hasattr(m, "kernel")}
    magnitude = nnx.clone(model)
    masks = convert.magnitude_prune(magnitude, n=2, m=4, transposable=transposable)
    reports = convert.adaprune(model, x, n=2, m=4, transposable=transposable, sequential=sequential)
    # sparsify's default rule: transposable needs (in, out) to tile by m, plain N:M only `in`
    selected = [("conv",), ("fc",)] if transposable else [("conv",), ("fc",), ("head",)]
    assert sorted(r.path for r in reports) == sorted(masks) == selected
    if transposable:
        np.testing.assert_array_equal(model.head.kernel[...], dense_kernels[("head",)])
    for path, mask in masks.items():
        kernel = getattr(model, path[0]).kernel[...]
        expected = convert.kernel_mask(dense_kernels[path], 2, 4, transposable=transposable)
        np.testing.assert_array_equal(mask, expected)
        assert bool(jnp.all(jnp.where(mask, True, kernel == 0)))  # zero outside the mask
        if transposable:
            assert bool(jaxnm.is_transposable_nm(mask, 2, 4))
        else:
            assert bool(jaxnm.is_nm(mask, 2, 4, axis=-2))
    for r in reports:
        assert r.reconstructed_error < r.magnitude_error
    err_mag = jnp.mean((magnitude(x) - dense_out) ** 2)
    err_fit = jnp.mean((model(x) - dense_out) ** 2)
    assert float(err_fit) < float(err_mag)


def test_adaprune_include_and_errors():
    model, x = _net_and_data()
    reports = convert.adaprune(
        model, [x[:8], x[8:]], n=2, m=4, include=lambda path, kernel: path[0] == "fc"
    )
    assert [r.path for r in reports] == [("fc",)]
    with pytest.raises(ValueError, match="head"):
        convert.adaprune(model, x, n=2, m=4, include=lambda path, kernel: path[0] == "head")
    grouped = nnx.Conv(8, 8, (3, 3), feature_group_count=2, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="grouped"):
        convert.magnitude_prune(grouped, n=2, m=4)
    with pytest.raises(ValueError, match="`n`"):
        convert.adaprune(model, x, n=5, m=4)


def test_recalibrate_batch_norm_averages_batch_statistics():
    bn = nnx.BatchNorm(4, momentum=0.9, rngs=nnx.Rngs(0))
    bn.eval()
    batches = [jax.random.normal(jax.random.key(i), (32, 4)) * (i + 1) + i for i in range(3)]
    scale_before = bn.scale[...]
    assert convert.recalibrate_batch_norm(bn, batches) == 1
    np.testing.assert_allclose(bn.mean[...], np.mean([b.mean(0) for b in batches], 0), rtol=1e-5)
    np.testing.assert_allclose(bn.var[...], np.mean([b.var(0) for b in batches], 0), rtol=1e-4)
    assert bn.momentum == 0.9 and bn.use_running_average is True
    np.testing.assert_array_equal(bn.scale[...], scale_before)
    with pytest.raises(ValueError, match="empty"):
        convert.recalibrate_batch_norm(bn, [])
    assert convert.recalibrate_batch_norm(nnx.Linear(2, 2, rngs=nnx.Rngs(0)), batches) == 0
