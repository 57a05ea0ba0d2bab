"""Shared test settings.

Hypothesis profiles: ``ci`` (default; few examples, no deadline since JAX compiles on
first call) and ``thorough`` (``HYPOTHESIS_PROFILE=thorough``, used with ``-m slow``).
"""

import os

from hypothesis import HealthCheck, settings

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
