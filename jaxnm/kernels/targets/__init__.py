"""Compile-only NVIDIA GPU devices: compile for an H100 / H200 from a host without a GPU.

``compile_only_device("h200")`` returns a ``jax.Device`` of a one-GPU compile-only topology
built from XLA's GPU target config for that chip (``jax.experimental.topologies``). Placing
``jax.jit`` inputs on it (``jax.ShapeDtypeStruct(..., sharding=SingleDeviceSharding(device))``)
makes ``.lower(...).compile()`` run XLA's whole GPU pipeline (Triton, LLVM, PTX) on the CPU;
nothing can be executed on it. It needs the jax CUDA plugin (``jax-cuda12-plugin`` and
``jax-cuda12-pjrt``, the same version as ``jaxlib``; no NVIDIA libraries). On a machine
without a CUDA runtime, the plugin only registers when its version check is skipped
(``JAX_SKIP_CUDA_CONSTRAINTS_CHECK=1`` or ``JAX_PLATFORMS=cpu`` set before jax starts).

The target configs (``*.txtpb``, ``stream_executor.GpuTargetConfigProto``) are XLA's files,
unchanged (see :data:`SOURCES`). jaxlib 0.10.2 cannot parse :data:`FIELDS_NEWER_THAN_0_12`
(``collective_memory_granularity``, used for collectives only; 0.12.0.1 can, 0.11 was not
tried): for jaxlib < 0.12 the field is dropped when the config is read.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.util
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, get_args

import jax
import jaxlib
from jax.experimental import topologies
from jax.sharding import SingleDeviceSharding

GpuTarget = Literal["h100", "h200"]

_DIR = Path(__file__).parent
_FILES = {"h100": "h100_sxm.txtpb", "h200": "h200.txtpb"}

# Where each file comes from: repository, path, commit (read unchanged).
SOURCES = {
    "h100": (
        "openxla/xla",
        "xla/backends/gpu/target_config/specs/h100_sxm.txtpb",
        "0774019d97e77dc433ce97604295f6fc0f5b3b65",
    ),
    "h200": (
        "openxla/xla",
        "xla/backends/gpu/target_config/specs/h200.txtpb",
        "4336d12e0706168f6a382ddb231f3a83853b0657",
    ),
}

FIELDS_NEWER_THAN_0_12 = ("collective_memory_granularity",)

_PLUGINS = ("jax_plugins.xla_cuda12", "jax_plugins.xla_cuda13")


class CudaPluginMissing(RuntimeError):
    """The jax CUDA plugin is not installed or not registered, so no GPU target exists."""


def _jaxlib_version() -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", jaxlib.__version__)[:3])


def target_config(target: GpuTarget) -> str:
    """The ``GpuTargetConfigProto`` text of ``target`` that the installed jaxlib can parse."""
    if target not in _FILES:
        raise ValueError(f"`target` (={target!r}) must be one of {get_args(GpuTarget)}.")
    text = (_DIR / _FILES[target]).read_text()
    if _jaxlib_version() < (0, 12):
        dropped = "|".join(FIELDS_NEWER_THAN_0_12)
        text = re.sub(rf"(?m)^\s*(?:{dropped})\s*:.*\n", "", text)
    return text


def _missing_plugin_message(error: Exception) -> str:
    version = jaxlib.__version__
    if not any(_has_module(p) for p in _PLUGINS):
        return (
            f"Compile-only GPU devices need the jax CUDA plugin: pip install "
            f"'jax-cuda12-plugin=={version}' 'jax-cuda12-pjrt=={version}' (same version as "
            f"jaxlib; no NVIDIA libraries needed). ({error})"
        )
    return (
        "The jax CUDA plugin is installed but did not register: without a CUDA runtime its "
        "version check fails. Set JAX_SKIP_CUDA_CONSTRAINTS_CHECK=1 (or JAX_PLATFORMS=cpu) "
        f"before jax initialises, and check that the plugin's version is jaxlib's ({version}). "
        f"({error})"
    )


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


@functools.cache
def compile_only_device(target: GpuTarget = "h100") -> jax.Device:
    """A compile-only ``jax.Device`` for one NVIDIA ``target`` GPU (``"h100"`` or ``"h200"``).

    Args:
      target: ``"h100"`` (H100 SXM 80 GB) or ``"h200"`` (H200 141 GB), both sm_90a.

    Returns:
      The single device of a ``"1x1x1"`` CUDA topology; ``device.platform == "gpu"``,
      ``device.device_kind`` names the chip. Use it in shardings of ``jax.ShapeDtypeStruct``
      inputs to ``jax.jit(f).lower(...)``; the result can be compiled, never run.

    Raises:
      ValueError: unknown ``target``.
      CudaPluginMissing: the jax CUDA plugin is not installed or did not register.

    Example::

        dev = compile_only_device("h200")
        s = jax.sharding.SingleDeviceSharding(dev)
        x = jax.ShapeDtypeStruct((16, 4096), jnp.bfloat16, sharding=s)
        compiled = jax.jit(f).lower(x).compile()
    """
    config = target_config(target)
    try:
        topology = topologies.get_topology_desc(
            platform="cuda", target_config=config, topology="1x1x1"
        )
    except (NotImplementedError, RuntimeError) as error:
        raise CudaPluginMissing(_missing_plugin_message(error)) from error
    (device,) = topology.devices
    return device


@dataclasses.dataclass(frozen=True)
class GpuCompile:
    """What :func:`compile_for_gpu` produced.

    Attributes:
      compiled: the ``jax.stages.Compiled`` (compile-only: it cannot be called).
      hlo: the optimised HLO module text (``compiled.as_text()``): custom calls, fusions.
      ptx: the PTX that XLA emitted for the module's kernels (Triton's included),
        concatenated; ``""`` unless ``ptx=True`` was passed.
      mosaic_ptx: the PTX of the module's Mosaic GPU kernels that this compile built,
        concatenated; ``""`` unless ``ptx=True``. The CUDA plugin builds each distinct Mosaic
        GPU module once per process (keyed by its ``kernel_hash``): one built by an earlier
        compile in the process is reused and not dumped again.
    """

    compiled: Any
    hlo: str
    ptx: str
    mosaic_ptx: str = ""


def compile_for_gpu(
    fn: Callable, target: GpuTarget | jax.Device, *args: Any, ptx: bool = False
) -> GpuCompile:
    """Compiles ``jax.jit(fn)(*args)`` for a compile-only GPU from this (CPU) host.

    Args:
      fn: the function to compile (pure; its arguments are pytrees of arrays).
      target: ``"h100"``, ``"h200"`` or a device from :func:`compile_only_device`.
      *args: pytrees whose leaves are arrays or ``jax.ShapeDtypeStruct`` (values are never
        read); every leaf is placed on the device.
      ptx: also return the PTX (slower): XLA's own kernels (Triton included) are dumped with
        ``xla_dump_to`` (``GpuCompile.ptx``); Mosaic GPU kernels, which the CUDA plugin
        compiles during the same XLA compile (``GpuCompile.mosaic_ptx``), through its
        ``MOSAIC_GPU_DUMP_PTX`` / ``MOSAIC_GPU_DUMP_TO`` environment variables, set for the
        duration of the call (process-wide: do not compile concurrently from other threads
        while ``ptx=True``).

    Returns:
      :class:`GpuCompile`. jax >= 0.11's Pallas GPU lowerings ask the default device which
      GPU they target, so lowering runs under ``jax.default_device(device)``.
    """
    device = compile_only_device(target) if isinstance(target, str) else target
    sharding = SingleDeviceSharding(device)
    placed = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), args)
    with tempfile.TemporaryDirectory() as dump, jax.default_device(device):
        mosaic = Path(dump) / "mosaic_gpu"
        mosaic.mkdir()
        env = {"MOSAIC_GPU_DUMP_PTX": "1", "MOSAIC_GPU_DUMP_TO": str(mosaic)} if ptx else {}
        with _environment(env):
            lowered = jax.jit(fn).lower(*placed)
            # jaxlib 0.10 dumps PTX with xla_dump_to alone; 0.12 also needs the emitter filter.
            options = {"xla_dump_to": dump, "xla_dump_emitter_re": "ptx"} if ptx else {}
            compiled = lowered.compile(compiler_options=options)
        text = "".join(p.read_text() for p in sorted(Path(dump).glob("*.ptx")))
        mosaic_text = "".join(p.read_text() for p in sorted(mosaic.glob("*.ptx")))
    return GpuCompile(compiled=compiled, hlo=compiled.as_text(), ptx=text, mosaic_ptx=mosaic_text)


@contextlib.contextmanager
def _environment(values: dict[str, str]):
    """Sets environment variables for the ``with`` block, then restores the previous ones."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
