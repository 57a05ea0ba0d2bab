"""The custom VJP shared by the N:M ops: ``masked_linear`` and its prologue.

:func:`jaxnm.ops.nm_dot_general` and :func:`jaxnm.ops.nm_conv` differ only in the linear map
(a ``dot_general`` or a convolution, described by a hashable settings object ``cfg``); both
validate their operands with :func:`check_operands` and run :func:`masked_linear`.

SR-STE is not part of the op: it is configured once, in :func:`jaxnm.sparsify` (``srste=``),
which adds its decay to the gradient of every sparsified parameter.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxnm._checks import check_floating, check_mask_like
from jaxnm.ops._grad_prune import check_grad_sparsity
from jaxnm.ops._mvue import MVUE


class Operands(NamedTuple):
    """The validated inputs of one op call (see :func:`check_operands`)."""

    mask: jax.Array  # the kernel's shape, bool or numeric
    spec: MVUE | None  # None: dense weight gradient
    key: jax.Array | None  # None unless ``spec`` is set


def check_operands(lhs, rhs, mask, grad_sparsity, key) -> Operands:
    """The boundary checks of an N:M op (floating operands, a mask of the kernel's shape,
    ``grad_sparsity`` with a key); the key is dropped when there is no gradient pruning.

    Raises:
      ValueError / TypeError: as :func:`jaxnm.ops.nm_dot_general` documents.
    """
    check_floating(lhs, "lhs")
    check_floating(rhs, "rhs")
    check_mask_like(mask, rhs, w_name="rhs")
    spec = check_grad_sparsity(grad_sparsity, key)
    return Operands(jnp.asarray(mask), spec, key if spec is not None else None)


def canonical_precision(precision):
    """``precision`` in a hashable form (a list, as Flax may pass it, becomes a tuple)."""
    return tuple(precision) if isinstance(precision, list) else precision


def apply_mask(w: jax.Array, mask: jax.Array) -> jax.Array:
    """``w ⊙ mask`` in ``w``'s dtype: ``where(mask, w, 0)`` for bool, else ``w * mask``."""
    if mask.dtype == jnp.bool_:
        return jnp.where(mask, w, jnp.zeros((), w.dtype))
    return w * mask.astype(w.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def masked_linear(cfg, lhs, rhs, mask, key):
    """``cfg.apply(lhs, rhs ⊙ mask)`` with the N:M training backward pass.

    ``cfg`` is a hashable settings object with ``apply(lhs, rhs)`` (a linear map in each
    argument), ``prune_output(g, lhs_ndim, key)`` (MVUE of ``dY`` along its token axes),
    ``spec`` (``None`` or a :class:`jaxnm.MVUE`) and ``weight_grad(lhs, g, rhs)`` (the
    transposed map in ``rhs``, e.g. :func:`transpose_in_rhs`).
    Backward: ``dlhs`` through ``rhs ⊙ mask``; ``drhs`` from the pruned ``dY`` (when ``spec``
    is set), straight through to the dense ``rhs``; no gradient for ``mask`` or ``key``.
    """
    del key
    return cfg.apply(lhs, apply_mask(rhs, mask))


def _masked_linear_fwd(cfg, lhs, rhs, mask, key):
    return cfg.apply(lhs, apply_mask(rhs, mask)), (lhs, rhs, mask, key)


def _masked_linear_bwd(cfg, res, g):
    lhs, rhs, mask, key = res
    w_eff = apply_mask(rhs, mask)
    (dlhs,) = jax.linear_transpose(lambda x: cfg.apply(x, w_eff), lhs)(g)
    if cfg.spec is not None:
        g = cfg.prune_output(g, lhs.ndim, key)
    return dlhs, cfg.weight_grad(lhs, g, rhs), None, None


masked_linear.defvjp(_masked_linear_fwd, _masked_linear_bwd)


def transpose_in_rhs(apply, lhs, g, rhs):
    """``∂apply(lhs, rhs)/∂rhs`` applied to ``g`` by ``jax.linear_transpose`` of ``apply``.

    Args:
      apply: ``(lhs, rhs) -> out``, linear in ``rhs``.
      lhs: the fixed first argument.
      g: cotangent of the output, shaped like ``apply(lhs, rhs)``.
      rhs: the point (only its shape and dtype matter).

    Returns:
      the cotangent of ``rhs``, shaped like ``rhs``.
    """
    (drhs,) = jax.linear_transpose(lambda w: apply(lhs, w), rhs)(g)
    return drhs
