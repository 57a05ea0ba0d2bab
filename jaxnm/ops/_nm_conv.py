"""N:M convolution for training over ``lax.conv_general_dilated`` (Flax HWIO kernels).

Forward ``Y = conv(lhs, rhs ⊙ mask)``. Backward (``jax.custom_vjp``), as for
:func:`jaxnm.ops.nm_dot_general`:

* input gradient: the transpose of the convolution with the masked kernel;
* kernel gradient: the transpose of the convolution w.r.t. the kernel applied to
  ``prune(dY)``, straight through to the dense kernel; ``prune`` is MVUE in groups of ``m``
  consecutive output positions along the row-major flattening of all non-feature output axes
  (``N·H·W`` for ``NHWC``), per output channel; a ragged tail of ``N·H·W mod m`` positions
  stays dense;
* no gradient to ``mask`` or ``key``.

SR-STE is configured in :func:`jaxnm.sparsify` (``srste=``), not in the op.

For a Flax Conv kernel ``(kh, kw, in, out)`` the N:M mask groups run along ``in`` (axis -2).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxnm.ops._grad_prune import check_grad_sparsity, prune_tokens
from jaxnm.ops._masked_linear import (
    canonical_precision,
    check_operands,
    masked_linear,
    transpose_in_rhs,
)
from jaxnm.ops._mvue import MVUE


class _ConvConfig(NamedTuple):
    """Static (hashable) settings of one :func:`nm_conv` call."""

    window_strides: tuple
    padding: Any  # a string or a tuple of (low, high) pairs
    lhs_dilation: tuple | None
    rhs_dilation: tuple | None
    dimension_numbers: lax.ConvDimensionNumbers
    feature_group_count: int
    precision: Any
    preferred_element_type: Any
    spec: MVUE | None

    def apply(self, lhs, rhs):
        """The convolution these settings describe."""
        return lax.conv_general_dilated(
            lhs,
            rhs,
            self.window_strides,
            self.padding,
            lhs_dilation=self.lhs_dilation,
            rhs_dilation=self.rhs_dilation,
            dimension_numbers=self.dimension_numbers,
            feature_group_count=self.feature_group_count,
            precision=self.precision,
            preferred_element_type=self.preferred_element_type,
        )

    def weight_grad(self, lhs, g, rhs):
        """``∂conv(lhs, rhs)/∂rhs`` applied to ``g`` (JAX's transpose of the convolution)."""
        return transpose_in_rhs(self.apply, lhs, g, rhs)

    def prune_output(self, g, lhs_ndim: int, key):
        """MVUE along the flattened non-feature output axes (in memory order), per channel."""
        del lhs_ndim
        feature = self.dimension_numbers.out_spec[1]
        moved = jnp.moveaxis(g, feature, -1)
        g3 = moved.reshape(1, math.prod(moved.shape[:-1]), moved.shape[-1])
        pruned = prune_tokens(g3, self.spec, key).reshape(moved.shape)
        return jnp.moveaxis(pruned, -1, feature)


def nm_conv(
    lhs: jax.Array,
    rhs: jax.Array,
    mask: jax.Array,
    window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    *,
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision=None,
    preferred_element_type=None,
    out_sharding=None,
    grad_sparsity: MVUE | None = None,
    key: jax.Array | None = None,
) -> jax.Array:
    """``lax.conv_general_dilated(lhs, rhs ⊙ mask, ...)`` with the N:M training backward pass.

    Args:
      lhs: input, floating, e.g. ``(N, H, W, C_in)`` for ``NHWC``.
      rhs: kernel, floating, e.g. ``(kh, kw, C_in / feature_group_count, C_out)`` for ``HWIO``
        (Flax layout). Receives the dense straight-through gradient.
      mask: array of ``rhs``'s shape, bool or numeric; typically N:M along ``in`` (axis -2 of
        an HWIO kernel), or transposable N:M over ``(in, out)``. Gets no gradient.
      window_strides, padding, lhs_dilation, rhs_dilation, feature_group_count, precision,
        preferred_element_type: as for ``lax.conv_general_dilated``.
      batch_group_count, out_sharding: accepted as Flax passes them, only at their
        defaults (1 and None).
      dimension_numbers: as for ``lax.conv_general_dilated``: layout strings
        (default Flax's ``("NHWC", "HWIO", "NHWC")``, any spatial rank) or a
        ``lax.ConvDimensionNumbers``.
      grad_sparsity: ``None`` or a :class:`jaxnm.MVUE`: prune ``dY`` along the flattened
        batch·spatial output positions before the kernel gradient.
      key: PRNG key, required when ``grad_sparsity`` is set. Fold in the step and layer id.

    Returns:
      The convolution output in the layout of ``dimension_numbers[2]``.

    Raises:
      ValueError: ``mask.shape != rhs.shape``, non-floating operands or ``grad_sparsity``
        without ``key``.
      TypeError: ``grad_sparsity`` neither ``None`` nor a :class:`jaxnm.MVUE`.
    """
    if batch_group_count != 1:
        raise ValueError(f"`batch_group_count` must be 1, got {batch_group_count}.")
    if out_sharding is not None:
        raise ValueError(f"`out_sharding` is not supported, got {out_sharding!r}.")
    ops = check_operands(lhs, rhs, mask, grad_sparsity, key)
    cfg = _ConvConfig(
        window_strides=tuple(int(s) for s in window_strides),
        padding=padding if isinstance(padding, str) else tuple(tuple(p) for p in padding),
        lhs_dilation=None if lhs_dilation is None else tuple(lhs_dilation),
        rhs_dilation=None if rhs_dilation is None else tuple(rhs_dilation),
        dimension_numbers=lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers),
        feature_group_count=int(feature_group_count),
        precision=canonical_precision(precision),
        preferred_element_type=preferred_element_type,
        spec=ops.spec,
    )
    return masked_linear(cfg, lhs, rhs, ops.mask, ops.key)


def nm_conv_fn(
    mask: jax.Array,
    *,
    grad_sparsity: MVUE | None = None,
    key: jax.Array | None = None,
) -> Callable[..., jax.Array]:
    """Closes :func:`nm_conv` over a mask and key, for Flax ``conv_general_dilated=`` seams.

    Flax ``nnx.Conv`` and ``linen.Conv`` call ``conv_general_dilated(inputs, kernel, strides,
    padding, lhs_dilation=..., rhs_dilation=..., dimension_numbers=...,
    feature_group_count=..., precision=..., [preferred_element_type=..., out_sharding=...])``;
    the returned function accepts exactly that.

    Args:
      mask: mask of the kernel's shape.
      grad_sparsity, key: see :func:`nm_conv`.

    Returns:
      A drop-in replacement for ``lax.conv_general_dilated`` (``batch_group_count`` must be 1
      and ``out_sharding`` None).
    """
    check_grad_sparsity(grad_sparsity, key)

    def conv_general_dilated(
        lhs,
        rhs,
        window_strides,
        padding,
        lhs_dilation=None,
        rhs_dilation=None,
        dimension_numbers=None,
        feature_group_count=1,
        batch_group_count=1,
        precision=None,
        preferred_element_type=None,
        out_sharding=None,
    ):
        return nm_conv(
            lhs,
            rhs,
            mask,
            window_strides,
            padding,
            lhs_dilation=lhs_dilation,
            rhs_dilation=rhs_dilation,
            dimension_numbers=dimension_numbers,
            feature_group_count=feature_group_count,
            batch_group_count=batch_group_count,
            precision=precision,
            preferred_element_type=preferred_element_type,
            out_sharding=out_sharding,
            grad_sparsity=grad_sparsity,
            key=key,
        )

    return conv_general_dilated
