"""``nm_matmul``: ``x · W`` for a compressed N:M weight, with backend dispatch and a custom VJP."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax

from jaxnm.compressed import CompressedNM, decompress, gather_kept
from jaxnm.kernels.blocks import BlockSizes
from jaxnm.kernels.common import check_operands, kernel_blocks, kernel_support
from jaxnm.kernels.cusparselt.matmul import cusparselt_support, nm_matmul_cusparselt
from jaxnm.kernels.gpu import nm_matmul_gpu
from jaxnm.kernels.mosaic_gpu import mosaic_gpu_support, nm_matmul_mosaic_gpu
from jaxnm.kernels.reference import nm_matmul_reference
from jaxnm.kernels.tpu import nm_matmul_tpu

_BACKENDS = ("xla", "gpu", "mosaic_gpu", "tpu", "cusparselt")
# Platforms that ``lax.platform_dependent`` tells apart, and each one's native kernel.
_PLATFORM_KERNEL = {"cpu": "xla", "cuda": "gpu", "rocm": "gpu", "tpu": "tpu"}
_PLATFORM_ALIASES = {"gpu": "cuda"}


@dataclasses.dataclass(frozen=True)
class _Config:
    backend: str | None  # None: chosen per lowering platform (lax.platform_dependent)
    interpret: bool
    block_sizes: BlockSizes | None


def select_backend(
    x: jax.Array,
    c: CompressedNM,
    backend: str | None = None,
    *,
    platform: str = "cpu",
    block_sizes: BlockSizes | None = None,
) -> str:
    """The backend ``nm_matmul`` uses for ``(x, c)`` when it is lowered for ``platform``.

    Args:
      x: ``(T, K)`` activations (shape and dtype matter, not values).
      c: 2-D :class:`~jaxnm.CompressedNM` of ``W (K, N)``.
      backend: ``None`` (automatic) or one of ``"xla"``, ``"gpu"`` (Triton), ``"mosaic_gpu"``
        (EXPERIMENTAL, explicit only: see :func:`nm_matmul_mosaic_gpu`), ``"tpu"``,
        ``"cusparselt"`` (EXPERIMENTAL, explicit only).
      platform: the lowering platform, ``"cpu"``, ``"cuda"`` (or ``"gpu"``), ``"rocm"`` or
        ``"tpu"`` (e.g. ``jax.default_backend()``, or a compile-only device's platform).
      block_sizes: the tiles ``nm_matmul`` was given (``None``: the per-shape rule).

    Returns:
      ``"gpu"``, ``"tpu"`` or ``"xla"``. ``None`` picks the platform's kernel (``"gpu"`` on
      CUDA/ROCm, ``"tpu"`` on TPU) when it supports the input (``n``, ``m`` powers of two,
      ``m >= 2``, ``K*n/m`` a multiple of 8, float32/bfloat16/float16, and tiles the kernel
      accepts), else ``"xla"`` (always on CPU). An explicit backend is returned as is, on any
      platform, once the kernel is known to support the input (ValueError otherwise); a
      kernel lowered for another platform than its own needs ``interpret=True`` (Pallas
      refuses to lower it otherwise: "Only interpret mode is supported on CPU backend").
    """
    platform = _PLATFORM_ALIASES.get(platform, platform)
    if platform not in _PLATFORM_KERNEL:
        raise ValueError(f"`platform` (={platform!r}) must be one of {tuple(_PLATFORM_KERNEL)}.")
    if backend is None:
        chosen = _PLATFORM_KERNEL[platform]
        if chosen == "xla" or kernel_support(x, c):
            return "xla"
        if block_sizes is not None:
            kernel_blocks(x, c, block_sizes, chosen)  # the user's tiles must fit: raise if not
            return chosen
        try:
            kernel_blocks(x, c, None, chosen)
        except ValueError:  # the per-shape rule finds no tiles (e.g. N not a multiple of 16)
            return "xla"
        return chosen
    if backend not in _BACKENDS:
        raise ValueError(f"`backend` (={backend!r}) must be None or one of {_BACKENDS}.")
    if backend == "xla":
        return backend
    if backend == "cusparselt":  # EXPERIMENTAL; CUDA lowering only, or interpret=True
        why = cusparselt_support(x, c)
        if why:
            raise ValueError(f"`backend='cusparselt'` does not support this input: {why}.")
        return backend
    why = kernel_support(x, c) or (mosaic_gpu_support(x, c) if backend == "mosaic_gpu" else None)
    if why:
        raise ValueError(f"`backend={backend!r}`: the Pallas kernel does not support this: {why}.")
    return backend


def _run(backend: str, cfg: _Config, x: jax.Array, c: CompressedNM) -> jax.Array:
    if backend == "cusparselt":
        return nm_matmul_cusparselt(x, c, interpret=cfg.interpret)
    if backend == "gpu":
        return nm_matmul_gpu(x, c, block_sizes=cfg.block_sizes, interpret=cfg.interpret)
    if backend == "mosaic_gpu":
        return nm_matmul_mosaic_gpu(x, c, block_sizes=cfg.block_sizes, interpret=cfg.interpret)
    if backend == "tpu":
        return nm_matmul_tpu(x, c, block_sizes=cfg.block_sizes, interpret=cfg.interpret)
    return nm_matmul_reference(x, c)


def _apply(cfg: _Config, x: jax.Array, c: CompressedNM) -> jax.Array:
    """Forward on 2-D ``x (T, K)``: the configured backend, or one per lowering platform."""
    if cfg.backend is not None:
        return _run(cfg.backend, cfg, x, c)
    per_platform = {
        p: select_backend(x, c, None, platform=p, block_sizes=cfg.block_sizes)
        for p in _PLATFORM_KERNEL
    }
    if set(per_platform.values()) == {"xla"}:
        return nm_matmul_reference(x, c)
    branches = {p: functools.partial(_run, b, cfg) for p, b in per_platform.items()}
    return lax.platform_dependent(x, c, default=branches.pop("cpu"), **branches)


def _check_transpose_agrees(c: CompressedNM, c_t: CompressedNM) -> None:
    """Raises ``ValueError`` when concrete ``c`` and ``c_t`` do not hold ``W`` and ``Wᵀ``."""
    leaves = jax.tree.leaves((c, c_t))
    if any(isinstance(leaf, jax.core.Tracer) for leaf in leaves):
        return  # under jit / vmap / grad: not inspectable
    agrees = jnp.array_equal(decompress(c_t), decompress(c).T)
    if isinstance(agrees, jax.core.Tracer):
        return  # concrete arrays closed over inside a jit trace: the result is traced too
    if not bool(agrees):
        raise ValueError(
            "`c_t` does not hold the transpose of `c`'s matrix; build it with "
            "jaxnm.compressed.transpose(c) (and rebuild it whenever c.values change)."
        )


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _nm_matmul(cfg: _Config, x, c, c_t):
    del c_t
    return _apply(cfg, x, c)


def _fwd(cfg, x, c, c_t):
    return _apply(cfg, x, c), (x, c, c_t)


def _bwd(cfg, res, dy):
    x, c, c_t = res
    if c_t is not None:
        # dX = dY · Wᵀ with the compressed transpose, through the same kernel (block sizes
        # re-chosen: the shape differs).
        dx = _apply(dataclasses.replace(cfg, block_sizes=None), dy.astype(x.dtype), c_t)
    else:
        w = decompress(c).astype(dy.dtype)
        dx = jnp.dot(dy, w.T, preferred_element_type=jnp.float32)
    dw = jnp.dot(x.T.astype(dy.dtype), dy, preferred_element_type=jnp.float32)
    dc = dataclasses.replace(c, values=gather_kept(dw, c).astype(c.dtype), indices=None)
    return dx.astype(x.dtype), dc, None


_nm_matmul.defvjp(_fwd, _bwd)


def nm_matmul(
    x: jax.Array,
    c: CompressedNM,
    *,
    c_t: CompressedNM | None = None,
    backend: str | None = None,
    interpret: bool = False,
    block_sizes: BlockSizes | None = None,
) -> jax.Array:
    """``x · W`` for a weight ``W (K, N)`` stored compressed N:M along ``K``.

    Backends: ``"gpu"`` (Pallas Triton kernel), ``"mosaic_gpu"`` (EXPERIMENTAL, never chosen
    automatically: the Pallas Mosaic GPU Hopper kernel, bfloat16/float16, ``n <= 8``; it
    compiles for H100/H200 but has never run on a GPU, see :func:`nm_matmul_mosaic_gpu`),
    ``"tpu"`` (Pallas Mosaic TPU kernel), ``"xla"``
    (:func:`nm_matmul_reference`: decompress + one XLA dot; the CPU path), ``"cusparselt"``
    (EXPERIMENTAL, never chosen automatically: NVIDIA's 2:4 sparse tensor cores through the
    XLA FFI, bfloat16/float16 2:4 or 1:2, the weight re-compressed inside each call; CUDA
    lowering only, or its pure-JAX emulation with ``interpret=True``; see docs/cusparselt.md).
    ``None`` chooses per platform the program is lowered for (``lax.platform_dependent``; see
    :func:`select_backend`), not from the process's default backend: ``jax.jit(...).lower``
    for a (compile-only) GPU device from a CPU host gets the GPU kernel, the CPU gets XLA.
    All accumulate in float32.

    Differentiable (``jax.custom_vjp``; Pallas calls have no autodiff of their own):

    * ``dx = dy · Wᵀ``: with ``c_t`` (the compressed ``Wᵀ``, e.g.
      ``jaxnm.compressed.transpose(c)``, which needs a transposable mask) this runs through the
      same N:M kernel; without it, through XLA (decompress + dense dot).
    * ``c.values`` gets the gradient of the kept values, ``(xᵀ · dy)`` at the kept positions
      (dense XLA GEMM, then gathered): the sparsity pattern is fixed. ``c.indices`` and
      ``c_t`` get zero cotangents, so after updating ``c.values`` rebuild ``c_t`` from ``c``.

    Args:
      x: ``(..., K)`` float32 / bfloat16 / float16; leading axes are flattened into tokens
        (any count: kernels pad to their block and slice).
      c: 2-D :class:`~jaxnm.CompressedNM` of ``W (K, N)`` grouped along ``K`` (axis ``-2``).
      c_t: optional 2-D :class:`~jaxnm.CompressedNM` of ``Wᵀ (N, K)`` grouped along ``N``,
        e.g. ``jaxnm.compressed.transpose(c)`` (built inside the same ``jit`` it always
        agrees). Eagerly it is checked to hold ``Wᵀ`` exactly; under ``jit`` its values
        cannot be inspected and are trusted.
      backend: ``None``, ``"xla"``, ``"gpu"``, ``"mosaic_gpu"``, ``"tpu"`` or ``"cusparselt"``.
      interpret: run the Pallas kernel in interpret mode (CPU testing).
      block_sizes: kernel tiles; default per shape (:meth:`BlockSizes.for_shape`).

    Returns:
      ``(..., N)`` in ``result_type(x, c.dtype)``.

    Raises:
      ValueError / TypeError: mismatched shapes, ``c`` not 2-D or not grouped along ``K``,
        (eagerly) a ``c_t`` that is not the transpose of ``c``, an
        explicit kernel backend that does not support the input, tiles that do not fit.
        An explicit kernel lowered for another platform without ``interpret=True`` fails
        when lowered (Pallas' error).
    """
    check_operands(x, c)
    k, n_out = c.shape
    if c_t is not None:
        if not isinstance(c_t, CompressedNM) or tuple(c_t.shape) != (n_out, k) or c_t.axis != 0:
            raise ValueError(
                f"`c_t` must be a CompressedNM of Wᵀ, shape {(n_out, k)} grouped along axis 0, "
                f"got {c_t if not isinstance(c_t, CompressedNM) else (c_t.shape, c_t.axis)}."
            )
        _check_transpose_agrees(c, c_t)
    lead = jnp.shape(x)[:-1]
    x2 = jnp.reshape(x, (-1, k))
    if backend is not None:
        chosen = select_backend(x2, c, backend)
        if chosen != "xla" and c_t is not None:
            select_backend(x2, c_t, chosen)  # the transpose must fit the kernel too
    cfg = _Config(backend=backend, interpret=bool(interpret), block_sizes=block_sizes)
    y = _nm_matmul(cfg, x2, c, c_t)
    return y.reshape(*lead, n_out)
