"""Masked least squares for converting a layer to N:M without retraining (BRIEF §6).

For a layer with input features ``X`` (``(P, K)``: tokens or conv patches by the flattened
kernel rows) and dense kernel ``W`` (``(K, out)``), the re-fit solves, for every output
column ``j`` independently, the least-squares problem on the kept rows ``S_j``::

    min_v ||X[:, S_j] v - X w_j||²  + damp · mean(diag G) · ||v||²,    G = Xᵀ X

Only the Gram matrix ``G`` (``(K, K)``, accumulated over calibration batches) is needed:
``X w_j`` is the dense output, so the right-hand side is ``G[S_j] w_j``. The masked normal
equations are solved exactly with a batched Cholesky factorisation (all columns at once, in
chunks), which replaces the reference's 1,000 Adam steps. Pure array functions: any backend,
under ``jit``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

_HIGHEST = jax.lax.Precision.HIGHEST


def dense_gram(x: jax.Array) -> jax.Array:
    """Gram matrix of the inputs of a dense layer.

    Args:
      x: ``(..., K)`` layer inputs (any floating dtype); leading axes are tokens/batch.

    Returns:
      float32 ``(K, K)`` ``Xᵀ X`` with ``X = x.reshape(-1, K)``.
    """
    x2 = jnp.reshape(x, (-1, jnp.shape(x)[-1])).astype(jnp.float32)
    return jnp.matmul(x2.T, x2, precision=_HIGHEST)


def conv_gram(
    x: jax.Array,
    kernel_shape: Sequence[int],
    window_strides: Sequence[int],
    padding: Any,
    *,
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None,
) -> jax.Array:
    """Gram matrix of the patches a convolution multiplies with its flattened kernel.

    The patches are extracted by convolving ``x`` with an identity kernel of ``kernel_shape``,
    so their feature order is exactly that of ``kernel.reshape(-1, out)`` whatever the
    layout, padding, strides and dilations (``feature_group_count`` must be 1).

    Args:
      x: layer input, e.g. ``(B, H, W, C)`` for NHWC (any floating dtype).
      kernel_shape: ``(*window, in, out)``: the kernel layout must be spatial axes, then
        input and output features (HWIO, as Flax); the input and output layouts may be any
        that ``dimension_numbers`` names.
      window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers: as in
        ``jax.lax.conv_general_dilated`` (what the layer uses).

    Returns:
      float32 ``(K, K)``, ``K = prod(kernel_shape[:-1])`` (window by input channels).
    """
    kernel_shape = tuple(kernel_shape)
    k = 1
    for size in kernel_shape[:-1]:
        k *= size
    eye = jnp.eye(k, dtype=jnp.float32).reshape(*kernel_shape[:-1], k)
    patches = jax.lax.conv_general_dilated(
        jnp.asarray(x, jnp.float32),
        eye,
        window_strides,
        padding,
        lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers,
        precision=_HIGHEST,
    )
    out_dim = output_feature_axis(dimension_numbers, patches.ndim)
    patches = jnp.moveaxis(patches, out_dim, -1).reshape(-1, k)
    return jnp.matmul(patches.T, patches, precision=_HIGHEST)


@functools.partial(jax.jit, static_argnames=("chunk_size",))
def masked_least_squares(
    gram: jax.Array,
    w: jax.Array,
    mask: jax.Array,
    *,
    damp: float | jax.Array = 1e-3,
    chunk_size: int | None = None,
) -> jax.Array:
    """Re-fits the kept weights of every output column to match the dense outputs.

    For each column ``j`` solves ``min_v ‖X (m_j ⊙ v) − X w_j‖² + λ ‖m_j ⊙ v‖²`` with
    ``Xᵀ X = gram`` and ``λ = damp · mean(diag(gram))``, through the normal equations
    ``(D G D + λ D + (I − D)) v = D G w_j`` with ``D = diag(m_j)`` (positive definite for
    ``damp > 0``), factorised by Cholesky for all columns at once.

    Args:
      gram: ``(K, K)`` Gram matrix of the layer inputs (see :func:`dense_gram`,
        :func:`conv_gram`); symmetric positive semi-definite.
      w: ``(K, out)`` dense kernel, rows in the order of ``gram`` (float32, bfloat16, float16).
      mask: ``(K, out)`` bool (or 0/1) mask; the N:M groups run along ``K`` (axis 0).
      damp: ridge strength relative to the mean diagonal of ``gram`` (``> 0``).
      chunk_size: solve this many columns at a time (memory ``chunk_size · K²`` floats);
        ``None`` solves all columns together.

    Returns:
      ``(K, out)`` array of ``w``'s dtype: the re-fitted weights, exactly zero where ``mask``
      is False. Computed in float32.
    """
    if gram.ndim != 2 or gram.shape[0] != gram.shape[1]:
        raise ValueError(f"`gram` must be a square (K, K) matrix, got shape {gram.shape}.")
    if w.ndim != 2 or w.shape[0] != gram.shape[0]:
        raise ValueError(
            f"`w` must have shape (K, out) with K = {gram.shape[0]} (from `gram`), got {w.shape}."
        )
    if mask.shape != w.shape:
        raise ValueError(f"`mask` shape {mask.shape} must equal `w` shape {w.shape}.")
    g = gram.astype(jnp.float32)
    lam = damp * jnp.maximum(jnp.mean(jnp.diag(g)), jnp.finfo(jnp.float32).tiny)
    keep = mask.astype(bool).T  # (out, K)
    dense = w.astype(jnp.float32).T  # (out, K)

    def solve_column(args):
        kept, w_j = args
        d = kept.astype(jnp.float32)
        a = g * d[:, None] * d[None, :] + jnp.diag(lam * d + (1.0 - d))
        rhs = d * jnp.matmul(g, w_j, precision=_HIGHEST)
        factor = jax.scipy.linalg.cho_factor(a, lower=True)
        return jnp.where(kept, jax.scipy.linalg.cho_solve(factor, rhs), 0.0)

    refit = jax.lax.map(solve_column, (keep, dense), batch_size=chunk_size or keep.shape[0])
    return refit.T.astype(w.dtype)


def reconstruction_error(gram: jax.Array, w: jax.Array, w_new: jax.Array) -> jax.Array:
    """Relative output error ``‖X(w − w_new)‖² / ‖X w‖²`` from the Gram matrix.

    Args:
      gram: ``(K, K)`` ``Xᵀ X``.
      w: ``(K, out)`` dense kernel.
      w_new: ``(K, out)`` pruned (and possibly re-fitted) kernel.

    Returns:
      float32 scalar.
    """
    g = gram.astype(jnp.float32)
    delta = (w - w_new).astype(jnp.float32)
    dense = w.astype(jnp.float32)
    num = jnp.sum(delta * jnp.matmul(g, delta, precision=_HIGHEST))
    den = jnp.sum(dense * jnp.matmul(g, dense, precision=_HIGHEST))
    return num / jnp.maximum(den, jnp.finfo(jnp.float32).tiny)


def output_feature_axis(dimension_numbers, ndim: int) -> int:
    if dimension_numbers is None:
        return 1  # lax default: NCHW output
    if isinstance(dimension_numbers, jax.lax.ConvDimensionNumbers):
        return dimension_numbers.out_spec[1]
    spec = jax.lax.conv_dimension_numbers((1,) * ndim, (1,) * ndim, dimension_numbers)
    return spec.out_spec[1]
