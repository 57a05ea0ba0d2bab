"""Block (tile) sizes of the N:M matmul kernels and the per-shape rule that picks them."""

from __future__ import annotations

import dataclasses

from jaxnm.kernels.expand import RUN

_GPU_MIN = 16  # Triton's tl.dot needs every tile dimension >= 16
_GPU_SMS = 132  # streaming multiprocessors of an H100 SXM / H200
_SMEM = 227 * 1024  # shared memory one CTA may use on an H100 / H200
_WARPGROUP = 128  # threads of the Mosaic GPU kernel's one warpgroup


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Tile sizes for ``x (T, K) · W (K, N)`` with ``W`` compressed N:M along ``K``.

    Attributes:
      block_t: rows of ``x`` (tokens) per program; ``T`` is zero-padded to a multiple.
      block_k: dense ``K`` rows per step (``block_k * n // m`` compressed rows).
      block_n: output columns per program.
      num_warps: Triton warps per program (GPU only).
      num_stages: Triton software-pipelining stages of the ``K`` loop (GPU only).
    """

    block_t: int
    block_k: int
    block_n: int
    num_warps: int = 4
    num_stages: int = 2

    @classmethod
    def for_shape(cls, tokens: int, k: int, n_out: int, n: int, m: int, *, backend: str):
        """The default rule (``backend`` ``"gpu"`` or ``"tpu"``).

        GPU (Triton; power-of-two tiles >= 16):
          * ``block_t = clip(next_pow2(T), 16, 128)``;
          * ``block_n``: 32 for ``T <= 16`` (weight-bound: more programs in flight), 64 for
            ``T <= 64``, else 128; halved until it divides ``N``; for ``T <= 16`` halved
            (down to 16) while the grid has fewer than 2 programs per SM of a 132-SM
            H100/H200 (T = 16, K = N = 4096: 256 programs of 16 columns, not 128 of 32);
          * ``block_k``: 256 for ``T <= 16`` (more weight bytes per loop step), else 64; halved
            (down to 16, then doubled from the start) until it divides ``K`` and
            ``block_k * n // m`` is a multiple of 8 (whole index bytes);
          * ``num_warps`` 8 for 128x128 output tiles, else 4; ``num_stages`` 3 for ``T > 64``,
            else 2.

        Mosaic GPU (Hopper ``wgmma``: one warpgroup owns 64 output rows; power-of-two tiles
        >= 16 so that every shared-memory operand row spans >= 32 swizzled bytes):
          * ``block_t`` 64 for ``T <= 64``, else 128;
          * ``block_n`` 32 for ``T <= 64`` (weight-bound: 128 CTAs for N = 4096), else 128;
            halved until it divides ``N``;
          * ``block_k = 64 * m / n`` (8 index bytes per step: every expanded slab is one
            8-row shared-memory tile; 128 for 2:4 and 4:8), else twice or half that, the
            first that divides ``K`` and keeps a slab (``block_k * n / m / 8`` rows by
            ``block_n``) a multiple of 128 elements (one per thread of the warpgroup);
          * ``num_stages`` (TMA steps in flight): the most of 4, 3, 2 (else 1) whose shared
            memory (:func:`mosaic_smem_bytes`) fits the 227 KiB of an H100/H200 CTA.

        TPU (Mosaic; block dims multiples of the (8, 128) vreg tiling or the full dim):
          * ``block_t = min(256, round_up(T, 16))``;
          * ``block_n``: 256, else 128, dividing ``N``; else ``N``;
          * ``block_k``: the first of 512, 1024, 2048, 256, 128 that divides ``K`` and keeps
            the compressed tile (``block_k * n // m`` rows) a multiple of 16 and its index
            planes (``/ 8`` rows) a multiple of 32 (uint8 tiling); else ``K``.
        """
        if backend == "gpu":
            return _gpu_rule(tokens, k, n_out, n, m)
        if backend == "tpu":
            return _tpu_rule(tokens, k, n_out, n, m)
        if backend == "mosaic_gpu":
            return _mosaic_gpu_rule(tokens, k, n_out, n, m)
        raise ValueError(
            f"`backend` (={backend!r}) must be 'gpu', 'mosaic_gpu' or 'tpu' for block sizes."
        )


def _next_pow2(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())


def _gpu_rule(tokens: int, k: int, n_out: int, n: int, m: int) -> BlockSizes:
    block_t = min(128, max(_GPU_MIN, _next_pow2(tokens)))
    block_n = 32 if tokens <= 16 else 64 if tokens <= 64 else 128
    while block_n > _GPU_MIN and n_out % block_n:
        block_n //= 2
    while tokens <= 16 and block_n > _GPU_MIN and n_out // block_n < 2 * _GPU_SMS:
        block_n //= 2  # weight-bound: >= 2 programs per SM (T=16, N=4096: 256, not 128)
    start = 256 if tokens <= 16 else 64
    down = [start >> i for i in range(start.bit_length()) if start >> i >= _GPU_MIN]
    up = [start << i for i in range(1, 8)]
    block_k = next((b for b in down + up if _gpu_k_ok(b, k, n, m)), start)
    big = block_t * block_n >= 128 * 128
    return BlockSizes(
        block_t=block_t,
        block_k=block_k,
        block_n=block_n,
        num_warps=8 if big else 4,
        num_stages=3 if tokens > 64 else 2,
    )


def _mosaic_gpu_rule(tokens: int, k: int, n_out: int, n: int, m: int) -> BlockSizes:
    block_t = 64 if tokens <= 64 else 128
    block_n = 32 if tokens <= 64 else 128
    while block_n > _GPU_MIN and n_out % block_n:
        block_n //= 2
    start = RUN * RUN * m // max(n, 1)  # 8 index bytes per step
    block_k = next(
        (b for b in (start, 2 * start, start // 2) if _mosaic_k_ok(b, block_n, k, n, m)), start
    )
    stages = next(
        (s for s in (4, 3, 2) if mosaic_smem_bytes(block_t, block_k, block_n, n, m, s) <= _SMEM),
        1,
    )
    return BlockSizes(block_t=block_t, block_k=block_k, block_n=block_n, num_stages=stages)


def _mosaic_k_ok(block_k: int, block_n: int, k: int, n: int, m: int) -> bool:
    rows = block_k * n // m
    return (
        block_k >= _GPU_MIN
        and _gpu_k_ok(block_k, k, n, m)
        and (rows // RUN * block_n) % _WARPGROUP == 0
    )


def mosaic_swizzle(block_k: int, block_n: int, itemsize: int = 2) -> int:
    """The shared-memory swizzle (bytes) of the Mosaic GPU kernel's ``x`` and weight tiles.

    ``wgmma`` needs one swizzle for both operands: the widest (128, 64 or 32 bytes) that
    divides both a ``block_k`` row of ``x`` and a ``block_n`` row of the weight tile.
    """
    widest = (128, 64, 32, 16)
    row_k = next(s for s in widest if (block_k * itemsize) % s == 0)
    row_n = next(s for s in widest if (block_n * itemsize) % s == 0)
    return min(row_k, row_n)


def mosaic_smem_bytes(
    block_t: int, block_k: int, block_n: int, n: int, m: int, stages: int, itemsize: int = 2
) -> int:
    """Shared memory of one Mosaic GPU kernel CTA: ``stages`` pipeline buffers (``x``, 8 value
    slabs, the index planes) plus the plain and swizzled weight tiles and the output tile."""
    q = block_k * n // m // RUN
    bits = (m - 1).bit_length()
    step = block_t * block_k * itemsize + RUN * q * block_n * itemsize + bits * q * block_n
    return stages * step + (2 * block_k + block_t) * block_n * itemsize


def _gpu_k_ok(block_k: int, k: int, n: int, m: int) -> bool:
    return k % block_k == 0 and (block_k * n // m) % RUN == 0


def _tpu_rule(tokens: int, k: int, n_out: int, n: int, m: int) -> BlockSizes:
    block_t = min(256, -(-tokens // 16) * 16)
    block_n = next((b for b in (256, 128) if n_out % b == 0), n_out)
    block_k = next((b for b in (512, 1024, 2048, 256, 128) if _tpu_k_ok(b, k, n, m)), k)
    return BlockSizes(block_t=block_t, block_k=block_k, block_n=block_n)


def _tpu_k_ok(block_k: int, k: int, n: int, m: int) -> bool:
    rows = block_k * n // m
    return k % block_k == 0 and rows % 16 == 0 and (rows // RUN) % 32 == 0


def check_block_sizes(block: BlockSizes, k: int, n_out: int, n: int, m: int, backend: str) -> None:
    """Raises ``ValueError`` unless ``block`` tiles a ``(K, N)`` weight for ``backend``."""
    if not isinstance(block, BlockSizes):
        raise TypeError(f"`block_sizes` must be a BlockSizes, got {type(block).__name__}.")
    problems = []
    if min(block.block_t, block.block_k, block.block_n) <= 0:
        problems.append("sizes must be positive")
    if k % block.block_k or block.block_k % m or (block.block_k * n // m) % RUN:
        problems.append(
            f"block_k must divide K={k}, be a multiple of m={m}, and block_k*n/m must be a "
            f"multiple of {RUN}"
        )
    if n_out % block.block_n:
        problems.append(f"block_n must divide N={n_out}")
    if backend in ("gpu", "mosaic_gpu"):
        dims = (block.block_t, block.block_k, block.block_n)
        if any(d < _GPU_MIN or d & (d - 1) for d in dims):
            problems.append(f"GPU tiles must be powers of two >= {_GPU_MIN}")
    if backend == "mosaic_gpu":
        problems += _mosaic_problems(block, n, m)
    if problems:
        raise ValueError(
            f"`block_sizes` (={block}) invalid for K={k}, N={n_out}, {n}:{m}: "
            + "; ".join(problems)
            + "."
        )


def _mosaic_problems(block: BlockSizes, n: int, m: int) -> list[str]:
    bt, bk, bn = block.block_t, block.block_k, block.block_n
    problems = []
    if bt % 64:
        problems.append("Mosaic GPU needs block_t a multiple of 64 (one warpgroup's wgmma rows)")
    if bn > 256:
        problems.append("Mosaic GPU needs block_n <= 256 (wgmma's widest N)")
    if (bk * n // m // RUN * bn) % _WARPGROUP:
        problems.append(
            f"Mosaic GPU needs (block_k*n/m/8) * block_n a multiple of {_WARPGROUP} (the "
            "expanded slabs are spread over one warpgroup)"
        )
    if block.num_stages < 1:
        problems.append("num_stages must be >= 1")
    elif (smem := mosaic_smem_bytes(bt, bk, bn, n, m, block.num_stages)) > _SMEM:
        problems.append(f"its shared memory ({smem} B) exceeds the {_SMEM} B of a CTA")
    return problems
