"""The Mosaic GPU N:M kernel (EXPERIMENTAL): interpret-mode correctness and its lowering.

Interpret mode (``plgpu.InterpretGPUParams``, jax >= 0.11) simulates shared memory, TMA
copies, barriers and ``wgmma`` on CPU; the oracle is ``nm_matmul_reference``. The real
lowering for an H100 is known to fail (Mosaic GPU layout inference, see the module
docstring): a strict xfail, so that the day it lowers this test says so.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import mosaic_gpu as plgpu

import jaxnm
from jaxnm.kernels import BlockSizes, nm_matmul, nm_matmul_reference
from jaxnm.kernels.mosaic_gpu import nm_matmul_mosaic_gpu
from jaxnm.kernels.targets import compile_for_gpu

from .conftest import gpu_target_device

needs_interpret = pytest.mark.skipif(
    not hasattr(plgpu, "InterpretGPUParams"),
    reason=f"Mosaic GPU interpret mode needs jax >= 0.11 (this is jax {jax.__version__})",
)
TOL = {jnp.bfloat16: 1e-2, jnp.float16: 2e-3}


def _case(tokens, k, n_out, n, m, dtype, seed=0):
    rng = np.random.default_rng(seed)
    w = jnp.asarray(rng.standard_normal((k, n_out)), dtype)
    x = jnp.asarray(rng.standard_normal((tokens, k)), dtype)
    c = jaxnm.compress(w, jaxnm.nm_mask(jnp.asarray(rng.random((k, n_out))), n, m), n, m)
    return x, c


@needs_interpret
@pytest.mark.parametrize(
    "n,m,dtype,tokens",
    [
        (2, 4, jnp.bfloat16, 70),
        pytest.param(4, 8, jnp.float16, 5, marks=pytest.mark.slow),
        pytest.param(1, 2, jnp.bfloat16, 64, marks=pytest.mark.slow),
    ],
)
def test_interpret_matches_reference(n, m, dtype, tokens):
    # Several K steps of the pipeline and several output tiles (block_n 32 of N = 64).
    x, c = _case(tokens, 256, 64, n, m, dtype, seed=n + m)
    y = nm_matmul_mosaic_gpu(x, c, interpret=True)
    ref = nm_matmul_reference(x, c)
    assert y.shape == ref.shape and y.dtype == dtype
    scale = float(jnp.max(jnp.abs(ref.astype(jnp.float32))))
    np.testing.assert_allclose(
        np.asarray(y, np.float32), np.asarray(ref, np.float32), atol=TOL[dtype] * scale
    )


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
    x, c = _case(8, 128, 32, 2, 4, jnp.float32)
    with pytest.raises(ValueError, match="bfloat16 or float16"):
        nm_matmul(x, c, backend="mosaic_gpu", interpret=True)
    xb, cb = _case(8, 128, 32, 2, 4, jnp.bfloat16)
    with pytest.raises(ValueError, match="multiple of 64"):
        nm_matmul_mosaic_gpu(xb, cb, block_sizes=BlockSizes(16, 64, 32), interpret=True)


@pytest.mark.xfail(
    strict=True,
    raises=ValueError,
    reason="Mosaic GPU layout inference cannot place the 3-D/4-D one-hot expansion",
)
def test_lowers_for_h100():
    device = gpu_target_device("h100")
    if not hasattr(plgpu, "InterpretGPUParams"):
        pytest.skip("checked on jax >= 0.11 only")
    x = jax.ShapeDtypeStruct((4096, 4096), jnp.bfloat16)
    w = jax.ShapeDtypeStruct((4096, 4096), jnp.bfloat16)
    c = jax.eval_shape(lambda w: jaxnm.compress(w, jaxnm.nm_mask(w, 2, 4), 2, 4), w)
    out = compile_for_gpu(nm_matmul_mosaic_gpu, device, x, c, ptx=True)
    assert "mosaic_gpu" in out.hlo
