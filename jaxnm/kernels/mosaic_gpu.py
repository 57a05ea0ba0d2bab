"""Pallas Mosaic GPU (Hopper) kernel for ``x · W`` with ``W`` compressed N:M along ``K``.

One CTA (one warpgroup) per ``(block_t, block_n)`` output tile, grid ``(T / block_t,
N / block_n)``. ``plgpu.emit_pipeline`` streams the ``K`` loop through shared memory with TMA
copies, ``num_stages`` steps in flight. The expansion of the compressed tile uses **2-D
register arrays only** (Mosaic GPU's register layouts express no 3-D/4-D reshape):

* Byte ``q`` of an index plane holds bit ``p`` of the indices of compressed rows
  ``8q .. 8q+7`` (:mod:`jaxnm.compressed`). Viewing the values ``(Kc, N)`` as
  ``(Kc / 8, 8 * N)`` (a free reshape) lets TMA bring, per ``r = 0 .. 7``, the plane-aligned
  slab ``V_r = values[8q + r]`` as a 2-D ``(Q, block_n)`` tile (``Q = block_k * n / m / 8``
  index bytes per step), beside the ``bits`` index planes ``(Q, block_n)``.
* The index of slab ``r`` is ``sum_p ((plane_p >> r) & 1) << p``; compressed row ``8q + r``
  is slot ``j = r % n`` of group ``8q / n + r // n``. With ``n <= 8`` every dense row of the
  tile is ``q * (8m / n) + v`` with ``v = (r // n) * m + s`` (``s`` the in-group position), so
  dense slab ``D_v`` (``Q`` rows) is a 2-D select over the ``n`` slabs of group ``r // n``:
  ``D_v = sum_j where(idx_{u*n+j} == s, V_{u*n+j}, 0)``, exact (one value per entry).
* ``D_v`` is written to rows ``v*Q .. v*Q+Q-1`` of a shared-memory tile: the tile holds
  ``W``'s rows in the order ``v * Q + q`` instead of ``q * (8m / n) + v``. The wrapper applies
  the same permutation to the ``K`` axis of ``x`` (one XLA transpose of ``x`` per call;
  ``x · W`` is unchanged since both operands are permuted alike).
* The slabs are stored in a strided register layout to a plain shared-memory tile, read back
  in the ``wgmma`` register layout (a non-optimised, bank-conflicting load) and stored to the
  swizzled tile that ``plgpu.wgmma`` reads, with ``x`` from its swizzled TMA buffer; float32
  accumulator in registers. ``x`` and the weight tile share one swizzle (``wgmma`` needs
  that: a 64-byte-wide weight tile next to 128-byte ``x`` rows is what made the first version
  of this kernel fail layout inference).

Only the compressed weight bytes travel from HBM. 16-bit inputs only (``wgmma`` has no
float32 operands; tf32 would lose precision); ``n <= 8``.

Lowered with Mosaic GPU's ``Lane`` semantics (explicit layouts, jax >= 0.10): ``Warpgroup``
semantics (jax 0.12's default) sends layout inference into an unbounded search on this kernel.

STATUS (EXPERIMENTAL; ``nm_matmul(..., backend="mosaic_gpu")`` only, never chosen
automatically): correct in Mosaic GPU's interpret mode on CPU (jax >= 0.11); compiles
deviceless for H100 and H200 (sm_90a PTX with ``wgmma.mma_async``, checked in
``tests/kernels/test_mosaic_gpu.py``) on jax 0.10.2 and 0.12.0.1. It has never run on a GPU:
speed and on-device results are unmeasured.
"""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from jaxnm.compressed import CompressedNM
from jaxnm.kernels.blocks import BlockSizes, mosaic_swizzle
from jaxnm.kernels.common import kernel_blocks, pad_rows, round_up
from jaxnm.kernels.expand import RUN

MOSAIC_DTYPES = (jnp.bfloat16, jnp.float16)
_HAS_INTERPRET = hasattr(plgpu, "InterpretGPUParams")  # jax >= 0.11
_LOAD_TAKES_INDEX = "idx" in inspect.signature(plgpu.load).parameters  # jax < 0.11


def mosaic_gpu_support(x: jax.Array, c: CompressedNM, interpret: bool = False) -> str | None:
    """Why this kernel cannot take ``(x, c)`` beyond :func:`kernel_support`, or ``None``."""
    if jnp.result_type(x) != c.dtype or c.dtype not in MOSAIC_DTYPES:
        return (
            f"it takes bfloat16 or float16 `x` and `c` of one dtype, got "
            f"{jnp.result_type(x)} and {c.dtype}"
        )
    if c.n > RUN:
        return f"it needs n <= {RUN} (one group per index byte or more), got n={c.n}"
    if interpret and not _HAS_INTERPRET:
        return (
            f"interpret=True needs jax >= 0.11 (Mosaic GPU interpret mode), this is jax "
            f"{jax.__version__}"
        )
    return None


def _load(ref, layout, *, optimized: bool = True) -> jax.Array:
    """``plgpu.load`` of a whole ref (jax < 0.11 takes an index argument, later ones none)."""
    if _LOAD_TAKES_INDEX:
        return plgpu.load(ref, (), layout=layout, optimized=optimized)
    return plgpu.load(ref, layout=layout, optimized=optimized)


def _transforms(swizzle: int, dtype) -> tuple:
    """Tiling + swizzle transforms of a shared-memory ``wgmma`` operand or output tile."""
    bits = jnp.dtype(dtype).itemsize * 8
    return (plgpu.TilingTransform((8, swizzle * 8 // bits)), plgpu.SwizzleTransform(swizzle))


def permute_k(x: jax.Array, block_k: int, n: int, m: int) -> jax.Array:
    """``x (T, K)`` with each ``block_k`` chunk of ``K`` in the kernel's weight-row order.

    Column ``v * Q + q`` of a chunk takes column ``q * (8m / n) + v`` (``Q = block_k * n / m /
    8``): the order in which the kernel writes the expanded weight rows.
    """
    tokens, k = x.shape
    slabs = RUN * m // n
    q = block_k // slabs
    return x.reshape(tokens, k // block_k, q, slabs).swapaxes(-1, -2).reshape(tokens, k)


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
        (axis 0), ``n <= 8`` and ``m`` powers of two, ``K * n / m`` a multiple of 8.
      block_sizes: tiles; default :meth:`BlockSizes.for_shape` with ``backend="mosaic_gpu"``
        (``block_t`` a multiple of 64: one warpgroup's ``wgmma`` rows).
      interpret: run in Mosaic GPU's interpret mode (``plgpu.InterpretGPUParams()``: shared
        memory, TMA copies, barriers and ``wgmma`` simulated on CPU; jax >= 0.11).

    Returns:
      ``(T, N)`` in ``x.dtype``, float32 accumulation.
    """
    why = mosaic_gpu_support(x, c, interpret)
    if why:
        raise ValueError(f"The Mosaic GPU N:M kernel does not support this input: {why}.")
    block = kernel_blocks(x, c, block_sizes, "mosaic_gpu")
    dtype = c.dtype
    (tokens, k), n_out = x.shape, c.shape[1]
    bt, bk, bn = block.block_t, block.block_k, block.block_n
    n, m, bits = c.n, c.m, c.bits
    q = bk * n // m // RUN  # index bytes (and rows of every slab) per K step
    padded = round_up(tokens, bt)
    swizzle = mosaic_swizzle(bk, bn, jnp.dtype(dtype).itemsize)
    strided = plgpu.Layout.WG_STRIDED((q, bn), vec_size=2 if (q * bn) % 256 == 0 else 1)

    def expand(planes_smem, value_smems, w_plain):
        planes = [_load(planes_smem.at[p], strided).astype(jnp.int32) for p in range(bits)]
        for u in range(RUN // n):  # the groups of slabs r = u*n .. u*n+n-1
            slots = range(u * n, (u + 1) * n)
            idx = [_unpack(planes, r) for r in slots]
            vals = [_load(value_smems[r], strided) for r in slots]
            for s in range(m):
                dense = jnp.zeros((q, bn), dtype)
                for i, v in zip(idx, vals, strict=True):
                    dense = jnp.where(i == s, v, dense)
                w_plain[pl.ds((u * m + s) * q, q), :] = plgpu.layout_cast(dense, strided)

    def kernel(x_gmem, v_gmem, p_gmem, o_gmem, w_plain, w_smem, o_smem):
        ti, nj = lax.axis_index("t"), lax.axis_index("n")

        def run(acc_ref):
            def step(_, x_smem, p_smem, *v_smems):
                expand(p_smem, v_smems, w_plain)
                w_smem[...] = _load(w_plain, plgpu.Layout.WGMMA, optimized=False)
                plgpu.commit_smem()
                plgpu.wgmma(acc_ref, x_smem, w_smem)
                plgpu.wgmma_wait(0)

            slab = plgpu.BlockSpec((q, bn), lambda kb: (kb, 0))
            pipeline = plgpu.emit_pipeline(
                step,
                grid=(k // bk,),
                in_specs=[
                    plgpu.BlockSpec(
                        (bt, bk), lambda kb: (0, kb), transforms=_transforms(swizzle, dtype)
                    ),
                    plgpu.BlockSpec((bits, q, bn), lambda kb: (0, kb, 0)),
                ]
                + [slab] * RUN,
                max_concurrent_steps=block.num_stages,
            )
            pipeline(
                x_gmem.at[pl.ds(ti * bt, bt)],
                p_gmem.at[:, :, pl.ds(nj * bn, bn)],
                *[v_gmem.at[:, pl.ds(r * n_out + nj * bn, bn)] for r in range(RUN)],
            )
            o_smem[...] = acc_ref[...].astype(dtype)

        pl.run_scoped(run, plgpu.ACC((bt, bn), jnp.float32))
        plgpu.commit_smem()
        plgpu.copy_smem_to_gmem(o_smem, o_gmem.at[pl.ds(ti * bt, bt), pl.ds(nj * bn, bn)])
        plgpu.wait_smem_to_gmem(0)

    values = c.values.reshape(c.values.shape[0] // RUN, RUN * n_out)  # free: row-major view
    call = plgpu.kernel(
        kernel,
        out_type=jax.ShapeDtypeStruct((padded, n_out), dtype),
        grid=(padded // bt, n_out // bn),
        grid_names=("t", "n"),
        scratch_types=[
            plgpu.SMEM((bk, bn), dtype),
            plgpu.SMEM((bk, bn), dtype, transforms=_transforms(swizzle, dtype)),
            plgpu.SMEM((bt, bn), dtype, transforms=_transforms(swizzle, dtype)),
        ],
        compiler_params=plgpu.CompilerParams(lowering_semantics=plgpu.LoweringSemantics.Lane),
        **({"interpret": plgpu.InterpretGPUParams()} if interpret else {}),
    )
    out = call(pad_rows(permute_k(x, bk, n, m), padded), values, c.indices)
    return out[:tokens]


def _unpack(planes: list[jax.Array], r: int) -> jax.Array:
    """In-group indices ``(Q, bn)`` int32 of compressed rows ``8q + r`` from the bit planes."""
    idx = (planes[0] >> r) & 1
    for p, plane in enumerate(planes[1:], start=1):
        idx = idx | (((plane >> r) & 1) << p)
    return idx
