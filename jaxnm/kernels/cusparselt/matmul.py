"""``nm_matmul``'s ``backend="cusparselt"``: ``x · W`` for a 2:4 :class:`~jaxnm.CompressedNM`.

EXPERIMENTAL (compiled deviceless for H100/H200, CPU-tested through the emulation, never run
on a GPU here). jaxnm's compressed format is not cuSPARSELt's: the weight is decompressed and
re-compressed by cuSPARSELt inside every call (one memory-bound pass over ``W``). To compress
once, use :func:`jaxnm.kernels.cusparselt.compress` and :func:`~jaxnm.kernels.cusparselt.matmul`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxnm.compressed import CompressedNM, decompress
from jaxnm.kernels.common import check_kernel_input
from jaxnm.kernels.cusparselt import layout
from jaxnm.kernels.cusparselt.sparse_mm import compress, matmul

_PATTERNS = ((2, 4), (1, 2))  # 1:2 keeps one of each pair: also 2 of every 4
_DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def cusparselt_support(x: jax.Array, c: CompressedNM) -> str | None:
    """Why ``backend="cusparselt"`` cannot take ``(x, c)``, or ``None`` when it can."""
    if (c.n, c.m) not in _PATTERNS:
        return f"n:m = {c.n}:{c.m} is not 2:4-compatible (2:4 or 1:2)"
    dtype = jnp.dtype(jnp.result_type(x, c.dtype))
    if dtype not in _DTYPES:
        return f"dtype {dtype} is not bfloat16 or float16"
    k, n_out = c.shape
    mult = layout.sparse_multiple(dtype)
    if k % mult or n_out % mult:
        return f"K={k} and N={n_out} must be multiples of {mult}"
    return None


def nm_matmul_cusparselt(x: jax.Array, c: CompressedNM, *, interpret: bool = False) -> jax.Array:
    """``x · W`` on cuSPARSELt (no autodiff of its own: use ``nm_matmul``).

    Args:
      x: ``(T, K)`` bfloat16 / float16; any ``T`` (zero-padded to a multiple of 8).
      c: 2-D :class:`~jaxnm.CompressedNM` of ``W (K, N)``, 2:4 (or 1:2) along ``K``;
        ``K``, ``N`` multiples of 16.
      interpret: the pure-JAX emulation of the cuSPARSELt calls.

    Returns:
      ``(T, N)`` in ``result_type(x, c.dtype)``, float32 accumulation.

    Raises:
      ValueError: an input cuSPARSELt cannot take (see :func:`cusparselt_support`).
    """
    check_kernel_input(x, c, cusparselt_support, subject="backend='cusparselt'")
    dtype = jnp.result_type(x, c.dtype)
    tokens = x.shape[0]
    padded = -(-tokens // layout.dense_multiple(dtype)) * layout.dense_multiple(dtype)
    x = jnp.pad(x.astype(dtype), ((0, padded - tokens), (0, 0)))
    a = compress(decompress(c).astype(dtype).T, check=False, interpret=interpret)  # (N, K)
    return matmul(a, x, transpose_b=True)[:tokens]
