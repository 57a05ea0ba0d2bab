"""N:M matmul: Pallas GPU/TPU kernels in interpret mode, the XLA path, dispatch and gradients.

Every kernel run starts from a NaN-poisoned output buffer (aliased into the kernel); a tile
the kernel does not write then stays NaN (generic interpreter) or holds another tile's stale
VMEM data (TPU interpreter), and fails the comparison either way. The oracle is a float64
NumPy product of the same (dtype-rounded) inputs.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

import jaxnm
from jaxnm import compressed as cz
from jaxnm.kernels import (
    BlockSizes,
    nm_matmul,
    nm_matmul_gpu,
    nm_matmul_reference,
    nm_matmul_tpu,
    select_backend,
)

KERNELS = {"gpu": nm_matmul_gpu, "tpu": nm_matmul_tpu}
NM = [(1, 2), (2, 4), (4, 8)]
DTYPES = [jnp.float32, jnp.bfloat16, jnp.float16]
TOL = {jnp.float32: 1e-5, jnp.float16: 2e-3, jnp.bfloat16: 1e-2}  # relative to max |ref|
TILE_2_4 = np.array([[1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1], [1, 0, 0, 1]], bool)


def _case(tokens, k, n_out, n, m, dtype, seed=0):
    rng = np.random.default_rng(seed)
    w = jnp.asarray(rng.standard_normal((k, n_out)), dtype)
    x = jnp.asarray(rng.standard_normal((tokens, k)), dtype)
    mask = jaxnm.nm_mask(jnp.asarray(rng.random((k, n_out)), jnp.float32), n, m)
    c = jaxnm.compress(w, mask, n, m)
    ref = np.asarray(x, np.float64) @ (np.asarray(w, np.float64) * np.asarray(mask))
    return x, c, ref


def _assert_close(y, ref, dtype):
    y = np.asarray(y, np.float64)
    assert y.shape == ref.shape
    assert not np.isnan(y).any(), "unwritten (NaN-poisoned) output remains"
    scale = max(1.0, np.abs(ref).max())
    np.testing.assert_allclose(y, ref, rtol=0, atol=TOL[dtype] * scale)


def _half_of_the_grid():
    """``(backend, n, m, dtype)`` for every backend x n:m x dtype; CI runs the half in which
    every (n:m, dtype) pair meets one backend and every backend meets every dtype and n:m,
    ``-m slow`` the other half (interpret mode costs seconds per case; CI budget)."""
    cases = []
    for i, backend in enumerate(["gpu", "tpu"]):
        for j, (n, m) in enumerate(NM):
            for k, dtype in enumerate(DTYPES):
                marks = [pytest.mark.slow] if (i + j + k) % 2 else []
                cases.append(pytest.param(backend, n, m, dtype, marks=marks))
    return cases


@pytest.mark.parametrize("backend,n,m,dtype", _half_of_the_grid())
def test_kernel_matches_dense_reference(backend, n, m, dtype):
    # Several tiles along every axis; a ragged token count (21 = 16 + 5).
    x, c, ref = _case(21, 64, 48, n, m, dtype, seed=n + m)
    block = BlockSizes(block_t=16, block_k=32, block_n=16)
    y = KERNELS[backend](x, c, block_sizes=block, interpret=True, poison_output=True)
    assert y.dtype == dtype
    _assert_close(y, ref, dtype)


@pytest.mark.parametrize("backend", ["gpu", "tpu"])
@pytest.mark.parametrize("tokens", [1, 17])
def test_kernel_default_block_rule(backend, tokens):
    x, c, ref = _case(tokens, 128, 64, 2, 4, jnp.bfloat16, seed=tokens)
    y = KERNELS[backend](x, c, interpret=True, poison_output=True)
    _assert_close(y, ref, jnp.bfloat16)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["gpu", "tpu"])
@pytest.mark.parametrize("n,m", NM + [(1, 4), (2, 8)])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tokens,k,n_out", [(1, 128, 32), (33, 256, 64), (130, 64, 128)])
def test_kernel_matches_dense_reference_many_shapes(backend, n, m, dtype, tokens, k, n_out):
    x, c, ref = _case(tokens, k, n_out, n, m, dtype, seed=tokens + k)
    y = KERNELS[backend](x, c, interpret=True, poison_output=True)
    _assert_close(y, ref, dtype)
    block = BlockSizes(block_t=16, block_k=64, block_n=32)
    y = KERNELS[backend](x, c, block_sizes=block, interpret=True, poison_output=True)
    _assert_close(y, ref, dtype)


def _half_writer(x_ref, init_ref, o_ref):
    del init_ref

    @pl.when(pl.program_id(0) == 0)
    def _():
        o_ref[...] = x_ref[...]


@pytest.mark.parametrize("interpret", [True, pltpu.InterpretParams()], ids=["generic", "tpu"])
def test_unwritten_tile_is_detected(interpret):
    # The mechanism the kernel tests rely on, shown on a kernel that skips its second tile.
    x = jnp.arange(128, dtype=jnp.float32).reshape(16, 8)
    spec = pl.BlockSpec((8, 8), lambda i: (i, 0))
    out = pl.pallas_call(
        _half_writer,
        out_shape=jax.ShapeDtypeStruct(x.shape, x.dtype),
        grid=(2,),
        in_specs=[spec, spec],
        out_specs=spec,
        input_output_aliases={1: 0},
        interpret=interpret,
    )(x, jnp.full(x.shape, jnp.nan))
    np.testing.assert_array_equal(out[:8], x[:8])
    if interpret is True:
        # Generic interpreter: the aliased NaN buffer shows through the unwritten tile.
        assert np.isnan(out[8:]).all()
    else:
        # TPU interpreter (like a TPU): the output block's VMEM buffer is copied back after
        # every step, so an unwritten tile holds stale data (here the first tile), never the
        # right values: the comparison with the reference catches it.
        assert not np.isclose(out[8:], x[8:]).any()


def test_block_rule():
    gpu = functools.partial(BlockSizes.for_shape, backend="gpu")
    # Weight-bound T: block_n shrinks until the grid has >= 2 programs per SM (132 SMs).
    assert gpu(1, 4096, 4096, 2, 4) == BlockSizes(16, 256, 16, num_warps=4, num_stages=2)
    assert gpu(16, 8192, 8192, 2, 4) == BlockSizes(16, 256, 16, num_warps=4, num_stages=2)
    assert gpu(16, 4096, 65536, 2, 4).block_n == 32  # 2048 programs already
    assert gpu(4096, 4096, 4096, 2, 4) == BlockSizes(128, 64, 128, num_warps=8, num_stages=3)
    assert gpu(40, 96, 48, 2, 4) == BlockSizes(64, 32, 16, num_warps=4, num_stages=2)
    assert gpu(100, 256, 64, 1, 16).block_k == 128  # 1:16 needs 128 dense rows per byte run
    tpu = functools.partial(BlockSizes.for_shape, backend="tpu")
    assert tpu(1, 4096, 4096, 2, 4) == BlockSizes(16, 512, 256)
    assert tpu(1000, 8192, 384, 1, 4) == BlockSizes(256, 1024, 128)
    assert tpu(5, 64, 48, 2, 4) == BlockSizes(16, 64, 48)
    mosaic = functools.partial(BlockSizes.for_shape, backend="mosaic_gpu")
    assert mosaic(16, 4096, 4096, 2, 4) == BlockSizes(64, 128, 32, num_stages=4)
    assert mosaic(4096, 4096, 4096, 4, 8) == BlockSizes(128, 128, 128, num_stages=2)
    assert mosaic(1, 4096, 4096, 1, 8).block_k == 512  # 8 index bytes per step
    with pytest.raises(ValueError, match="'gpu', 'mosaic_gpu' or 'tpu'"):
        BlockSizes.for_shape(1, 64, 64, 2, 4, backend="xla")


def test_bad_block_sizes():
    x, c, _ = _case(4, 64, 32, 2, 4, jnp.float32)
    with pytest.raises(ValueError, match="block_k must divide K=64"):
        nm_matmul_gpu(x, c, block_sizes=BlockSizes(16, 48, 16), interpret=True)
    with pytest.raises(ValueError, match="powers of two"):
        nm_matmul_gpu(x, c, block_sizes=BlockSizes(24, 32, 16), interpret=True)
    with pytest.raises(ValueError, match="block_n must divide N=32"):
        nm_matmul_tpu(x, c, block_sizes=BlockSizes(16, 32, 64), interpret=True)
    with pytest.raises(TypeError, match="BlockSizes"):
        nm_matmul_tpu(x, c, block_sizes=(16, 32, 16), interpret=True)


def test_kernel_input_errors():
    x, c, _ = _case(4, 64, 32, 2, 4, jnp.float32)
    with pytest.raises(ValueError, match="last axis must equal K=64"):
        nm_matmul_gpu(x[:, :32], c, interpret=True)
    with pytest.raises(ValueError, match="must be 2-D"):
        nm_matmul_tpu(x[None], c, interpret=True)
    w = jnp.ones((15, 32))
    c35 = jaxnm.compress(w, jaxnm.nm_mask(w, 3, 5), 3, 5)
    with pytest.raises(ValueError, match="powers of two"):
        nm_matmul_gpu(jnp.ones((2, 15)), c35, interpret=True)
    with pytest.raises(TypeError, match="CompressedNM"):
        nm_matmul_gpu(x, jnp.ones((64, 32)), interpret=True)


def test_select_backend_per_platform():
    x, c, _ = _case(4, 64, 32, 2, 4, jnp.float32)
    assert jax.default_backend() == "cpu"
    platforms = ("cpu", "cuda", "gpu", "rocm", "tpu")
    assert [select_backend(x, c, platform=p) for p in platforms] == [
        "xla",
        "gpu",
        "gpu",
        "gpu",
        "tpu",
    ]
    # An explicit backend is what nm_matmul uses, whatever the platform.
    assert select_backend(x, c, "gpu") == "gpu"
    assert select_backend(x, c, "tpu", platform="cuda") == "tpu"
    assert select_backend(x, c, "xla", platform="cuda") == "xla"
    with pytest.raises(ValueError, match="must be None or one of"):
        select_backend(x, c, "triton")
    with pytest.raises(ValueError, match=r"`platform` \(='metal'\) must be one of"):
        select_backend(x, c, platform="metal")
    w = jnp.ones((15, 32))
    c35 = jaxnm.compress(w, jaxnm.nm_mask(w, 3, 5), 3, 5)
    assert select_backend(jnp.ones((2, 15)), c35, platform="cuda") == "xla"
    with pytest.raises(ValueError, match="does not support"):
        select_backend(jnp.ones((2, 15)), c35, "tpu")
    # The GPU rule finds no tiles for N = 8 (tiles >= 16): XLA there, the TPU kernel on TPU.
    x8, c8, _ = _case(4, 64, 8, 2, 4, jnp.float32)
    assert select_backend(x8, c8, platform="cuda") == "xla"
    assert select_backend(x8, c8, platform="tpu") == "tpu"
    # Tiles the user chose must fit the kernel the platform gets.
    with pytest.raises(ValueError, match="powers of two"):
        select_backend(x, c, platform="cuda", block_sizes=BlockSizes(24, 32, 16))


@pytest.mark.parametrize("backend", ["gpu", "tpu"])
def test_explicit_kernel_on_cpu_needs_interpret(backend):
    x, c, ref = _case(4, 64, 32, 2, 4, jnp.float32)
    with pytest.raises(ValueError, match="interpret"):
        nm_matmul(x, c, backend=backend)
    _assert_close(nm_matmul(x, c, backend=backend, interpret=True), ref, jnp.float32)


def test_auto_backend_on_cpu_is_xla_also_for_shapes_only_some_kernels_take():
    for n_out in (32, 8):
        x, c, ref = _case(5, 64, n_out, 2, 4, jnp.float32)
        text = jax.jit(nm_matmul).lower(x, c).as_text()
        assert "custom_call" not in text
        _assert_close(nm_matmul(x, c), ref, jnp.float32)


@pytest.mark.parametrize("dtype", DTYPES)
def test_xla_path_batch_axes_and_jit(dtype):
    x, c, ref = _case(6, 32, 16, 2, 4, dtype)
    y = jax.jit(lambda x, c: nm_matmul(x.reshape(2, 3, 32), c))(x, c)
    assert y.shape == (2, 3, 16) and y.dtype == dtype
    _assert_close(y.reshape(6, 16), ref, dtype)
    _assert_close(nm_matmul_reference(x, c), ref, dtype)


def test_mixed_dtypes_promote():
    x, c, ref = _case(3, 32, 16, 2, 4, jnp.bfloat16)
    y = nm_matmul(x.astype(jnp.float32), c)
    assert y.dtype == jnp.float32
    _assert_close(y, ref, jnp.bfloat16)


def test_nm_matmul_errors():
    x, c, _ = _case(4, 64, 32, 2, 4, jnp.float32)
    with pytest.raises(ValueError, match="last axis must equal K=64"):
        nm_matmul(x.T, c)
    c3 = jaxnm.compress(jnp.ones((2, 8, 4)), jnp.ones((2, 8, 4)), 4, 4)
    with pytest.raises(ValueError, match="2-D"):
        nm_matmul(jnp.ones((2, 8)), c3)
    with pytest.raises(ValueError, match="`c_t` must be a CompressedNM"):
        nm_matmul(x, c, c_t=c)
    w = jax.random.normal(jax.random.key(0), (16, 16))
    xs, cs = jnp.ones((4, 16)), jaxnm.compress(w, jnp.asarray(np.tile(TILE_2_4, (4, 4))), 2, 4)
    wrong = dataclasses.replace(cs, values=cs.values * 2)
    with pytest.raises(ValueError, match="does not hold the transpose"):
        nm_matmul(xs, cs, c_t=cz.transpose(wrong))
    nm_matmul(xs, cs, c_t=cz.transpose(cs))  # agrees: accepted
    with pytest.raises(ValueError, match="floating"):
        nm_matmul(x.astype(jnp.int32), c)


def _transposable_case(tokens, k, n_out):
    rng = np.random.default_rng(7)
    w = jnp.asarray(rng.standard_normal((k, n_out)), jnp.float32)
    x = jnp.asarray(rng.standard_normal((tokens, k)), jnp.float32)
    mask = jnp.asarray(np.tile(TILE_2_4, (k // 4, n_out // 4)))
    return x, w * mask, mask, jaxnm.compress(w, mask, 2, 4)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(),
        dict(transposed=True),
        dict(transposed=True, backend="gpu", interpret=True),
        dict(transposed=True, backend="tpu", interpret=True),
    ],
    ids=["xla", "xla-c_t", "gpu-c_t", "tpu-c_t"],
)
def test_gradients_match_dense(kwargs):
    kwargs = dict(kwargs)
    x, w_eff, mask, c = _transposable_case(5, 64, 32)
    if kwargs.pop("transposed", False):
        kwargs["c_t"] = cz.transpose(c)

    def loss(x, c):
        return jnp.sum(jnp.sin(nm_matmul(x, c, **kwargs)))

    def dense_loss(x, w):
        return jnp.sum(jnp.sin(jnp.dot(x, w, precision="highest")))

    dx, dc = jax.jit(jax.grad(loss, argnums=(0, 1), allow_int=True))(x, c)
    dx_ref, dw_ref = jax.grad(dense_loss, argnums=(0, 1))(x, w_eff)
    np.testing.assert_allclose(dx, dx_ref, atol=1e-4)
    assert dc.values.shape == c.values.shape and dc.values.dtype == c.values.dtype
    np.testing.assert_allclose(dc.values, cz.gather_kept(dw_ref, c), atol=1e-4)
    # Scattered back, the kept-value gradient is the masked dense gradient.
    dw = cz.decompress(dataclasses.replace(c, values=dc.values))
    np.testing.assert_allclose(dw, dw_ref * mask, atol=1e-4)


def test_vmap_over_tokens_through_kernel():
    x, c, ref = _case(6, 64, 32, 2, 4, jnp.float32)
    y = jax.vmap(lambda xi: nm_matmul(xi[None], c, backend="gpu", interpret=True)[0])(x)
    _assert_close(y, ref, jnp.float32)
