"""The small parameter tree the sparsify tests share: two tiling kernels and a bias, and a
kernel that does not tile by 4."""

import jax
import jax.numpy as jnp


def params(key=0, dtype=jnp.float32):
    """``{"dense": {"kernel": (8, 16), "bias": (16,)}, "out": {"kernel": (16, 4)},
    "odd": {"kernel": (6, 4)}}`` of ``dtype``, standard normal kernels, zero bias."""
    k1, k2, k3 = jax.random.split(jax.random.key(key), 3)
    return {
        "dense": {"kernel": jax.random.normal(k1, (8, 16), dtype), "bias": jnp.zeros(16, dtype)},
        "out": {"kernel": jax.random.normal(k2, (16, 4), dtype)},
        "odd": {"kernel": jax.random.normal(k3, (6, 4), dtype)},  # 6 does not tile by 4
    }
