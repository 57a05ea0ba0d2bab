"""Fixtures for the kernel tests: compile-only H100 / H200 devices (``jaxnm.kernels.targets``).

Tests that take ``gpu_target`` (one compile-only ``jax.Device`` per target, parametrised over
``GPU_TARGETS``) or call :func:`gpu_target_device` are skipped, with the reason, only when the
jax CUDA plugin is missing or did not register (see ``tests/conftest.py``).
"""

import jax
import pytest

from jaxnm.kernels.targets import CudaPluginMissing, compile_only_device

GPU_TARGETS = ("h100", "h200")


def gpu_target_device(target: str) -> jax.Device:
    """The compile-only device of ``target``, or a pytest skip naming why there is none."""
    try:
        return compile_only_device(target)
    except CudaPluginMissing as error:
        pytest.skip(f"no compile-only {target} device: {error}")


@pytest.fixture(params=GPU_TARGETS, scope="session")
def gpu_target(request) -> jax.Device:
    return gpu_target_device(request.param)
