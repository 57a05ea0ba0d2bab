import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.test_util import check_grads

import jaxnm
from jaxnm.ops import nm_dot_general, nm_dot_general_fn, nm_linear

DN = (((1,), (0,)), ((), ()))


def _rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b) / np.linalg.norm(b)


def _problem(t=16, d=8, f=12, seed=0, dtype=jnp.float32):
    kx, kw, kg = jax.random.split(jax.random.key(seed), 3)
    x = jax.random.normal(kx, (t, d), dtype)
    w = jax.random.normal(kw, (d, f), dtype)
    dy = jax.random.normal(kg, (t, f), jnp.float32)
    return x, w, jaxnm.nm_mask(w, 2, 4), dy


def _vjp(fn, x, w, dy):
    """``(y, dx, dw)`` of ``y = fn(x, w)`` with cotangent ``dy``, compiled as one program."""

    @jax.jit
    def run(x, w, dy):
        y, pullback = jax.vjp(fn, x, w)
        return (y, *pullback(dy.astype(y.dtype)))

    return run(x, w, dy)


@pytest.mark.parametrize("mask_dtype", [jnp.bool_, jnp.float32])
def test_dense_gradients_match_reference(mask_dtype):
    x, w, mask, dy = _problem()
    mask = mask.astype(mask_dtype)
    y, dx, dw = _vjp(lambda a, b: nm_dot_general(a, b, mask, DN), x, w, dy)
    xn, wn, mn, dyn = (np.asarray(v, np.float64) for v in (x, w, mask, dy))
    np.testing.assert_array_less(_rel_err(y, xn @ (wn * mn)), 1e-5)
    np.testing.assert_array_less(_rel_err(dx, dyn @ (wn * mn).T), 1e-5)
    # Straight-through: the dense x^T dY, not masked (SR-STE is jaxnm.sparsify's).
    np.testing.assert_array_less(_rel_err(dw, xn.T @ dyn), 1e-5)
    # dx is exactly the gradient of the plain masked matmul.
    _, pullback = jax.vjp(lambda a: a @ (w * mask.astype(w.dtype)), x)
    np.testing.assert_array_less(_rel_err(dx, pullback(dy)[0]), 1e-5)


def test_mask_gets_no_gradient():
    x, w, mask, _ = _problem()
    loss = lambda w, m: jnp.sum(nm_dot_general(x, w, m, DN) ** 2)  # noqa: E731
    _, dmask = jax.grad(loss, argnums=(0, 1), allow_int=True)(w, mask)
    assert dmask.dtype == jax.dtypes.float0 and dmask.shape == mask.shape
    _, dmask = jax.grad(loss, argnums=(0, 1))(w, mask.astype(jnp.float32))
    assert dmask.dtype == jnp.float32
    np.testing.assert_array_equal(dmask, 0.0)


def test_batch_and_multi_axis_dimension_numbers():
    # Per-head weights: lhs (H, B, T, D), rhs (H, D, F); batch H, contract D, tokens (B, T).
    k1, k2, k3 = jax.random.split(jax.random.key(3), 3)
    x = jax.random.normal(k1, (2, 3, 4, 8))
    w = jax.random.normal(k2, (2, 8, 5))
    mask = jaxnm.nm_mask(w, 2, 4, axis=1)
    dn = (((3,), (1,)), ((0,), (0,)))
    dy = jax.random.normal(k3, (2, 3, 4, 5))
    ref = lambda a, b: lax.dot_general(a, b * mask, dn)  # noqa: E731
    y, dx, dw = _vjp(lambda a, b: nm_dot_general(a, b, mask, dn), x, w, dy)
    y_ref, dx_ref, _ = _vjp(ref, x, w, dy)
    dw_ref = jnp.einsum("hbtd,hbtf->hdf", x, dy)
    for got, want in [(y, y_ref), (dx, dx_ref), (dw, dw_ref)]:
        np.testing.assert_array_less(_rel_err(got, want), 1e-5)
    # Two contracting axes: lhs (T, A, B), rhs (A, B, F).
    x = jax.random.normal(k1, (6, 4, 2))
    w = jax.random.normal(k2, (4, 2, 3))
    mask = jax.random.bernoulli(k3, 0.5, w.shape)
    dn = (((1, 2), (0, 1)), ((), ()))
    dy = jax.random.normal(k3, (6, 3))
    y, dx, dw = _vjp(lambda a, b: nm_dot_general(a, b, mask, dn), x, w, dy)
    np.testing.assert_array_less(_rel_err(dw, jnp.einsum("tab,tf->abf", x, dy)), 1e-5)
    np.testing.assert_array_less(_rel_err(dx, jnp.einsum("tf,abf->tab", dy, w * mask)), 1e-5)


@pytest.mark.parametrize(
    "x_shape,w_shape,dn",
    [
        # Weight in (out, in) layout: the rhs free axis comes before the contracting one.
        ((6, 4), (3, 4), (((1,), (1,)), ((), ()))),
        # Crossed contracting pairs, rhs batch axis last, lhs tokens between the others.
        ((2, 6, 4, 5), (3, 4, 2, 5), (((2, 0), (1, 2)), ((3,), (3,)))),
        # Usual layout with two token and two contracting axes (the flat 2-D GEMM path).
        ((3, 5, 4, 2), (4, 2, 6), (((2, 3), (0, 1)), ((), ()))),
        # lhs tokens first and last, lhs batch in the middle.
        ((3, 2, 4, 5), (2, 4, 6), (((2,), (1,)), ((1,), (0,)))),
    ],
)
@pytest.mark.parametrize("grad_sparsity", [None, jaxnm.MVUE(2, 4)], ids=str)
def test_weight_gradient_in_any_axis_order(x_shape, w_shape, dn, grad_sparsity):
    k1, k2, k3 = jax.random.split(jax.random.key(4), 3)
    x, w = jax.random.normal(k1, x_shape), jax.random.normal(k2, w_shape)
    mask = jax.random.bernoulli(k3, 0.5, w.shape)
    dy = jax.random.normal(k3, jax.eval_shape(lambda: lax.dot_general(x, w, dn)).shape)
    # Two nonzero tokens in every group of 4 (flattened lhs free axes): MVUE keeps them as is,
    # so the pruned weight gradient must equal the dense one.
    (lc, _), (lb, _) = dn
    free = [x_shape[i] for i in range(len(x_shape)) if i not in lc and i not in lb]
    tokens = (np.arange(np.prod(free)) % 4 < 2).reshape(free)
    dy = dy * tokens.reshape((1,) * len(lb) + tokens.shape + (1,) * (dy.ndim - len(lb) - len(free)))
    fn = lambda a, b: nm_dot_general(  # noqa: E731
        a, b, mask, dn, grad_sparsity=grad_sparsity, key=jax.random.key(0)
    )
    y, dx, dw = _vjp(fn, x, w, dy)
    y_ref, dx_ref, _ = _vjp(lambda a, b: lax.dot_general(a, b * mask, dn), x, w, dy)
    _, _, dw_ref = _vjp(lambda a, b: lax.dot_general(a, b, dn), x, w, dy)  # straight-through
    for got, want in [(y, y_ref), (dx, dx_ref), (dw, dw_ref)]:
        np.testing.assert_array_less(_rel_err(got, want), 1e-5)


def test_check_grads_input_and_all_ones_mask():
    x, w, mask, _ = _problem(t=4, d=8, f=4, dtype=jnp.float64 if jax.config.x64_enabled else None)
    # The input gradient is the true derivative for any mask.
    check_grads(lambda a: nm_dot_general(a, w, mask, DN), (x,), order=1, modes=["rev"])
    # With an all-ones mask and no SR-STE the op is the dense matmul: both gradients are true.
    ones = jnp.ones(w.shape, bool)
    check_grads(lambda a, b: nm_dot_general(a, b, ones, DN), (x, w), order=1, modes=["rev"])


@pytest.mark.parametrize(
    "grad_sparsity", [jaxnm.MVUE(1, 2), jaxnm.MVUE(2, 4), jaxnm.MVUE(2, 4, approx=True)], ids=str
)
def test_mvue_weight_gradient_is_unbiased(grad_sparsity, mvue_ref):
    spec = grad_sparsity
    x, w, mask, dy = _problem(t=8, d=4, f=4, seed=1)
    num = 20000

    def dw_for(key):
        _, pullback = jax.vjp(
            lambda b: nm_dot_general(x, b, mask, DN, grad_sparsity=grad_sparsity, key=key), w
        )
        return pullback(dy)[0]

    dws = jax.jit(jax.vmap(dw_for))(jax.random.split(jax.random.key(7), num))
    dense = np.asarray(x, np.float64).T @ np.asarray(dy, np.float64)
    # Per-entry std of the pruned dY (closed form), then Cauchy-Schwarz inside each group of m
    # tokens (kept values of one group are dependent) and independence across groups.
    std = mvue_ref.marginal_std(
        np.asarray(dy, np.float64), spec.n, spec.m, "approx" if spec.approx else "exact", axis=0
    )
    ax = np.abs(np.asarray(x, np.float64))
    per_group = np.einsum("gtd,gtf->gdf", ax.reshape(-1, spec.m, 4), std.reshape(-1, spec.m, 4))
    bound = 5.0 * np.sqrt(np.sum(per_group**2, axis=0) / num)
    err = np.abs(np.asarray(dws, np.float64).mean(0) - dense)
    assert np.all(err <= bound), (err, bound)
    # The estimator is really stochastic (not the dense gradient in disguise).
    assert float(np.asarray(dws).std(0).max()) > 0.1


def test_ragged_token_tail_stays_dense():
    x, w, mask, dy = _problem(t=10, d=4, f=4, seed=2)
    key = jax.random.key(5)
    fn = functools.partial(nm_dot_general, grad_sparsity=jaxnm.MVUE(2, 4), key=key)
    _, _, dw = _vjp(lambda a, b: fn(a, b, mask, DN), x, w, dy)
    head = jaxnm.mvue(dy[None, :8], 2, 4, key, axis=1)[0]
    expected = x.T @ jnp.concatenate([head, dy[8:]], axis=0)
    np.testing.assert_allclose(dw, expected, rtol=1e-5, atol=1e-6)
    # Fewer tokens than m: the weight gradient is dense.
    _, _, dw = _vjp(lambda a, b: fn(a, b, mask, DN), x[:3], w, dy[:3])
    np.testing.assert_allclose(dw, x[:3].T @ dy[:3], rtol=1e-5, atol=1e-6)


def test_jit_vmap_checkpoint():
    x, w, mask, dy = _problem()
    key = jax.random.key(0)

    def loss(w, x, key):
        y = nm_linear(x, w, mask, grad_sparsity=jaxnm.MVUE(2, 4), key=key)
        return jnp.sum(y * dy)

    eager = jax.grad(loss)(w, x, key)
    jitted = jax.jit(jax.grad(loss))
    np.testing.assert_allclose(jitted(w, x, key), eager, rtol=1e-5, atol=1e-5)
    remat = jax.jit(jax.grad(jax.checkpoint(loss)))
    np.testing.assert_allclose(remat(w, x, key), eager, rtol=1e-5, atol=1e-5)
    # vmap over a batch of (x, key): per-example gradients equal the unbatched ones.
    xs = jnp.stack([x, 2 * x])
    keys = jax.random.split(key, 2)
    per_example = jax.jit(jax.vmap(jax.grad(loss), in_axes=(None, 0, 0)))(w, xs, keys)
    for i in range(2):
        np.testing.assert_allclose(per_example[i], jitted(w, xs[i], keys[i]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_with_float32_accumulation(dtype):
    x, w, mask, dy = _problem(dtype=dtype)
    fn = functools.partial(nm_linear, mask=mask, preferred_element_type=jnp.float32)
    y, dx, dw = _vjp(lambda a, b: fn(a, b), x, w, dy)
    assert y.dtype == jnp.float32 and dx.dtype == dtype and dw.dtype == dtype
    xn, wn, mn, dyn = (
        np.asarray(jnp.asarray(v, jnp.float32), np.float64) for v in (x, w, mask, dy)
    )
    np.testing.assert_array_less(_rel_err(y, xn @ (wn * mn)), 1e-5)
    # Gradients are rounded to the operand dtype once (bfloat16: 8 mantissa bits).
    np.testing.assert_array_less(_rel_err(dx, dyn @ (wn * mn).T), 1e-2)
    np.testing.assert_array_less(_rel_err(dw, xn.T @ dyn), 1e-2)
    _, dw_mvue = jax.grad(
        lambda a, b: jnp.sum(
            nm_linear(
                a,
                b,
                mask,
                grad_sparsity=jaxnm.MVUE(2, 4),
                key=jax.random.key(1),
                preferred_element_type=jnp.float32,
            )
        ),
        argnums=(0, 1),
    )(x, w)
    assert dw_mvue.dtype == dtype and bool(jnp.all(jnp.isfinite(dw_mvue)))


def test_flax_dot_general_seam():
    from flax import nnx

    layer = nnx.Linear(8, 12, rngs=nnx.Rngs(0))
    mask = jaxnm.nm_mask(layer.kernel[...], 2, 4)
    x = jax.random.normal(jax.random.key(1), (5, 8))
    layer.dot_general = nm_dot_general_fn(
        mask, grad_sparsity=jaxnm.MVUE(1, 2), key=jax.random.key(2)
    )
    y = layer(x)
    np.testing.assert_allclose(y, x @ (layer.kernel[...] * mask) + layer.bias[...], rtol=1e-5)


def test_bad_inputs():
    x, w, mask, _ = _problem()
    with pytest.raises(ValueError, match="`mask` must have the shape"):
        nm_dot_general(x, w, mask[:4], DN)
    with pytest.raises(ValueError, match="`key` is required"):
        nm_dot_general(x, w, mask, DN, grad_sparsity=jaxnm.MVUE(2, 4))
    with pytest.raises(ValueError, match="`key` is required"):
        nm_dot_general_fn(mask, grad_sparsity=jaxnm.MVUE(1, 2))
    with pytest.raises(TypeError, match=r"Use jaxnm.MVUE.parse\('mvue_2_4'\)"):
        nm_dot_general(x, w, mask, DN, grad_sparsity="mvue_2_4", key=jax.random.key(0))
    with pytest.raises(TypeError, match="srste"):  # configured in jaxnm.sparsify only
        nm_dot_general(x, w, mask, DN, srste=1e-3)
    with pytest.raises(ValueError, match="`dimension_numbers`"):
        nm_dot_general(x, w, mask, (1, 0))
    with pytest.raises(ValueError, match="`lhs` must have a floating dtype"):
        nm_dot_general(x.astype(jnp.int32), w, mask, DN)
    with pytest.raises(ValueError, match="`w` must be a 2-D"):
        nm_linear(x, w[None], mask[None])
    with pytest.raises(ValueError, match="last axis must match"):
        nm_linear(x[:, :4], w, mask)
