"""Shared test settings.

Hypothesis profiles: ``ci`` (default; few examples, no deadline since JAX compiles on
first call) and ``thorough`` (``HYPOTHESIS_PROFILE=thorough``, used with ``-m slow``).
"""

import os

# The jax CUDA plugin (used for compile-only H100/H200 devices, tests/kernels) registers only
# after its CUDA-runtime version check, which fails on a machine without CUDA: skip the check.
# Read when jax first initialises its backends, so it must be set before any test runs.
os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")

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
