"""Plain ``jax.numpy`` N:M matmul: the test oracle and the XLA (CPU default) path."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from jaxnm.compressed import CompressedNM, decompress
from jaxnm.kernels.common import check_operands


def nm_matmul_reference(
    x: jax.Array, c: CompressedNM, *, precision: lax.PrecisionLike = None
) -> jax.Array:
    """``x · W`` by decompressing ``W`` and one XLA dot with float32 accumulation.

    Args:
      x: ``(..., K)`` floating activations.
      c: 2-D :class:`~jaxnm.CompressedNM` of ``W (K, N)``, N:M along ``K`` (axis 0).
      precision: passed to ``jnp.dot`` (e.g. ``lax.Precision.HIGHEST`` for exact float32
        on accelerators).

    Returns:
      ``(..., N)`` in ``result_type(x, c.dtype)``.
    """
    check_operands(x, c)
    dtype = jnp.result_type(x, c.dtype)
    w = decompress(c).astype(dtype)
    y = jnp.dot(x.astype(dtype), w, precision=precision, preferred_element_type=jnp.float32)
    return y.astype(dtype)
