"""The tile distributions every solver and certificate test draws from, and the retained
score the tests compare masks by (one definition each)."""

import jax.numpy as jnp
import numpy as np

#: Gaussian, Cauchy, log-uniform over 16 decades, integer ties, all-equal, one-hot,
#: bf16-rounded Gaussian.
KINDS = ("normal", "cauchy", "log_uniform", "integers", "equal", "one_hot", "bf16")


def draw(kind: str, b: int, m: int, rng: np.random.Generator) -> np.ndarray:
    """float32 ``(b, m, m)`` non-negative tile scores of ``kind`` (see :data:`KINDS`)."""
    if kind == "normal":
        s = np.abs(rng.standard_normal((b, m, m)))
    elif kind == "cauchy":
        s = np.abs(rng.standard_cauchy((b, m, m)))
    elif kind == "log_uniform":  # 16 decades
        s = 10.0 ** rng.uniform(-8, 8, (b, m, m))
    elif kind == "integers":  # many ties
        s = rng.integers(0, 4, (b, m, m)).astype(float)
    elif kind == "equal":
        s = np.full((b, m, m), 0.5)
    elif kind == "one_hot":
        s = np.zeros((b, m * m))
        s[np.arange(b), rng.integers(0, m * m, b)] = 1.0
        s = s.reshape(b, m, m)
    elif kind == "bf16":
        s = np.abs(np.asarray(jnp.asarray(rng.standard_normal((b, m, m)), jnp.bfloat16), float))
    else:
        raise ValueError(f"unknown tile kind {kind!r}; expected one of {KINDS}")
    return s.astype(np.float32)


def retained(scores, keep) -> np.ndarray:
    """float64 sum of ``scores`` over the kept entries of every ``(..., m, m)`` tile."""
    return np.sum(np.where(np.asarray(keep), np.asarray(scores, np.float64), 0.0), axis=(-2, -1))
