"""The Mosaic GPU N:M kernel (EXPERIMENTAL): interpret-mode correctness and H100/H200 compiles.

Interpret mode (``plgpu.InterpretGPUParams``, jax >= 0.11) simulates shared memory, TMA
copies, barriers and ``wgmma`` on CPU; the oracle is ``nm_matmul_reference``. The compile
tests lower and compile the kernel for a compile-only H100 / H200 (the CUDA plugin compiles
the Mosaic GPU module to sm_90a PTX during XLA's compile) and assert on the result: the Mosaic
GPU custom call in the HLO and ``wgmma.mma_async`` in the kernel's PTX. Nothing runs on a GPU.
The default run compiles two shapes; ``-m slow`` the matrix (bf16/fp16 x T in {1, 16, 128,
4096} x K = N in {4096, 8192} x both targets) and the backward pass.
"""

import itertools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import mosaic_gpu as plgpu

import jaxnm
from jaxnm import compressed as cz
from jaxnm.kernels import BlockSizes, nm_matmul, nm_matmul_reference
from jaxnm.kernels.mosaic_gpu import nm_matmul_mosaic_gpu, permute_k
from jaxnm.kernels.targets import compile_for_gpu

from .conftest import GPU_TARGETS, gpu_target_device

needs_interpret = pytest.mark.skipif(
    not hasattr(plgpu, "InterpretGPUParams"),
    reason=f"Mosaic GPU interpret mode needs jax >= 0.11 (this is jax {jax.__version__})",
)
TOL = {jnp.bfloat16: 1e-2, jnp.float16: 2e-3}
MOSAIC_CALL = '"mosaic_gpu_v2"'
DTYPES = {"bf16": jnp.bfloat16, "fp16": jnp.float16}
# The CUDA plugin compiles (and dumps the PTX of) each distinct Mosaic GPU module once per
# process, keyed by its hash: a later compile of the same kernel (another T padded to the
# same tiles, or the other target: both are sm_90a) reuses it and dumps nothing. So the PTX is
# remembered here per kernel hash.
_PTX_BY_KERNEL: dict[str, str] = {}


def _case(tokens, k, n_out, n, m, dtype, seed=0):
    rng = np.random.default_rng(seed)
    w = jnp.asarray(rng.standard_normal((k, n_out)), dtype)
    x = jnp.asarray(rng.standard_normal((tokens, k)), dtype)
    c = jaxnm.compress(w, jaxnm.nm_mask(jnp.asarray(rng.random((k, n_out))), n, m), n, m)
    return x, c


def _assert_close(y, ref, dtype):
    assert y.shape == ref.shape and y.dtype == dtype
    scale = float(jnp.max(jnp.abs(ref.astype(jnp.float32))))
    np.testing.assert_allclose(
        np.asarray(y, np.float32), np.asarray(ref, np.float32), atol=TOL[dtype] * scale
    )


@needs_interpret
@pytest.mark.parametrize(
    "n,m,dtype,tokens,n_out",
    [
        (2, 4, jnp.bfloat16, 70, 64),  # two token tiles (block_t 64), padded
        pytest.param(4, 8, jnp.float16, 5, 64, marks=pytest.mark.slow),
        pytest.param(1, 2, jnp.bfloat16, 64, 64, marks=pytest.mark.slow),
        pytest.param(8, 16, jnp.bfloat16, 3, 16, marks=pytest.mark.slow),  # block_n 16
        pytest.param(1, 8, jnp.float16, 8, 32, marks=pytest.mark.slow),  # block_k 512
    ],
)
def test_interpret_matches_reference(n, m, dtype, tokens, n_out):
    # Several K steps of the pipeline and several output tiles.
    k = 1024 if m // n == 8 else 256
    x, c = _case(tokens, k, n_out, n, m, dtype, seed=n + m)
    _assert_close(nm_matmul_mosaic_gpu(x, c, interpret=True), nm_matmul_reference(x, c), dtype)


@pytest.mark.slow
@needs_interpret
def test_interpret_with_given_blocks():
    # block_k = 256 (16 index bytes per step) and one pipeline stage: other slab heights.
    x, c = _case(64, 512, 64, 2, 4, jnp.bfloat16, seed=3)
    y = nm_matmul_mosaic_gpu(
        x, c, block_sizes=BlockSizes(64, 256, 32, num_stages=1), interpret=True
    )
    _assert_close(y, nm_matmul_reference(x, c), jnp.bfloat16)


def test_permute_k_is_the_kernel_row_order():
    # Chunk column v*Q + q takes column q*(8m/n) + v (2:4, block_k 64: Q = 4, 16 slabs).
    x = jnp.arange(2 * 128, dtype=jnp.float32).reshape(2, 128)
    y = permute_k(x, 64, 2, 4)
    q, slabs = 4, 16
    for v, qq in itertools.product(range(slabs), range(q)):
        assert y[1, 64 + v * q + qq] == x[1, 64 + qq * slabs + v]
    assert sorted(np.asarray(y[0]).tolist()) == np.asarray(x[0]).tolist()


@needs_interpret
def test_through_nm_matmul_with_gradients():
    x, c = _case(8, 128, 32, 2, 4, jnp.bfloat16)
    y = nm_matmul(x, c, backend="mosaic_gpu", interpret=True)
    np.testing.assert_allclose(
        np.asarray(y, np.float32), np.asarray(nm_matmul_reference(x, c), np.float32), atol=0.1
    )
    dx = jax.grad(lambda x: nm_matmul(x, c, backend="mosaic_gpu", interpret=True).sum())(x)
    assert dx.shape == x.shape


def test_rejects_what_it_cannot_take():
    # Checked before anything is lowered, so interpret=False raises the same on a CPU host.
    x, c = _case(8, 128, 32, 2, 4, jnp.float32)
    with pytest.raises(ValueError, match="bfloat16 or float16"):
        nm_matmul(x, c, backend="mosaic_gpu", interpret=True)
    xb, cb = _case(8, 128, 32, 2, 4, jnp.bfloat16)
    with pytest.raises(ValueError, match="multiple of 64"):
        nm_matmul_mosaic_gpu(xb, cb, block_sizes=BlockSizes(16, 64, 32), interpret=False)
    with pytest.raises(ValueError, match="multiple of 128"):  # 4-row slabs of 16 columns
        nm_matmul_mosaic_gpu(xb, cb, block_sizes=BlockSizes(64, 64, 16), interpret=False)
    with pytest.raises(ValueError, match="shared memory"):
        nm_matmul_mosaic_gpu(xb, cb, block_sizes=BlockSizes(128, 128, 32, num_stages=64))
    x16, c16 = _case(8, 256, 32, 16, 32, jnp.bfloat16)
    with pytest.raises(ValueError, match="n <= 8"):
        nm_matmul_mosaic_gpu(x16, c16, interpret=False)


def _weight(size, dtype, transposed=False):
    w = jax.ShapeDtypeStruct((size, size), dtype)
    c = jax.eval_shape(lambda w: jaxnm.compress(w, jaxnm.nm_mask(w, 2, 4), 2, 4), w)
    return (c, jax.eval_shape(cz.transpose, c)) if transposed else c


def _mosaic_ptx(hlo: str, ptx: str) -> str:
    """The PTX of the module's Mosaic GPU kernels: this compile's dump, or an earlier one's."""
    hashes = re.findall(r'kernel_hash = "((?:[^"\\]|\\.)*)"', hlo)
    assert hashes, "no Mosaic GPU kernel hash in the HLO"
    for kernel in hashes:
        if ptx:
            _PTX_BY_KERNEL.setdefault(kernel, ptx)
    return "".join(_PTX_BY_KERNEL.get(kernel, "") for kernel in hashes)


def _check_forward(target, dtype_name, tokens, size):
    device = gpu_target_device(target)
    dtype = DTYPES[dtype_name]
    x = jax.ShapeDtypeStruct((tokens, size), dtype)
    out = compile_for_gpu(nm_matmul_mosaic_gpu, device, x, _weight(size, dtype), ptx=True)
    assert len(re.findall(rf"custom_call_target={MOSAIC_CALL}", out.hlo)) == 1
    ptx = _mosaic_ptx(out.hlo, out.mosaic_ptx)
    assert ".target sm_90a" in ptx
    kind = {"bf16": "bf16", "fp16": "f16"}[dtype_name]
    wgmma = rf"wgmma\.mma_async\.sync\.aligned\.m64n\d+k16\.f32\.{kind}\.{kind}"
    assert re.search(wgmma, ptx), "no Hopper wgmma in the Mosaic GPU kernel's PTX"


FORWARD_SUBSET = [("h100", "bf16", 16, 4096), ("h200", "fp16", 4096, 4096)]


@pytest.mark.parametrize("target,dtype,tokens,size", FORWARD_SUBSET)
def test_compiles_for_hopper(target, dtype, tokens, size):
    _check_forward(target, dtype, tokens, size)


@pytest.mark.slow
@pytest.mark.parametrize(
    "target,dtype,tokens,size",
    [
        case
        for case in itertools.product(GPU_TARGETS, DTYPES, (1, 16, 128, 4096), (4096, 8192))
        if case not in FORWARD_SUBSET
    ],
)
def test_compiles_for_hopper_full_matrix(target, dtype, tokens, size):
    _check_forward(target, dtype, tokens, size)


@pytest.mark.slow
@pytest.mark.parametrize("target", GPU_TARGETS)
def test_backward_compiles_for_hopper(target):
    device = gpu_target_device(target)
    c, c_t = _weight(4096, jnp.bfloat16, transposed=True)

    def loss(x, c, c_t):
        y = nm_matmul(x, c, c_t=c_t, backend="mosaic_gpu")
        return jnp.sum(jnp.sin(y.astype(jnp.float32)))

    grad = jax.grad(loss, argnums=(0, 1), allow_int=True)
    x = jax.ShapeDtypeStruct((128, 4096), jnp.bfloat16)
    out = compile_for_gpu(grad, device, x, c, c_t)
    # The forward kernel (its output feeds sin's derivative) and dX = dY·Wᵀ through c_t.
    assert len(re.findall(rf"custom_call_target={MOSAIC_CALL}", out.hlo)) == 2
