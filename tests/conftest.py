"""Shared test settings.

Hypothesis profiles: ``ci`` (default; few examples, no deadline since JAX compiles on
first call) and ``thorough`` (``HYPOTHESIS_PROFILE=thorough``, used with ``-m slow``).
"""

import os
from importlib.metadata import version

# The jax CUDA plugin (used for compile-only H100/H200 devices, tests/kernels) registers only
# after its CUDA-runtime version check, which fails on a machine without CUDA: skip the check.
# Read when jax first initialises its backends, so it must be set before any test runs.
os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")


# The suite compiles a few thousand small programs and runs most of them once, so LLVM's
# optimisation passes (and, on jaxlib 0.10, XLA:CPU's fusion emitters, an option jaxlib 0.12
# no longer has: XLA aborts on a flag it does not know) are most of its time and buy
# nothing here; turned off they roughly halve the suite on 2 cores (BENCHMARKS.md, "Test
# suite"). Neither changes what a program means (no fast-math either way; the bit-for-bit
# host/device tests pass in both). `JAXNM_TEST_XLA_DEFAULTS=1` runs the suite with XLA's
# defaults, as users compile. Subprocesses the tests start inherit the flags; XLA reads them
# when jax first makes a backend, after this file.
def _fast_compile_xla_flags() -> list[str]:
    flags = ["--xla_backend_optimization_level=0"]
    if version("jaxlib").startswith("0.10."):
        flags.append("--xla_cpu_use_fusion_emitters=false")
    return flags


if os.environ.get("JAXNM_TEST_XLA_DEFAULTS") != "1":
    _user_flags = os.environ.get("XLA_FLAGS", "")
    _ours = [f for f in _fast_compile_xla_flags() if f.split("=")[0] not in _user_flags]
    os.environ["XLA_FLAGS"] = " ".join([*_ours, _user_flags]).strip()

from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile(
    "ci",
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "thorough",
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
