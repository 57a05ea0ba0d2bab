import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.test_util import check_grads

import jaxnm
from jaxnm.ops import nm_conv, nm_conv_fn

NHWC = ("NHWC", "HWIO", "NHWC")


def _rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b) / np.linalg.norm(b)


def _problem(dtype=jnp.float32, groups=1, seed=0):
    kx, kw = jax.random.split(jax.random.key(seed))
    x = jax.random.normal(kx, (2, 6, 5, 8), dtype)
    w = jax.random.normal(kw, (3, 3, 8 // groups, 8), dtype)
    return x, w, jaxnm.nm_mask(w, 2, 4)


def _conv(x, w, **kw):
    return lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=NHWC, **kw)


@pytest.mark.parametrize(
    "conv_kwargs",
    [
        dict(window_strides=(1, 1), padding="SAME"),
        dict(window_strides=(2, 1), padding=((1, 0), (2, 1)), rhs_dilation=(1, 2)),
        dict(window_strides=(1, 1), padding="VALID", feature_group_count=2),
    ],
)
def test_dense_gradients_match_reference(conv_kwargs):
    groups = conv_kwargs.get("feature_group_count", 1)
    x, w, mask = _problem(groups=groups)
    strides, padding = conv_kwargs["window_strides"], conv_kwargs["padding"]
    extra = {k: v for k, v in conv_kwargs.items() if k not in ("window_strides", "padding")}

    def ref(a, b):
        return lax.conv_general_dilated(a, b, strides, padding, dimension_numbers=NHWC, **extra)

    def ours(a, b):
        return nm_conv(a, b, mask, strides, padding, **extra)

    @jax.jit
    def compute(x, w):
        y, pullback = jax.vjp(ours, x, w)
        dy = jax.random.normal(jax.random.key(9), y.shape)
        y_ref, pull_masked = jax.vjp(lambda a: ref(a, w * mask), x)
        _, pull_dense = jax.vjp(lambda b: ref(x, b), w)
        return y, *pullback(dy), y_ref, pull_masked(dy)[0], pull_dense(dy)[0]

    y, dx, dw, y_ref, dx_ref, dw_dense = compute(x, w)
    np.testing.assert_array_less(_rel_err(y, y_ref), 1e-5)
    np.testing.assert_array_less(_rel_err(dx, dx_ref), 1e-5)
    np.testing.assert_array_less(_rel_err(dw, dw_dense), 1e-5)  # straight through


def test_nchw_layout_and_check_grads():
    x, w, mask = _problem()
    dn = ("NCHW", "OIHW", "NCHW")
    x_t, w_t, mask_t = x.transpose(0, 3, 1, 2), w.transpose(3, 2, 0, 1), mask.transpose(3, 2, 0, 1)
    y = nm_conv(x_t, w_t, mask_t, (1, 1), "SAME", dimension_numbers=dn)
    np.testing.assert_allclose(y.transpose(0, 2, 3, 1), _conv(x, w * mask), rtol=1e-5, atol=1e-5)
    fn = functools.partial(nm_conv, window_strides=(1, 1), padding="SAME", dimension_numbers=dn)
    check_grads(lambda a: fn(a, w_t, mask_t), (x_t,), order=1, modes=["rev"])
    ones = jnp.ones(w_t.shape, bool)
    check_grads(lambda a, b: fn(a, b, ones), (x_t[:1], w_t), order=1, modes=["rev"])


def _manual_pruned_dw(x, w, dy, key, grad_sparsity, dn_out_feature=-1):
    """Oracle: MVUE along N*H*W (memory order), ragged tail dense, then the dense transpose."""
    spec = grad_sparsity
    flat = jnp.moveaxis(dy, dn_out_feature, -1).reshape(-1, dy.shape[dn_out_feature])
    full = flat.shape[0] - flat.shape[0] % spec.m
    head = jaxnm.mvue(flat[None, :full], spec.n, spec.m, key, axis=1, approx=spec.approx)[0]
    pruned = jnp.concatenate([head, flat[full:]]).reshape(dy.shape)
    _, pull = jax.vjp(lambda b: _conv(x, b), w)
    return pull(pruned)[0]


@pytest.mark.parametrize(
    "grad_sparsity", [jaxnm.MVUE(1, 2), jaxnm.MVUE(2, 4), jaxnm.MVUE(2, 4, approx=True)], ids=str
)
@pytest.mark.parametrize("rows", [6, 7])
def test_kernel_gradient_prunes_positions_per_channel(grad_sparsity, rows):
    # 2*6*5 = 60 positions (a multiple of 2 and 4); 2*7*5 = 70 leaves a dense tail of 2 for m=4.
    _, w, mask = _problem()
    x = jax.random.normal(jax.random.key(rows), (2, rows, 5, 8))
    dy = jax.random.normal(jax.random.key(4), (2, rows, 5, 8))
    key = jax.random.key(3)

    @jax.jit
    def dw(x, w, dy, key):
        conv = functools.partial(nm_conv, grad_sparsity=grad_sparsity, key=key)
        return jax.vjp(lambda b: conv(x, b, mask, (1, 1), "SAME"), w)[1](dy)[0]

    expected = jax.jit(_manual_pruned_dw, static_argnums=4)(x, w, dy, key, grad_sparsity)
    np.testing.assert_allclose(dw(x, w, dy, key), expected, rtol=1e-5, atol=1e-5)


def test_mvue_kernel_gradient_is_unbiased(mvue_ref):
    kx, kw, kg = jax.random.split(jax.random.key(11), 3)
    x = jax.random.normal(kx, (1, 4, 4, 4))
    w = jax.random.normal(kw, (2, 2, 4, 4))
    mask = jaxnm.nm_mask(w, 2, 4)
    dy = jax.random.normal(kg, (1, 4, 4, 4))
    conv = functools.partial(nm_conv, window_strides=(1, 1), padding="SAME")
    num = 20000

    def dw_for(key):
        _, pull = jax.vjp(lambda b: conv(x, b, mask, grad_sparsity=jaxnm.MVUE(2, 4), key=key), w)
        return pull(dy)[0]

    dws = np.asarray(jax.jit(jax.vmap(dw_for))(jax.random.split(jax.random.key(0), num)))
    _, pull = jax.vjp(lambda b: _conv(x, b), w)
    dense = np.asarray(pull(dy)[0], np.float64)
    # dW = J^T prune(dY), J = d conv / d W. Bound each group's std by Cauchy-Schwarz.
    jac = np.asarray(jax.jacobian(lambda b: _conv(x, b))(w), np.float64).reshape(16, 4, -1)
    std = mvue_ref.marginal_std(np.asarray(dy, np.float64).reshape(16, 4), 2, 4, "exact")
    per_group = np.einsum("gtck,gtc->gck", np.abs(jac).reshape(4, 4, 4, -1), std.reshape(4, 4, 4))
    bound = 5.0 * np.sqrt(np.sum(per_group**2, axis=(0, 1)) / num).reshape(w.shape)
    err = np.abs(dws.mean(0) - dense)
    assert np.all(err <= bound), (err.max(), bound.min())
    assert dws.std(0).max() > 0.1


def test_flax_conv_seam_bf16_and_jit():
    from flax import nnx

    layer = nnx.Conv(8, 8, (3, 3), rngs=nnx.Rngs(0))
    x, _, _ = _problem()
    mask = jaxnm.nm_mask(layer.kernel[...], 2, 4)
    layer.conv_general_dilated = nm_conv_fn(
        mask, grad_sparsity=jaxnm.MVUE(2, 4), key=jax.random.key(1)
    )
    y = layer(x)
    np.testing.assert_allclose(y, _conv(x, layer.kernel[...] * mask) + layer.bias[...], atol=1e-5)
    # bfloat16 operands with float32 accumulation, under jit and jax.checkpoint.
    xb, wb = x.astype(jnp.bfloat16), layer.kernel[...].astype(jnp.bfloat16)

    def loss(w):
        out = nm_conv(
            xb,
            w,
            mask,
            (1, 1),
            "SAME",
            preferred_element_type=jnp.float32,
            grad_sparsity=jaxnm.MVUE(2, 4),
            key=jax.random.key(2),
        )
        assert out.dtype == jnp.float32
        return jnp.sum(out**2)

    dw = jax.jit(jax.grad(jax.checkpoint(loss)))(wb)
    dw_plain = jax.jit(jax.grad(loss))(wb)
    assert dw.dtype == jnp.bfloat16
    np.testing.assert_allclose(
        np.asarray(dw, np.float32), np.asarray(dw_plain, np.float32), rtol=2e-2, atol=1e-1
    )


def test_bad_inputs():
    x, w, mask = _problem()
    with pytest.raises(ValueError, match="`mask` must have the shape"):
        nm_conv(x, w, mask[..., :4], (1, 1), "SAME")
    with pytest.raises(ValueError, match="`key` is required"):
        nm_conv(x, w, mask, (1, 1), "SAME", grad_sparsity=jaxnm.MVUE(1, 2))
    with pytest.raises(TypeError, match="`grad_sparsity` must be None or a jaxnm.MVUE"):
        nm_conv(x, w, mask, (1, 1), "SAME", grad_sparsity="2:4", key=jax.random.key(0))
    with pytest.raises(ValueError, match="`batch_group_count` must be 1"):
        nm_conv_fn(mask)(x, w, (1, 1), "SAME", dimension_numbers=NHWC, batch_group_count=2)
