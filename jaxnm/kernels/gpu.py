"""Pallas GPU (Triton backend) kernel for ``x · W`` with ``W`` compressed N:M along ``K``.

Each program owns a ``(block_t, block_n)`` output tile and loops over ``K``: it loads a
``(block_t, block_k)`` slice of ``x``, the matching ``(block_k * n // m, block_n)`` tile of kept
values and its ``bits`` index planes ``(block_k * n // m // 8, block_n)``, expands them in
registers into the dense ``(block_k, block_n)`` weight tile (:func:`expand_tile`, a one-hot
select over the ``m`` positions of each group) and accumulates ``tl.dot`` in float32. So only
the compressed bytes travel from HBM: 56.25% of dense for bfloat16 2:4. Dense tensor-core MMA
is used; Hopper's sparse MMA is not reachable from Pallas.

``pl.pallas_call`` on GPU lowers to Triton (the Triton ``CompilerParams`` here set warps and
stages); Mosaic GPU is reached only through ``plgpu.kernel`` (see
:mod:`jaxnm.kernels.mosaic_gpu`). jax >= 0.11 deprecates the Pallas Triton backend and warns
(a ``DeprecationWarning``) each time a Triton ``pallas_call`` is lowered. The kernel's
``pallas_call`` is bound through :func:`~jaxnm.kernels.quiet_lowering.call_quietly`, whose
lowering rule ignores exactly that message while *this* kernel is lowered: jaxnm's calls do
not warn, other Triton ``pallas_call`` code in the process still does. The kernel stays while
jax ships the backend.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from jaxnm.compressed import CompressedNM
from jaxnm.kernels.blocks import BlockSizes
from jaxnm.kernels.common import kernel_blocks, pad_rows, poison, round_up
from jaxnm.kernels.expand import RUN, expand_tile
from jaxnm.kernels.quiet_lowering import call_quietly

TRITON_DEPRECATION = "The Pallas Triton backend is deprecated"  # jax >= 0.11, at lowering


def _kernel(x_ref, v_ref, p_ref, *refs, n, m, bits, block_k, num_k, compute_dtype):
    o_ref = refs[-1]  # refs[:-1]: the aliased (poisoned) output, never read
    rows = block_k * n // m
    precision = lax.Precision.HIGHEST if compute_dtype == jnp.float32 else None

    def body(kb, acc):
        x = x_ref[:, pl.ds(kb * block_k, block_k)].astype(compute_dtype)
        vals = v_ref[pl.ds(kb * rows, rows), :]
        planes = [p_ref[p, pl.ds(kb * (rows // RUN), rows // RUN), :] for p in range(bits)]
        w = expand_tile(vals, planes, n, m).astype(compute_dtype)
        return acc + jnp.dot(x, w, precision=precision, preferred_element_type=jnp.float32)

    acc = jnp.zeros(o_ref.shape, jnp.float32)
    acc = lax.fori_loop(0, num_k, body, acc)
    o_ref[...] = acc.astype(o_ref.dtype)


def nm_matmul_gpu(
    x: jax.Array,
    c: CompressedNM,
    *,
    block_sizes: BlockSizes | None = None,
    interpret: bool = False,
    poison_output: bool = False,
) -> jax.Array:
    """``x · W`` on the Pallas Triton GPU backend (no autodiff: use ``nm_matmul``).

    Args:
      x: ``(T, K)`` float32 / bfloat16 / float16 activations; any ``T`` (zero-padded to a
        multiple of ``block_t``, then sliced).
      c: 2-D :class:`~jaxnm.CompressedNM` of ``W (K, N)``, N:M along ``K`` (axis 0), ``n`` and
        ``m`` powers of two, ``K * n / m`` a multiple of 8.
      block_sizes: tiles; default :meth:`BlockSizes.for_shape` with ``backend="gpu"``.
      interpret: run with Pallas' interpreter (on CPU).
      poison_output: start from a NaN-filled output buffer (aliased into the kernel), so any
        tile the kernel fails to write shows up as NaN. For tests.

    Returns:
      ``(T, N)`` in ``result_type(x, c.dtype)``, float32 accumulation.
    """
    block = kernel_blocks(x, c, block_sizes, "gpu")
    tokens, padded = x.shape[0], round_up(x.shape[0], block.block_t)
    call = _TritonCall(
        block=block,
        k=x.shape[1],
        n_out=c.shape[1],
        n=c.n,
        m=c.m,
        bits=c.bits,
        out_dtype=jnp.dtype(jnp.result_type(x, c.dtype)),
        poison_output=poison_output,
        interpret=interpret,
    )
    out = call_quietly(call, pad_rows(x, padded), c.values, c.indices, ignore=(TRITON_DEPRECATION,))
    return out[:tokens]


@dataclasses.dataclass(frozen=True)
class _TritonCall:
    """The kernel's ``pallas_call`` on padded ``x (T', K)``, values and index planes."""

    block: BlockSizes
    k: int
    n_out: int
    n: int
    m: int
    bits: int
    out_dtype: jnp.dtype
    poison_output: bool
    interpret: bool

    def __call__(self, x: jax.Array, values: jax.Array, indices: jax.Array) -> jax.Array:
        bt, bk, bn = self.block.block_t, self.block.block_k, self.block.block_n
        padded, k, n_out = x.shape[0], self.k, self.n_out
        kc, planes_rows = values.shape[0], indices.shape[1]
        in_specs = [
            pl.BlockSpec((bt, k), lambda i, j: (i, 0)),
            pl.BlockSpec((kc, bn), lambda i, j: (0, j)),
            pl.BlockSpec((self.bits, planes_rows, bn), lambda i, j: (0, 0, j)),
        ]
        out_spec = pl.BlockSpec((bt, bn), lambda i, j: (i, j))
        args = [x, values, indices]
        aliases = {}
        if self.poison_output:
            in_specs.append(out_spec)
            args.append(poison((padded, n_out), self.out_dtype))
            aliases = {3: 0}

        def kernel(*refs):
            _kernel(
                *refs,
                n=self.n,
                m=self.m,
                bits=self.bits,
                block_k=bk,
                num_k=k // bk,
                compute_dtype=self.out_dtype,
            )

        return pl.pallas_call(
            kernel,
            out_shape=jax.ShapeDtypeStruct((padded, n_out), self.out_dtype),
            grid=(padded // bt, n_out // bn),
            in_specs=in_specs,
            out_specs=out_spec,
            input_output_aliases=aliases,
            compiler_params=pltriton.CompilerParams(
                num_warps=self.block.num_warps, num_stages=self.block.num_stages
            ),
            interpret=self.interpret,
            name="nm_matmul_gpu",
        )(*args)
