"""The kernels lower for real hardware from a CPU-only machine (``jax.export``).

``nm_matmul`` with no ``backend`` is exported for each platform: it must pick the platform's
kernel from the lowering platform (``lax.platform_dependent``), not from this CPU host. This
runs the Pallas -> Triton IR (CUDA) and Pallas -> Mosaic (TPU) lowerings with the default
per-shape block sizes, catching unsupported operations, dtypes and block shapes at the Pallas
level. It does not run Triton's or libtpu's own compilers (``test_gpu_compile.py`` runs XLA's
whole GPU compiler), nor the kernels on a device.
"""

import re

import jax
import jax.numpy as jnp
import pytest
from jax.export import DisabledSafetyCheck
from jax.sharding import AbstractDevice, AbstractMesh

import jaxnm
from jaxnm.kernels import nm_matmul

TRITON_CALL = "__gpu$xla.gpu.triton"
# jax >= 0.11 asks the abstract mesh which GPU a CUDA lowering is for (no GPU here).
H100 = AbstractDevice(device_kind="NVIDIA H100 80GB HBM3", num_cores=None, platform="cuda")


def _export(platform, tokens, size, n, m, dtype):
    w = jax.ShapeDtypeStruct((size, size), dtype)
    mask = jax.ShapeDtypeStruct((size, size), jnp.bool_)
    c = jax.eval_shape(lambda w, k: jaxnm.compress(w, k, n, m), w, mask)
    x = jax.ShapeDtypeStruct((tokens, size), dtype)
    checks = [DisabledSafetyCheck.custom_call(TRITON_CALL)] if platform == "cuda" else []
    with jax.sharding.use_abstract_mesh(AbstractMesh((1,), ("x",), abstract_device=H100)):
        exported = jax.export.export(
            jax.jit(nm_matmul), platforms=[platform], disabled_checks=checks
        )(x, c)
    return set(re.findall(r"custom_call @([\w$.]+)", exported.mlir_module()))


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (1, 2)])
@pytest.mark.parametrize("tokens", [1, 16, 4096])
def test_gpu_kernel_lowers_to_triton(n, m, tokens):
    assert TRITON_CALL in _export("cuda", tokens, 4096, n, m, jnp.bfloat16)


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (1, 2)])
@pytest.mark.parametrize("tokens", [1, 16, 4096])
def test_tpu_kernel_lowers_to_mosaic(n, m, tokens):
    assert "tpu_custom_call" in _export("tpu", tokens, 4096, n, m, jnp.bfloat16)


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float16])
def test_kernels_lower_for_other_dtypes(platform, dtype):
    assert _export(platform, 8, 1024, 2, 4, dtype)


def test_cpu_lowering_has_no_kernel():
    assert not _export("cpu", 16, 1024, 2, 4, jnp.bfloat16)
