"""cuSPARSELt backend on CPU: the pure-JAX emulation of its layout (which operand is sparse,
which axis is 2:4, row/column-major views) against ``jnp.dot``, the training op's forward and
gradients, sharding, and the error paths. Needs neither the extension nor a GPU."""

import dataclasses
import os
import subprocess
import sys
import textwrap
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jaxnm
import jaxnm.nnx
from jaxnm.kernels import cusparselt
from jaxnm.kernels.cusparselt import layout


def two_four(key, shape, axis):
    """A float32 array that is 2:4 along ``axis`` (keeps the 2 largest of every 4)."""
    w = jax.random.normal(key, shape)
    return jnp.where(jaxnm.nm_mask(w, 2, 4, axis=axis), w, 0)


def grad_jit(fn, argnums, static_argnums=()):
    """``jit(grad(fn))``: one compile instead of op-by-op dispatch of the emulation (CI time)."""
    return jax.jit(jax.grad(fn, argnums), static_argnums=static_argnums)


def rel_err(a, b):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return np.abs(a - b).max() / max(np.abs(b).max(), 1e-6)


# --- the layout: memory views and the three GEMMs -------------------------------------


def test_emulate_matmul_reads_row_and_column_major_buffers():
    # Small integers are exact in float16: the check is on indexing, not rounding.
    rows, cols, n = 16, 32, 8
    a = jnp.asarray(np.arange(rows * cols).reshape(rows, cols) % 7 - 3, jnp.float16)
    b = jnp.asarray(np.arange(n * cols).reshape(n, cols) % 5 - 2, jnp.float16)
    got = layout.emulate_matmul(
        a.reshape(-1), b, rows=rows, cols=cols, transpose_b=True, out_dtype=jnp.float32
    )
    np.testing.assert_array_equal(got, np.asarray(b, np.float32) @ np.asarray(a, np.float32).T)
    got = layout.emulate_matmul(
        a.reshape(-1), b.T, rows=rows, cols=cols, transpose_b=False, out_dtype=jnp.float32
    )
    np.testing.assert_array_equal(got, np.asarray(b, np.float32) @ np.asarray(a, np.float32).T)


@pytest.mark.parametrize("gemm", ["forward", "input_grad", "weight_grad"])
def test_training_gemms_map_onto_the_layout(gemm):
    """Each GEMM of y = x·W through compress + matmul, with the sparse operand and 2:4 axis
    the layout table names, equals the dense product."""
    t, k, n = 48, 64, 32
    kx, kw, kg = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (t, k)).astype(jnp.bfloat16)
    if gemm == "forward":  # y = x · W, A = Wᵀ (N, K), 2:4 along K
        w = two_four(kw, (k, n), axis=0).astype(jnp.bfloat16)
        got = cusparselt.matmul(cusparselt.compress(w.T, interpret=True), x, transpose_b=True)
        want = x.astype(jnp.float32) @ w.astype(jnp.float32)
    elif gemm == "input_grad":  # dx = dy · Wᵀ, A = W (K, N), 2:4 along N
        w = two_four(kw, (k, n), axis=1).astype(jnp.bfloat16)
        dy = jax.random.normal(kg, (t, n)).astype(jnp.bfloat16)
        got = cusparselt.matmul(cusparselt.compress(w, interpret=True), dy, transpose_b=True)
        want = dy.astype(jnp.float32) @ w.astype(jnp.float32).T
    else:  # dW = xᵀ · dy, A = dyᵀ (N, T), 2:4 along T
        dy = two_four(kg, (t, n), axis=0).astype(jnp.bfloat16)
        got = cusparselt.matmul(cusparselt.compress(dy.T, interpret=True), x, transpose_b=False)
        want = x.astype(jnp.float32).T @ dy.astype(jnp.float32)
    assert got.shape == want.shape and got.dtype == jnp.bfloat16
    assert rel_err(got, want) < 1e-2


def test_sparse_axis_must_be_the_columns():
    """Compressing an operand that is 2:4 along its rows instead is flagged, and poisons the
    product with NaN instead of a silently wrong result."""
    w = two_four(jax.random.key(1), (64, 32), axis=0).astype(jnp.bfloat16)  # 2:4 along rows
    assert bool(layout.is_2_4(w.T)) and not bool(layout.is_2_4(w))
    bad = cusparselt.compress(w, interpret=True)
    assert int(bad.invalid) != 0
    out = cusparselt.matmul(bad, jnp.ones((8, 32), jnp.bfloat16), transpose_b=True)
    assert bool(jnp.isnan(out).all())
    unchecked = cusparselt.compress(w, check=False, interpret=True)
    assert int(unchecked.invalid) == 0


def test_compressed_nbytes():
    assert layout.compressed_nbytes(128, 256, jnp.bfloat16) == 128 * 256 * 2 * 9 // 16
    assert layout.compressed_nbytes(128, 256, jnp.int8) == 128 * 256 * 10 // 16


def test_int8_and_float8_operands_in_emulation():
    a = jnp.asarray((np.arange(32 * 64).reshape(32, 64) % 3 - 1) * (np.arange(64) % 4 < 2))
    b = jnp.asarray(np.arange(16 * 64).reshape(16, 64) % 5 - 2)
    want = np.asarray(b) @ np.asarray(a).T
    out = cusparselt.matmul(
        cusparselt.compress(a.astype(jnp.int8), interpret=True),
        b.astype(jnp.int8),
        transpose_b=True,
    )
    assert out.dtype == jnp.int32
    np.testing.assert_array_equal(out, want)
    out8 = cusparselt.matmul(
        cusparselt.compress(a.astype(jnp.float8_e4m3fn), interpret=True),
        b.astype(jnp.float8_e4m3fn),
        transpose_b=True,
        out_dtype=jnp.bfloat16,
    )
    np.testing.assert_allclose(np.asarray(out8, np.float32), want, rtol=1e-2)


# --- error paths ------------------------------------------------------------------------


def test_bad_dtype_shape_and_layout_errors():
    ok = jnp.zeros((32, 64), jnp.bfloat16)
    with pytest.raises(TypeError, match="float32.*cuSPARSELt 2:4 supports"):
        cusparselt.compress(ok.astype(jnp.float32), interpret=True)
    with pytest.raises(ValueError, match=r"\(32, 60\).*multiples of 16"):
        cusparselt.compress(jnp.zeros((32, 60), jnp.bfloat16), interpret=True)
    with pytest.raises(ValueError, match="multiples of 32"):
        cusparselt.compress(jnp.zeros((16, 64), jnp.int8), interpret=True)
    with pytest.raises(ValueError, match="must be 2-D"):
        cusparselt.compress(jnp.zeros((2, 32, 64), jnp.bfloat16), interpret=True)
    a = cusparselt.compress(ok, interpret=True)
    with pytest.raises(ValueError, match=r"must be \(n, 64\)"):
        cusparselt.matmul(a, jnp.zeros((8, 32), jnp.bfloat16), transpose_b=True)
    with pytest.raises(ValueError, match="multiple of 8"):
        cusparselt.matmul(a, jnp.zeros((12, 64), jnp.bfloat16), transpose_b=True)
    with pytest.raises(TypeError, match="must match a.dtype"):
        cusparselt.matmul(a, jnp.zeros((8, 64), jnp.float16), transpose_b=True)
    with pytest.raises(TypeError, match="out_dtype"):
        cusparselt.matmul(a, jnp.zeros((8, 64), jnp.bfloat16), transpose_b=True, out_dtype="int32")
    with pytest.raises(ValueError, match="alg_id"):
        cusparselt.matmul(a, jnp.zeros((8, 64), jnp.bfloat16), transpose_b=True, alg_id=-2)


def test_old_gpu_is_rejected():
    volta = types.SimpleNamespace(platform="gpu", compute_capability="7.0")
    with pytest.raises(RuntimeError, match=r"8\.0 \(sm_80\) or newer.*7\.0"):
        cusparselt.check_compute_capability(volta)
    with pytest.raises(RuntimeError, match="needs an NVIDIA GPU"):
        cusparselt.check_compute_capability(jax.devices("cpu")[0])


def test_missing_extension_error(monkeypatch, tmp_path):
    monkeypatch.setenv("JAXNM_CUSPARSELT_LIBRARY", str(tmp_path / "absent.so"))
    with pytest.raises(cusparselt.CusparseLtUnavailableError, match="not built.*build"):
        cusparselt.library.load.__wrapped__()
    broken = tmp_path / "broken.so"
    broken.write_bytes(b"not an ELF file")
    monkeypatch.setenv("JAXNM_CUSPARSELT_LIBRARY", str(broken))
    with pytest.raises(cusparselt.CusparseLtUnavailableError, match="libcusparseLt"):
        cusparselt.library.load.__wrapped__()


# --- nm_matmul's cuSPARSELt path --------------------------------------------------------


def test_nm_matmul_cusparselt_matches_reference():
    w = jax.random.normal(jax.random.key(2), (64, 32)).astype(jnp.bfloat16)
    c = jaxnm.compress(w, jaxnm.nm_mask(w, 2, 4), 2, 4, axis=0)
    x = jax.random.normal(jax.random.key(3), (5, 64)).astype(jnp.bfloat16)  # T padded to 8
    got = cusparselt.nm_matmul_cusparselt(x, c, interpret=True)
    want = jaxnm.kernels.nm_matmul_reference(x, c)
    assert got.shape == (5, 32)
    assert rel_err(got, want) < 1e-2
    wf = w.astype(jnp.float32)
    c32 = jaxnm.compress(wf, jaxnm.nm_mask(wf, 2, 4), 2, 4, axis=0)
    assert "bfloat16 or float16" in cusparselt.cusparselt_support(x.astype(jnp.float32), c32)
    c48 = jaxnm.compress(wf, jaxnm.nm_mask(wf, 4, 8), 4, 8, axis=0)
    assert "not 2:4-compatible" in cusparselt.cusparselt_support(x, c48)
    w24 = w[:, :24]
    c_bad = jaxnm.compress(w24, jaxnm.nm_mask(w24, 2, 4), 2, 4, axis=0)
    with pytest.raises(ValueError, match="multiples of 16"):
        cusparselt.nm_matmul_cusparselt(x, c_bad, interpret=True)


def test_nm_matmul_backend_cusparselt_forward_and_gradients():
    w = jax.random.normal(jax.random.key(4), (64, 32))
    mask = jaxnm.transposable_mask(w, 2, 4, method="exhaustive")
    w = w.astype(jnp.bfloat16)
    c = jaxnm.compress(w, mask, 2, 4, axis=0)
    c_t = jaxnm.compressed.transpose(c)
    x = jax.random.normal(jax.random.key(5), (3, 4, 64)).astype(jnp.bfloat16)

    def loss(x, values, backend):
        cv = dataclasses.replace(c, values=values)
        y = jaxnm.kernels.nm_matmul(x, cv, c_t=c_t, backend=backend, interpret=True)
        return jnp.sum(y.astype(jnp.float32) ** 2)

    # c and c_t closed over (concrete) inside jit, as a model holding compressed weights does.
    y = jax.jit(
        lambda x: jaxnm.kernels.nm_matmul(x, c, c_t=c_t, backend="cusparselt", interpret=True)
    )(x)
    assert y.shape == (3, 4, 32)
    assert rel_err(y, jaxnm.kernels.nm_matmul(x, c, backend="xla")) < 1e-2
    grads = grad_jit(loss, (0, 1), 2)
    (dx, dv), (dx0, dv0) = (grads(x, c.values, b) for b in ("cusparselt", "xla"))
    assert rel_err(dx, dx0) < 2e-2 and rel_err(dv, dv0) < 2e-2
    with pytest.raises(ValueError, match="cusparselt.*does not support.*2:4"):
        cf = jaxnm.compress(w, jaxnm.nm_mask(w, 4, 8), 4, 8, axis=0)
        jaxnm.kernels.nm_matmul(x, cf, backend="cusparselt", interpret=True)


# --- the training op --------------------------------------------------------------------


def mvue_2_4(g, key):
    return jaxnm.mvue(g, 2, 4, key, axis=0)


def layer(k=64, n=32, t=40, dtype=jnp.bfloat16, seed=0):
    kx, kw, kg = jax.random.split(jax.random.key(seed), 3)
    w = jax.random.normal(kw, (k, n))
    mask = jaxnm.transposable_mask(w, 2, 4, method="exhaustive")
    x = jax.random.normal(kx, (t, k)).astype(dtype)
    cot = jax.random.normal(kg, (t, n))
    return x, w.astype(dtype), mask, cot


def test_training_op_forward_and_gradients():
    x, w, mask, cot = layer()

    def loss(x, w, **kw):
        y = cusparselt.cusparselt_linear(x, w, mask, interpret=True, **kw)
        return (y.astype(jnp.float32) * cot).sum()

    xf, wf = x.astype(jnp.float32), w.astype(jnp.float32)
    w_eff = jnp.where(mask, wf, 0)
    y = cusparselt.cusparselt_linear(x, w, mask, interpret=True)
    assert y.shape == (40, 32) and y.dtype == jnp.bfloat16
    assert rel_err(y, xf @ w_eff) < 1e-2
    dx, dw = grad_jit(loss, (0, 1))(x, w)
    assert rel_err(dx, cot @ w_eff.T) < 1e-2
    assert rel_err(dw, xf.T @ cot) < 1e-2  # straight through: dense W gets xᵀ·dy
    # Compression once per refresh gives the same step.
    cw = cusparselt.compress_weight(w, mask, interpret=True)
    dx_r, dw_r = jax.grad(loss, (0, 1))(x, w, weight_compression="refresh", compressed=cw)
    np.testing.assert_array_equal(dx_r, dx)
    np.testing.assert_array_equal(dw_r, dw)


def test_training_op_under_vmap_matches_per_layer_calls():
    """``jax.vmap`` over a batch of layers (x, w, mask all batched) equals one call per
    layer, forward and both gradients (emulation)."""
    layers = [layer(seed=seed) for seed in range(3)]
    xs, ws, masks, cots = (jnp.stack(parts) for parts in zip(*layers, strict=True))

    def grads(x, w, mask, cot):
        def loss(x, w):
            y = cusparselt.cusparselt_linear(x, w, mask, interpret=True)
            return (y.astype(jnp.float32) * cot).sum()

        return jax.grad(loss, (0, 1))(x, w)

    dx, dw = jax.jit(jax.vmap(grads))(xs, ws, masks, cots)
    for i, parts in enumerate(layers):
        dx_i, dw_i = jax.jit(grads)(*parts)
        np.testing.assert_array_equal(dx[i], dx_i)
        np.testing.assert_array_equal(dw[i], dw_i)


def test_training_op_mvue_weight_gradient_is_unbiased():
    x, w, mask, cot = layer(t=32)

    def dw(key):
        def loss(w):
            y = cusparselt.cusparselt_linear(x, w, mask, prune=mvue_2_4, key=key, interpret=True)
            return (y.astype(jnp.float32) * cot).sum()

        return jax.grad(loss)(w).astype(jnp.float32)

    samples = jax.jit(jax.vmap(dw))(jax.random.split(jax.random.key(7), 128))
    want = x.astype(jnp.float32).T @ cot
    stderr = samples.std(0) / np.sqrt(samples.shape[0])
    z = np.abs(np.asarray(samples.mean(0) - want)) / (np.asarray(stderr) + 0.05)
    assert z.max() < 5.0
    # Each sample really is a 2:4-pruned product (different from the dense gradient).
    assert rel_err(samples[0], want) > 0.05


def test_non_transposable_mask_poisons_the_input_gradient():
    x, w, _, cot = layer()
    mask = jaxnm.nm_mask(w.astype(jnp.float32), 2, 4, axis=0)  # 2:4 along `in` only

    def loss(x):
        return cusparselt.cusparselt_linear(x, w, mask, interpret=True).astype(jnp.float32).sum()

    assert bool(jnp.isfinite(cusparselt.cusparselt_linear(x, w, mask, interpret=True)).all())
    assert bool(jnp.isnan(grad_jit(loss, 0)(x)).all())


def test_training_op_errors():
    x, w, mask, _ = layer()
    lin = cusparselt.cusparselt_linear
    with pytest.raises(TypeError, match="bfloat16 or float16"):
        lin(x.astype(jnp.float32), w.astype(jnp.float32), mask, interpret=True)
    with pytest.raises(ValueError, match="`key` is required"):
        lin(x, w, mask, prune=mvue_2_4, interpret=True)
    with pytest.raises(ValueError, match="weight_compression='refresh'"):
        lin(x, w, mask, weight_compression="refresh", interpret=True)
    with pytest.raises(ValueError, match="'step' or 'refresh'"):
        lin(x, w, mask, weight_compression="sometimes", interpret=True)
    with pytest.raises(ValueError, match=r"\(24, 64\).*multiples of 16"):
        lin(x, w[:, :24], mask[:, :24], interpret=True)


SHARDING_SCRIPT = textwrap.dedent(
    """
    import os
    flags = os.environ.get("XLA_FLAGS", "")  # the test suite's, tests/conftest.py
    os.environ["XLA_FLAGS"] = flags + " --xla_force_host_platform_device_count=8"
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    import jaxnm
    from jaxnm.kernels import cusparselt

    assert jax.device_count() == 8
    mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
    kx, kw, kg = jax.random.split(jax.random.key(0), 3)
    w = jax.random.normal(kw, (64, 64))
    mask = jaxnm.transposable_mask(w, 2, 4, method="exhaustive")
    w = w.astype(jnp.bfloat16)
    x = jax.random.normal(kx, (64, 64)).astype(jnp.bfloat16)
    cot = jax.random.normal(kg, (64, 64))

    def loss(x, w, fn):
        return (fn(x, w).astype(jnp.float32) * cot).sum()

    def local(x, w):
        return cusparselt.cusparselt_linear(x, w, mask, interpret=True)

    def sharded(x, w):
        return cusparselt.sharded_cusparselt_linear(
            x, w, mask, mesh=mesh, token_axis="data", out_axis="model", interpret=True
        )

    xs = jax.device_put(x, NamedSharding(mesh, P("data", None)))
    ws = jax.device_put(w, NamedSharding(mesh, P(None, "model")))
    y = jax.jit(sharded)(xs, ws)
    assert y.sharding.spec == P("data", "model"), y.sharding
    ref = local(x, w)
    np.testing.assert_allclose(np.asarray(y, np.float32), np.asarray(ref, np.float32), atol=1e-2)
    g8 = jax.jit(jax.grad(lambda x, w: loss(x, w, sharded), (0, 1)))(xs, ws)
    g1 = jax.grad(lambda x, w: loss(x, w, local), (0, 1))(x, w)
    for a, b in zip(g8, g1):
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32),
                                   rtol=2e-2, atol=0.25)
    assert g8[1].sharding.spec in (P(None, "model"), P(None, "model", None))

    # MVUE per token shard, keys folded with the shard index: shards prune differently.
    def mvue(g, key):
        return jaxnm.mvue(g, 2, 4, key, axis=0)

    def dw(key):
        def l(w):
            y = cusparselt.sharded_cusparselt_linear(
                xs, w, mask, mesh=mesh, token_axis="data", prune=mvue, key=key, interpret=True)
            return (y.astype(jnp.float32) * cot).sum()
        return jax.grad(l)(ws).astype(jnp.float32)

    est = jax.jit(dw)(jax.random.key(1))
    want = x.astype(jnp.float32).T @ cot
    assert bool(jnp.isfinite(est).all()) and float(jnp.abs(est - want).max()) > 0
    print("ok")
    """
)


@pytest.mark.slow  # a fresh process compiling for 8 devices (~25 s; CI budget)
def test_sharded_training_op_on_8_virtual_devices():
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-c", SHARDING_SCRIPT], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


# --- the op-level dispatch --------------------------------------------------------------


def test_nm_linear_backend_cusparselt_matches_xla():
    x, w, mask, cot = layer()
    x3 = x.reshape(5, 8, 64)

    def loss(x, w, backend, **kw):
        y = jaxnm.ops.nm_linear(x, w, mask, backend=backend, interpret=True, **kw)
        return (y.astype(jnp.float32) * cot.reshape(5, 8, 32)).sum()

    y = jaxnm.ops.nm_linear(x3, w, mask, backend="cusparselt", interpret=True)
    assert y.shape == (5, 8, 32) and y.dtype == jnp.bfloat16
    assert rel_err(y, jaxnm.ops.nm_linear(x3, w, mask)) < 1e-2
    for a, b in zip(
        grad_jit(loss, (0, 1), 2)(x3, w, "cusparselt"),
        grad_jit(loss, (0, 1), 2)(x3, w, "xla"),
        strict=True,
    ):
        assert rel_err(a, b) < 2e-2
    dw = jax.grad(loss, 1)(
        x3, w, "cusparselt", grad_sparsity=jaxnm.MVUE(1, 2), key=jax.random.key(0)
    )
    assert dw.shape == w.shape and bool(jnp.isfinite(dw).all())
    with pytest.raises(ValueError, match="Dense form only"):
        dn = (((1,), (1,)), ((), ()))
        jaxnm.ops.nm_dot_general(x, w.T, mask.T, dn, backend="cusparselt", interpret=True)
    with pytest.raises(ValueError, match="`backend`"):
        jaxnm.ops.nm_linear(x, w, mask, backend="cuda")


def test_sparsify_model_backend_checks():
    class Net(nnx.Module):
        def __init__(self, rngs):
            self.conv = nnx.Conv(4, 16, (3, 3), rngs=rngs)

        def __call__(self, x):
            return self.conv(x)

    model = Net(nnx.Rngs(0))
    opt = jaxnm.nnx.Optimizer(
        model, optax.chain(jaxnm.sparsify(2, 4), optax.sgd(0.1)), wrt=nnx.Param
    )
    with pytest.raises(ValueError, match="nnx.Linear kernels only"):
        jaxnm.nnx.sparsify_model(model, opt, backend="cusparselt")
    with pytest.raises(ValueError, match="`backend`"):
        jaxnm.nnx.sparsify_model(model, opt, backend="triton")
