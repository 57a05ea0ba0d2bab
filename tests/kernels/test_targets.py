"""Compile-only GPU devices (``jaxnm.kernels.targets``): configs, devices, a real compile."""

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import SingleDeviceSharding

from jaxnm.kernels import targets

from .conftest import GPU_TARGETS

KINDS = {"h100": "NVIDIA H100 80GB HBM3", "h200": "NVIDIA H200 141GB HBM3e"}


@pytest.mark.parametrize("target", GPU_TARGETS)
def test_target_config_is_xlas_file_minus_fields_this_jaxlib_lacks(target):
    text = targets.target_config(target)
    repo, path, commit = targets.SOURCES[target]
    assert repo == "openxla/xla" and path.endswith(targets._FILES[target]) and len(commit) == 40
    assert f'device_description_str: "{KINDS[target]}"' in text
    assert "major: 9" in text and "core_count: 132" in text
    field = targets.FIELDS_NEWER_THAN_0_12[0]
    raw = (targets._DIR / targets._FILES[target]).read_text()
    assert field in raw
    assert (field in text) == (targets._jaxlib_version() >= (0, 12))


def test_unknown_target():
    with pytest.raises(ValueError, match=r"`target` \(='a100'\) must be one of"):
        targets.target_config("a100")


def test_device_compiles_a_gpu_program(gpu_target):
    assert gpu_target.platform == "gpu"
    assert gpu_target.device_kind in KINDS.values()
    s = SingleDeviceSharding(gpu_target)
    x = jax.ShapeDtypeStruct((256, 256), jnp.bfloat16, sharding=s)
    compiled = jax.jit(lambda a: jnp.tanh(a @ a)).lower(x).compile()
    assert compiled.input_shardings[0][0].device_set == {gpu_target}
    assert "fusion" in compiled.as_text()


def test_missing_plugin_error_says_what_to_install(monkeypatch):
    def no_cuda(**kwargs):
        raise NotImplementedError("topology not implemented for cuda")

    monkeypatch.setattr(targets.topologies, "get_topology_desc", no_cuda)
    monkeypatch.setattr(targets, "_has_module", lambda name: False)
    with pytest.raises(targets.CudaPluginMissing, match="pip install 'jax-cuda12-plugin=="):
        targets.compile_only_device.__wrapped__("h100")
    monkeypatch.setattr(targets, "_has_module", lambda name: True)
    with pytest.raises(targets.CudaPluginMissing, match="JAX_SKIP_CUDA_CONSTRAINTS_CHECK=1"):
        targets.compile_only_device.__wrapped__("h200")
