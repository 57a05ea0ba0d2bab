"""The cuSPARSELt calls from JAX: compress a 2:4 operand, multiply, search an algorithm.

EXPERIMENTAL: built and compiled (deviceless, for H100/H200) and tested on CPU through the
pure-JAX emulation (``interpret=True``); never run on a GPU in this project's CI.

* :func:`compress` turns a row-major ``(rows, cols)`` matrix that is 2:4 along ``cols`` into
  a :class:`CusparseLtMatrix` (cuSPARSELt's opaque compressed bytes, on XLA's stream).
* :func:`matmul` returns the row-major ``(n, rows)`` product ``b · Aᵀ`` (``transpose_b=True``,
  ``b (n, cols)``) or ``bᵀ · Aᵀ`` (``b (cols, n)``) with float32 (int32) accumulation.
* :func:`search_algorithm` runs ``cusparseLtMatmulSearch`` once on the device, outside any
  training step; pass its result as ``alg_id`` (a static attribute of the matmul call).

See :mod:`jaxnm.kernels.cusparselt.layout` for the layout and the shape/dtype rules.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxnm.kernels.cusparselt import layout
from jaxnm.kernels.cusparselt.library import COMPRESS, MATMUL, SEARCH, load

# ``jax.vmap`` of compress/matmul: one handler call per batch element, in a loop on the device
# (the handlers take single matrices; cuSPARSELt's batched matmul needs equal strides per
# batch and is not used).
VMAP_METHOD = "sequential"


@dataclasses.dataclass(frozen=True)
class CusparseLtMatrix:
    """A compressed 2:4 sparse operand (a pytree: ``data`` and ``invalid`` are leaves).

    Attributes:
      data: ``uint8 (nbytes,)`` cuSPARSELt's compressed matrix (opaque); in emulation
        (``emulated=True``) the flat row-major ``(rows * cols,)`` dense buffer instead.
      invalid: ``int32 []``, nonzero when the compressed input was not 2:4 along ``cols``
        (checked on the device by ``cusparseLtSpMMAPruneCheck2``; 0 when unchecked).
        :func:`matmul` turns a float result into NaN when it is set.
      rows, cols: the dense shape (static); 2:4 groups run along ``cols``.
      dtype: the dense dtype (static).
      emulated: built by the pure-JAX emulation (static).
    """

    data: jax.Array
    invalid: jax.Array
    rows: int
    cols: int
    dtype: jnp.dtype
    emulated: bool


jax.tree_util.register_dataclass(
    CusparseLtMatrix,
    data_fields=["data", "invalid"],
    meta_fields=["rows", "cols", "dtype", "emulated"],
)


def compress(a: jax.Array, *, check: bool = True, interpret: bool = False) -> CusparseLtMatrix:
    """Compresses a 2:4 matrix for :func:`matmul` (cuSPARSELt's format, on XLA's stream).

    Args:
      a: ``(rows, cols)`` bfloat16 / float16 / int8 / float8_e4m3fn, row-major, at most 2
        nonzeros in every 4 consecutive entries of a row. ``rows`` and ``cols`` multiples of
        16 (16-bit) or 32 (8-bit).
      check: also verify the 2:4 structure on the device (one extra pass over ``a``); a
        violation sets ``invalid`` and poisons float products with NaN.
      interpret: the pure-JAX emulation (any platform, no library needed).

    Returns:
      :class:`CusparseLtMatrix`.

    Raises:
      TypeError / ValueError: unsupported dtype or shape.
      CusparseLtUnavailableError: (``interpret=False``) the extension is not built.
    """
    if jnp.ndim(a) != 2:
        raise ValueError(f"`a` must be 2-D (rows, cols), got shape {jnp.shape(a)}.")
    dtype = layout.check_dtype(jnp.result_type(a), "a")
    rows, cols = a.shape
    layout.check_sparse_shape(rows, cols, dtype, "a")
    if interpret:
        data, invalid = layout.emulate_compress(a)
        if not check:
            invalid = jnp.zeros((), jnp.int32)
        return CusparseLtMatrix(data, invalid, rows, cols, dtype, True)
    load()
    nbytes = layout.compressed_nbytes(rows, cols, dtype)
    data, invalid = jax.ffi.ffi_call(
        COMPRESS,
        (jax.ShapeDtypeStruct((nbytes,), jnp.uint8), jax.ShapeDtypeStruct((), jnp.int32)),
        vmap_method=VMAP_METHOD,
    )(a, check=bool(check))
    return CusparseLtMatrix(data, invalid, rows, cols, dtype, False)


def matmul(
    a: CusparseLtMatrix,
    b: jax.Array,
    *,
    transpose_b: bool,
    alg_id: int = -1,
    out_dtype=None,
) -> jax.Array:
    """``b · Aᵀ`` (``transpose_b``) or ``bᵀ · Aᵀ`` for a compressed 2:4 ``A (rows, cols)``.

    Args:
      a: :func:`compress` output.
      b: ``(n, cols)`` if ``transpose_b`` else ``(cols, n)``, ``a.dtype``; ``n`` a multiple
        of 8 (16-bit) or 16 (8-bit).
      transpose_b: see above.
      alg_id: cuSPARSELt algorithm (``-1``: the library's default; else from
        :func:`search_algorithm` for the same shapes and dtypes). Static.
      out_dtype: result dtype; default ``a.dtype`` (int32 for int8). See
        :data:`layout.SUPPORTED_DTYPES`.

    Returns:
      ``(n, rows)`` in ``out_dtype`` (float32 / int32 accumulation); NaN everywhere when
      ``a.invalid`` is set and ``out_dtype`` is floating.
    """
    n = _check_matmul(a, b, transpose_b)
    out_dtype = layout.check_out_dtype(a.dtype, out_dtype)
    if not isinstance(alg_id, int) or alg_id < -1:
        raise ValueError(f"`alg_id` must be an int >= -1 (static), got {alg_id!r}.")
    if a.emulated:
        d = layout.emulate_matmul(
            a.data, b, rows=a.rows, cols=a.cols, transpose_b=transpose_b, out_dtype=out_dtype
        )
    else:
        load()
        d = jax.ffi.ffi_call(
            MATMUL, jax.ShapeDtypeStruct((n, a.rows), out_dtype), vmap_method=VMAP_METHOD
        )(
            a.data,
            b,
            rows=a.rows,
            cols=a.cols,
            transpose_b=bool(transpose_b),
            alg_id=alg_id,
        )
    if jnp.issubdtype(out_dtype, jnp.floating):
        d = jnp.where(a.invalid != 0, jnp.asarray(jnp.nan, out_dtype), d)
    return d


def search_algorithm(
    rows: int, cols: int, n: int, dtype, *, transpose_b: bool, out_dtype=None, device=None
) -> int:
    """Runs ``cusparseLtMatmulSearch`` on a GPU for one problem and returns the best ``alg_id``.

    Call it once, outside the training step (it times every candidate kernel), with the
    shapes the step uses; pass the result as the static ``alg_id`` of :func:`matmul`.

    Args:
      rows, cols: the sparse operand's shape.
      n: the dense operand's free size.
      dtype: operand dtype.
      transpose_b: the layout of ``b`` (see :func:`matmul`).
      out_dtype: result dtype (default as :func:`matmul`).
      device: a CUDA ``jax.Device`` (default: the first one).

    Returns:
      the algorithm id (a Python int).

    Raises:
      RuntimeError: no CUDA device, or a GPU older than sm_80.
    """
    dtype = layout.check_dtype(dtype, "dtype")
    out_dtype = layout.check_out_dtype(dtype, out_dtype)
    layout.check_sparse_shape(rows, cols, dtype, "the sparse operand")
    layout.check_dense_n(n, dtype, "n")
    device = device or _first_cuda_device()
    check_compute_capability(device)
    load()
    key = jax.random.key(0)
    with jax.default_device(device):
        a = jax.random.normal(key, (rows, cols), jnp.float32) * _two_of_four(rows, cols)
        b_shape = (n, cols) if transpose_b else (cols, n)
        b = jax.random.normal(key, b_shape, jnp.float32).astype(dtype)
        compressed = jax.jit(lambda a: compress(a.astype(dtype), check=False))(a)

        def run(data, b):
            return jax.ffi.ffi_call(
                SEARCH,
                (
                    jax.ShapeDtypeStruct((n, rows), out_dtype),
                    jax.ShapeDtypeStruct((), jnp.int32),
                ),
            )(data, b, rows=rows, cols=cols, transpose_b=bool(transpose_b))[1]

        return int(jax.jit(run)(compressed.data, b))


def check_compute_capability(device) -> None:
    """Raises ``RuntimeError`` unless ``device`` is a CUDA GPU of compute capability >= 8.0."""
    if device.platform != "gpu" or not hasattr(device, "compute_capability"):
        raise RuntimeError(f"cuSPARSELt needs an NVIDIA GPU, got device {device}.")
    major = int(str(device.compute_capability).split(".")[0])
    if major < 8:
        raise RuntimeError(
            f"cuSPARSELt needs compute capability 8.0 (sm_80) or newer; {device} has "
            f"{device.compute_capability}."
        )


def _first_cuda_device():
    try:
        return jax.devices("cuda")[0]
    except RuntimeError:
        raise RuntimeError(
            "search_algorithm runs cuSPARSELt on a GPU and no CUDA device is visible."
        ) from None


def _two_of_four(rows: int, cols: int) -> jax.Array:
    """A float32 ``(rows, cols)`` 0/1 pattern keeping the first 2 of every 4 along ``cols``."""
    return (jnp.arange(cols) % 4 < 2).astype(jnp.float32)[None, :].repeat(rows, axis=0)


def _check_matmul(a: CusparseLtMatrix, b: jax.Array, transpose_b: bool) -> int:
    """Checks :func:`matmul`'s operands; returns ``n``."""
    if not isinstance(a, CusparseLtMatrix):
        raise TypeError(f"`a` must be a CusparseLtMatrix (from compress), got {type(a).__name__}.")
    if jnp.ndim(b) != 2:
        raise ValueError(f"`b` must be 2-D, got shape {jnp.shape(b)}.")
    if jnp.result_type(b) != a.dtype:
        raise TypeError(f"`b` has dtype {jnp.result_type(b)}, it must match a.dtype={a.dtype}.")
    n, k = b.shape if transpose_b else b.shape[::-1]
    if k != a.cols:
        want = f"(n, {a.cols})" if transpose_b else f"({a.cols}, n)"
        raise ValueError(
            f"`b` has shape {b.shape}; with transpose_b={transpose_b} it must be {want} for a "
            f"({a.rows}, {a.cols}) sparse operand."
        )
    layout.check_dense_n(n, a.dtype, "b")
    return n
