"""How jaxnm's operands map onto cuSPARSELt's matrices, with a pure-JAX emulation of it.

cuSPARSELt computes ``D = op(A) · op(B)`` with ``A`` structured (2:4 along the contraction
axis of ``op(A)``) and every matrix described by (rows, cols, leading dimension, order). jaxnm
uses one layout for every call (PyTorch's semi-structured path, see the handler source):

* ``A``: sparse, row-major ``(rows, cols)``, 2:4 along ``cols``, ``opA = N``;
* ``B``: dense row-major, ``(n, cols)`` with ``opB = T`` (``transpose_b=True``) or
  ``(cols, n)`` with ``opB = N``;
* ``D``: ``(rows, n)`` column-major with ``ld = rows``, which *is* the row-major ``(n, rows)``
  array ``op(B)ᵀ · Aᵀ`` that the JAX side receives.

The three GEMMs of an N:M training layer ``y = x · W`` (``x (T, K)``, ``W (K, N)``):

========  ===========================  ====================  ===========  ==============
GEMM      result                       sparse ``A``           2:4 along   ``B``
========  ===========================  ====================  ===========  ==============
forward   ``y (T, N) = x · W``         ``Wᵀ (N, K)``          ``K`` (in)   ``x``, ``T``
input     ``dx (T, K) = dy · Wᵀ``      ``W (K, N)``           ``N`` (out)  ``dy``, ``T``
weight    ``dW (K, N) = xᵀ · dy``      ``dyᵀ (N, T)`` (MVUE)  ``T``        ``x``, ``N``
========  ===========================  ====================  ===========  ==============

(``T``/``N`` in the last column: ``transpose_b``.) The forward needs W 2:4 along ``in``, the
input gradient W 2:4 along ``out`` (a transposable mask), the weight gradient the MVUE-pruned
``dy`` 2:4 along tokens: MVUE 2:4 and MVUE 1:2 (1 of every 2 is 2 of every 4) both qualify.

:func:`emulate_matmul` interprets flat buffers exactly as the descriptors say (row-/column-major
indexing from a flat array, ``op`` transposes), so tests check the plumbing against
``jnp.dot`` before any GPU runs it. Shape rules (cuSPARSELt's documented minimums, as PyTorch's
``SparseSemiStructuredTensorCUSPARSELT`` applies them): the sparse matrix's rows and cols are
multiples of 16 for 16-bit types (32 for 8-bit), the dense ``n`` a multiple of 8 (16); every
pointer 16-byte aligned (XLA's buffers are).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

# Sparse-operand dtype -> allowed output dtypes (cuSPARSELt >= 0.5.2 on sm_80+; float8 on
# sm_89/sm_90 only).
SUPPORTED_DTYPES = {
    jnp.dtype(jnp.bfloat16): (jnp.dtype(jnp.bfloat16),),
    jnp.dtype(jnp.float16): (jnp.dtype(jnp.float16),),
    jnp.dtype(jnp.int8): (
        jnp.dtype(jnp.int8),
        jnp.dtype(jnp.int32),
        jnp.dtype(jnp.bfloat16),
        jnp.dtype(jnp.float16),
    ),
    jnp.dtype(jnp.float8_e4m3fn): (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)),
}
# Sparse-operand dtype -> cudaDataType code (library_types.h).
CUDA_TYPE = {
    jnp.dtype(jnp.bfloat16): 14,
    jnp.dtype(jnp.float16): 2,
    jnp.dtype(jnp.int8): 3,
    jnp.dtype(jnp.float8_e4m3fn): 28,
}


def check_dtype(dtype, name: str) -> jnp.dtype:
    """The sparse-operand dtype, or ``TypeError`` naming the supported ones."""
    dtype = jnp.dtype(dtype)
    if dtype not in SUPPORTED_DTYPES:
        names = ", ".join(str(d) for d in SUPPORTED_DTYPES)
        raise TypeError(f"`{name}` has dtype {dtype}; cuSPARSELt 2:4 supports {names}.")
    return dtype


def check_out_dtype(dtype, out_dtype) -> jnp.dtype:
    """The output dtype for a ``dtype`` operand (default: ``dtype``, int8 -> int32)."""
    allowed = SUPPORTED_DTYPES[jnp.dtype(dtype)]
    if out_dtype is None:
        return jnp.dtype(jnp.int32) if dtype == jnp.int8 else allowed[0]
    out_dtype = jnp.dtype(out_dtype)
    if out_dtype not in allowed:
        raise TypeError(
            f"`out_dtype` (={out_dtype}) is not available for {dtype} operands; allowed: "
            f"{', '.join(str(d) for d in allowed)}."
        )
    return out_dtype


def sparse_multiple(dtype) -> int:
    """Rows and cols of the sparse matrix must be multiples of this."""
    return 16 if jnp.dtype(dtype).itemsize == 2 else 32


def dense_multiple(dtype) -> int:
    """The dense operand's free dimension ``n`` must be a multiple of this."""
    return 8 if jnp.dtype(dtype).itemsize == 2 else 16


def check_sparse_shape(rows: int, cols: int, dtype, name: str) -> None:
    """Raises ``ValueError`` unless a ``(rows, cols)`` sparse operand fits cuSPARSELt."""
    mult = sparse_multiple(dtype)
    if rows % mult or cols % mult or rows == 0 or cols == 0:
        raise ValueError(
            f"`{name}` is a ({rows}, {cols}) {jnp.dtype(dtype)} sparse operand: cuSPARSELt needs "
            f"both dimensions to be positive multiples of {mult} for this dtype."
        )


def check_dense_n(n: int, dtype, name: str) -> None:
    """Raises ``ValueError`` unless the dense operand's free size ``n`` fits cuSPARSELt."""
    mult = dense_multiple(dtype)
    if n % mult or n == 0:
        raise ValueError(
            f"`{name}`: the dense operand's free dimension is {n}; cuSPARSELt needs a positive "
            f"multiple of {mult} for {jnp.dtype(dtype)} (pad it, e.g. the token count)."
        )


def compressed_nbytes(rows: int, cols: int, dtype) -> int:
    """Bytes of cuSPARSELt's compressed ``(rows, cols)`` 2:4 matrix.

    Kept values (half the entries) plus 2-bit indices of every kept value: ``9/16`` of the
    dense bytes for 16-bit types, ``10/16`` for 8-bit ones (the size PyTorch allocates for
    ``_cslt_compress``). The compress handler checks it against
    ``cusparseLtSpMMACompressedSize2`` on the device and fails with a clear error if the
    library asks for more.
    """
    dense = rows * cols * jnp.dtype(dtype).itemsize
    factor = 9 if jnp.dtype(dtype).itemsize == 2 else 10
    return dense * factor // 16


def is_2_4(a: jax.Array) -> jax.Array:
    """Whether a row-major ``(rows, cols)`` matrix keeps at most 2 of every 4 along ``cols``.

    Returns:
      bool scalar (the condition ``cusparseLtSpMMAPruneCheck2`` tests).
    """
    rows, cols = a.shape
    groups = (a != 0).reshape(rows, cols // 4, 4).sum(-1)
    return jnp.all(groups <= 2)


@jax.jit
def emulate_compress(a: jax.Array) -> tuple[jax.Array, jax.Array]:
    """What the compress handler produces, emulated: the flat row-major buffer of ``A`` and
    the ``invalid`` flag (``int32``, nonzero when ``A`` is not 2:4 along its columns).

    Args:
      a: ``(rows, cols)`` sparse operand, 2:4 along ``cols``.

    Returns:
      ``(buffer (rows*cols,) a.dtype, invalid int32[])``.
    """
    return a.reshape(-1), (~is_2_4(a)).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("rows", "cols", "transpose_b", "out_dtype"))
def emulate_matmul(
    a_buffer: jax.Array,
    b: jax.Array,
    *,
    rows: int,
    cols: int,
    transpose_b: bool,
    out_dtype,
) -> jax.Array:
    """``D = A · op(B)`` from flat buffers read as the handler's descriptors say.

    Args:
      a_buffer: flat ``(rows*cols,)`` buffer of ``A`` (row-major, ``ld = cols``).
      b: row-major dense operand, ``(n, cols)`` if ``transpose_b`` else ``(cols, n)``.
      rows, cols: ``A``'s shape.
      transpose_b: ``opB = T``.
      out_dtype: ``D``'s dtype.

    Returns:
      ``D``'s memory read as a row-major ``(n, rows)`` array (``D`` is column-major, ``ld =
      rows``), float32 accumulation.
    """
    a = _view(a_buffer, rows, cols, ld=cols, order="row")
    b_rows, b_cols = b.shape
    b_mat = _view(b.reshape(-1), b_rows, b_cols, ld=b_cols, order="row")
    op_b = b_mat.T if transpose_b else b_mat  # (cols, n)
    if op_b.shape[0] != cols:
        raise ValueError(f"op(B) has shape {op_b.shape}, its rows must equal cols={cols}.")
    acc = jnp.int32 if jnp.issubdtype(b.dtype, jnp.integer) else jnp.float32
    d = jnp.dot(a.astype(acc), op_b.astype(acc), preferred_element_type=acc)  # (rows, n)
    n = op_b.shape[1]
    memory = _store(d, ld=rows, order="col")  # flat, as the device writes it
    return memory.reshape(n, rows).astype(out_dtype)


def _view(buffer: jax.Array, rows: int, cols: int, *, ld: int, order: str) -> jax.Array:
    """Element ``(i, j)`` of a matrix stored in ``buffer``: ``buffer[i*ld + j]`` (row-major)
    or ``buffer[i + j*ld]`` (column-major), gathered with explicit flat indices."""
    i = np.arange(rows)[:, None]
    j = np.arange(cols)[None, :]
    index = i * ld + j if order == "row" else i + j * ld
    return buffer[index]


def _store(d: jax.Array, *, ld: int, order: str) -> jax.Array:
    """The flat buffer holding matrix ``d`` with the given order and leading dimension."""
    rows, cols = d.shape
    extent = rows if order == "col" else cols
    if ld != extent:
        raise ValueError(f"packed storage only: ld={ld} must equal {extent}.")
    i = np.arange(rows)[:, None]
    j = np.arange(cols)[None, :]
    index = (i * ld + j if order == "row" else i + j * ld).reshape(-1)
    flat = jnp.zeros((rows * cols,), d.dtype)
    return flat.at[index].set(d.reshape(-1))
