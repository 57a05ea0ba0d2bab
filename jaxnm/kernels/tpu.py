"""Pallas Mosaic TPU kernel for ``x · W`` with ``W`` compressed N:M along ``K``.

Grid ``(T / block_t, N / block_n, K / block_k)``, ``K`` innermost and sequential
("arbitrary"): each step DMAs a ``(block_t, block_k)`` tile of ``x``, the matching
``(block_k * n // m, block_n)`` tile of kept values and its ``bits`` index planes into VMEM
(Pallas double-buffers them), expands the weight tile (:func:`expand_tile`) and accumulates the
MXU product in a float32 VMEM scratch; the output tile is written at the last ``K`` step.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from jaxnm.compressed import CompressedNM
from jaxnm.kernels.blocks import BlockSizes
from jaxnm.kernels.common import kernel_blocks, pad_rows, poison, round_up
from jaxnm.kernels.expand import RUN, expand_tile


def _kernel(x_ref, v_ref, p_ref, *refs, n, m, bits, num_k, compute_dtype):
    o_ref, acc_ref = refs[-2:]  # refs[:-2]: the aliased (poisoned) output, never read
    kb = pl.program_id(2)
    precision = lax.Precision.HIGHEST if compute_dtype == jnp.float32 else None

    @pl.when(kb == 0)
    def _init():
        acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.float32)

    w = expand_tile(v_ref[...], [p_ref[p] for p in range(bits)], n, m).astype(compute_dtype)
    x = x_ref[...].astype(compute_dtype)
    acc_ref[...] += jnp.dot(x, w, precision=precision, preferred_element_type=jnp.float32)

    @pl.when(kb == num_k - 1)
    def _store():
        o_ref[...] = acc_ref[...].astype(o_ref.dtype)


def nm_matmul_tpu(
    x: jax.Array,
    c: CompressedNM,
    *,
    block_sizes: BlockSizes | None = None,
    interpret: bool = False,
    poison_output: bool = False,
) -> jax.Array:
    """``x · W`` on the Pallas Mosaic TPU backend (no autodiff: use ``nm_matmul``).

    Args:
      x: ``(T, K)`` float32 / bfloat16 / float16; any ``T`` (zero-padded to a multiple of
        ``block_t``, then sliced).
      c: 2-D :class:`~jaxnm.CompressedNM` of ``W (K, N)``, N:M along ``K`` (axis 0), ``n`` and
        ``m`` powers of two, ``K * n / m`` a multiple of 8.
      block_sizes: tiles; default :meth:`BlockSizes.for_shape` with ``backend="tpu"``
        (``num_warps`` / ``num_stages`` are ignored).
      interpret: run in TPU interpret mode (``pltpu.InterpretParams()``: simulated VMEM and
        DMAs on CPU; uninitialised buffers read as NaN).
      poison_output: start from a NaN-filled output buffer (aliased into the kernel), so any
        tile the kernel fails to write shows up as NaN. For tests.

    Returns:
      ``(T, N)`` in ``result_type(x, c.dtype)``, float32 accumulation.
    """
    block = kernel_blocks(x, c, block_sizes, "tpu")
    (tokens, k), n_out = x.shape, c.shape[1]
    bt, bk, bn = block.block_t, block.block_k, block.block_n
    rows = bk * c.n // c.m
    padded = round_up(tokens, bt)
    out_dtype = jnp.result_type(x, c.dtype)
    in_specs = [
        pl.BlockSpec((bt, bk), lambda i, j, kb: (i, kb)),
        pl.BlockSpec((rows, bn), lambda i, j, kb: (kb, j)),
        pl.BlockSpec((c.bits, rows // RUN, bn), lambda i, j, kb: (0, kb, j)),
    ]
    out_spec = pl.BlockSpec((bt, bn), lambda i, j, kb: (i, j))
    args = [pad_rows(x, padded), c.values, c.indices]
    aliases = {}
    if poison_output:
        in_specs.append(out_spec)
        args.append(poison((padded, n_out), out_dtype))
        aliases = {3: 0}
    kernel = functools.partial(
        _kernel, n=c.n, m=c.m, bits=c.bits, num_k=k // bk, compute_dtype=out_dtype
    )
    out = pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct((padded, n_out), out_dtype),
        grid=(padded // bt, n_out // bn, k // bk),
        in_specs=in_specs,
        out_specs=out_spec,
        scratch_shapes=[pltpu.VMEM((bt, bn), jnp.float32)],
        input_output_aliases=aliases,
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "arbitrary")
        ),
        interpret=pltpu.InterpretParams() if interpret else False,
        name="nm_matmul_tpu",
    )(*args)
    return out[:tokens]
