"""Tests of jaxnm.convert.nnx: AdaPrune and magnitude pruning of NNX models, BN recalibration."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jaxnm
from jaxnm import convert


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
