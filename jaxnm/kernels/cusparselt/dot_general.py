"""The ``dot_general`` form of the cuSPARSELt training layer (``jaxnm.ops`` backend).

Only the Dense form is taken: no batch dimensions, ``rhs`` a 2-D ``(in, out)`` kernel
contracted on axis 0, ``lhs`` contracted on its last axis (its other axes are tokens). Other
``dimension_numbers`` raise: use ``backend="xla"`` for them.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxnm.kernels.cusparselt.training import cusparselt_linear


def cusparselt_dot_general(
    lhs: jax.Array,
    rhs: jax.Array,
    mask: jax.Array,
    dimension_numbers: tuple,
    *,
    prune: Callable[[jax.Array, jax.Array], jax.Array] | None,
    key: jax.Array | None,
    preferred_element_type=None,
    out_sharding=None,
    interpret: bool = False,
) -> jax.Array:
    """``lax.dot_general(lhs, rhs ⊙ mask)`` through :func:`cusparselt_linear`.

    Args:
      lhs: ``(..., K)`` bfloat16 / float16 activations.
      rhs: ``(K, N)`` kernel of ``lhs``'s dtype; ``mask`` of its shape, transposable 2:4.
      dimension_numbers: normalised ``((lhs_contracting, rhs_contracting), (lhs_batch,
        rhs_batch))``; must be ``(((lhs.ndim - 1,), (0,)), ((), ()))``.
      prune, key, interpret: see :func:`cusparselt_linear`.
      preferred_element_type: ``None`` or ``lhs.dtype`` (cuSPARSELt returns the operand
        dtype, accumulating in float32).
      out_sharding: must be ``None`` (shard with
        :func:`~jaxnm.kernels.cusparselt.sharded_cusparselt_linear`).

    Returns:
      ``(..., N)`` in ``lhs``'s dtype.
    """
    dense_form = (((jnp.ndim(lhs) - 1,), (0,)), ((), ()))
    if jnp.ndim(rhs) != 2 or tuple(dimension_numbers) != dense_form:
        raise ValueError(
            "backend='cusparselt' takes the Dense form only (rhs a 2-D (in, out) kernel, lhs "
            f"contracted on its last axis, no batch axes); got rhs shape {jnp.shape(rhs)} and "
            f"dimension_numbers={dimension_numbers}. Use backend='xla' for this layer."
        )
    if preferred_element_type is not None and jnp.dtype(preferred_element_type) != lhs.dtype:
        raise ValueError(
            f"backend='cusparselt' returns {lhs.dtype}; got preferred_element_type="
            f"{jnp.dtype(preferred_element_type)}."
        )
    if out_sharding is not None:
        raise ValueError(
            "backend='cusparselt' takes no out_sharding; use "
            "jaxnm.kernels.cusparselt.sharded_cusparselt_linear on sharded arrays."
        )
    return cusparselt_linear(lhs, rhs, mask, prune=prune, key=key, interpret=interpret)
