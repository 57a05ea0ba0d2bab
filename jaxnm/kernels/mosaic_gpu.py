"""Pallas Mosaic GPU (Hopper) kernel for ``x · W`` with ``W`` compressed N:M along ``K``.

One CTA (one warpgroup) per ``(block_t, block_n)`` output tile, grid ``(T / block_t,
N / block_n)``. ``plgpu.emit_pipeline`` streams the ``K`` loop through shared memory with
TMA copies, ``num_stages`` steps in flight: each step brings the ``(block_t, block_k)`` slice
of ``x`` (tiled + swizzled for ``wgmma``), the ``(block_k * n // m, block_n)`` kept values and
their ``bits`` index planes ``(block_k * n // m // 8, block_n)``. The weight tile is expanded
in registers (:func:`expand_tile`, the same one-hot select as the Triton and TPU kernels),
stored to a swizzled shared-memory tile and fed to Hopper's ``wgmma`` with the float32
accumulator in registers. Only the compressed weight bytes travel from HBM.

16-bit inputs only (``wgmma`` has no float32 operands; tf32 would lose precision).

STATUS (EXPERIMENTAL; ``nm_matmul(..., backend="mosaic_gpu")`` only, never chosen
automatically): correct in Mosaic GPU's interpret mode on CPU (jax >= 0.11; tests compare
with ``nm_matmul_reference``), but its real lowering fails in Mosaic GPU's layout inference
(jax 0.12.0.1: "Failed to infer a possible set of layouts"): the one-hot expansion reshapes
register arrays to 3-D/4-D, which Mosaic GPU's register layouts do not express. A
lowerable version needs an expansion written on 2-D ``(rows, block_n)`` slabs (e.g. index
planes brought in per bit row and the K axis of ``x`` permuted to match); not done. It has
never run on a GPU.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from jaxnm.compressed import CompressedNM
from jaxnm.kernels.blocks import BlockSizes
from jaxnm.kernels.common import kernel_blocks, pad_rows, round_up
from jaxnm.kernels.expand import RUN, expand_tile

MOSAIC_DTYPES = (jnp.bfloat16, jnp.float16)


def mosaic_gpu_support(x: jax.Array, c: CompressedNM) -> str | None:
    """Why this kernel cannot take ``(x, c)`` beyond :func:`kernel_support`, or ``None``."""
    if jnp.result_type(x) != c.dtype or c.dtype not in MOSAIC_DTYPES:
        return (
            f"it takes bfloat16 or float16 `x` and `c` of one dtype, got "
            f"{jnp.result_type(x)} and {c.dtype}"
        )
    if not hasattr(plgpu, "InterpretGPUParams"):
        return f"it needs jax >= 0.11 (Mosaic GPU interpret mode), this is jax {jax.__version__}"
    return None


def _swizzled(cols: int, dtype) -> tuple:
    """Tiling + swizzle transforms of a shared-memory ``wgmma`` operand ``(rows, cols)``."""
    bits = jnp.dtype(dtype).itemsize * 8
    swizzle = plgpu.find_swizzle(cols * bits)
    return (
        plgpu.TilingTransform((8, swizzle * 8 // bits)),
        plgpu.SwizzleTransform(swizzle),
    )


def nm_matmul_mosaic_gpu(
    x: jax.Array,
    c: CompressedNM,
    *,
    block_sizes: BlockSizes | None = None,
    interpret: bool = False,
) -> jax.Array:
    """``x · W`` on the Pallas Mosaic GPU backend (Hopper; no autodiff: use ``nm_matmul``).

    Args:
      x: ``(T, K)`` bfloat16 / float16 activations; any ``T`` (zero-padded to a multiple of
        ``block_t``, then sliced).
      c: 2-D :class:`~jaxnm.CompressedNM` of ``W (K, N)`` in ``x``'s dtype, N:M along ``K``
        (axis 0), ``n`` and ``m`` powers of two, ``K * n / m`` a multiple of 8.
      block_sizes: tiles; default :meth:`BlockSizes.for_shape` with ``backend="mosaic_gpu"``
        (``block_t`` a multiple of 64: one warpgroup's ``wgmma`` rows).
      interpret: run in Mosaic GPU's interpret mode (``plgpu.InterpretGPUParams()``: shared
        memory, TMA copies, barriers and ``wgmma`` simulated on CPU; jax >= 0.11).

    Returns:
      ``(T, N)`` in ``x.dtype``, float32 accumulation.
    """
    block = kernel_blocks(x, c, block_sizes, "mosaic_gpu")
    why = mosaic_gpu_support(x, c)
    if why:
        raise ValueError(f"The Mosaic GPU N:M kernel does not support this input: {why}.")
    dtype = c.dtype
    (tokens, k), n_out = x.shape, c.shape[1]
    bt, bk, bn = block.block_t, block.block_k, block.block_n
    rows = bk * c.n // c.m
    padded = round_up(tokens, bt)
    n, m, bits = c.n, c.m, c.bits

    def kernel(x_gmem, v_gmem, p_gmem, o_gmem, w_smem, o_smem):
        ti, nj = lax.axis_index("t"), lax.axis_index("n")

        def run(acc_ref):
            def step(_, x_smem, v_smem, p_smem):
                planes = [p_smem[p] for p in range(bits)]
                w_smem[...] = expand_tile(v_smem[...], planes, n, m).astype(dtype)
                plgpu.commit_smem()
                plgpu.wgmma(acc_ref, x_smem, w_smem)
                plgpu.wgmma_wait(0)

            pipeline = plgpu.emit_pipeline(
                step,
                grid=(k // bk,),
                in_specs=[
                    plgpu.BlockSpec((bt, bk), lambda kb: (0, kb), transforms=_swizzled(bk, dtype)),
                    plgpu.BlockSpec((rows, bn), lambda kb: (kb, 0)),
                    plgpu.BlockSpec((bits, rows // RUN, bn), lambda kb: (0, kb, 0)),
                ],
                max_concurrent_steps=block.num_stages,
            )
            pipeline(
                x_gmem.at[pl.ds(ti * bt, bt)],
                v_gmem.at[:, pl.ds(nj * bn, bn)],
                p_gmem.at[:, :, pl.ds(nj * bn, bn)],
            )
            o_smem[...] = acc_ref[...].astype(dtype)

        pl.run_scoped(run, plgpu.ACC((bt, bn), jnp.float32))
        plgpu.commit_smem()
        plgpu.copy_smem_to_gmem(o_smem, o_gmem.at[pl.ds(ti * bt, bt), pl.ds(nj * bn, bn)])
        plgpu.wait_smem_to_gmem(0)

    out = plgpu.kernel(
        kernel,
        out_type=jax.ShapeDtypeStruct((padded, n_out), dtype),
        grid=(padded // bt, n_out // bn),
        grid_names=("t", "n"),
        scratch_types=[
            plgpu.SMEM((bk, bn), dtype, transforms=_swizzled(bn, dtype)),
            plgpu.SMEM((bt, bn), dtype, transforms=_swizzled(bn, dtype)),
        ],
        interpret=plgpu.InterpretGPUParams() if interpret else False,
    )(pad_rows(x, padded), c.values, c.indices)
    return out[:tokens]
