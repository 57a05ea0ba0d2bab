"""MVUE pruning of the output gradient ``dY`` along its token axis, for the weight gradient.

``grad_sparsity`` selects the estimator: ``None`` (dense) or a :class:`jaxnm.MVUE`
(``MVUE(1, 2)``, ``MVUE(2, 4)``, ``MVUE(2, 4, approx=True)``; BRIEF §5). Groups of ``m`` run
along the flattened token axis (all output positions that the weight-gradient GEMM
``dW = Xᵀ·dY`` reduces over), separately for every output feature.

Ragged tail policy: when the number of tokens ``T`` is not a multiple of ``m``, the first
``T − T mod m`` tokens are pruned and the last ``T mod m`` tokens stay dense (exact), so the
estimate stays unbiased for any ``T``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxnm.ops._mvue import MVUE, check_key, estimate


def check_grad_sparsity(grad_sparsity, key=None, *, needs_key: bool = True) -> MVUE | None:
    """The boundary check of every op taking ``grad_sparsity``; returns it unchanged.

    Raises:
      TypeError: ``grad_sparsity`` is neither ``None`` nor a :class:`jaxnm.MVUE` (a string
        names :meth:`jaxnm.MVUE.parse`, the converter for command-line strings).
      ValueError: ``grad_sparsity`` is set, ``needs_key`` is True and ``key`` is None.
    """
    if grad_sparsity is None:
        return None
    if not isinstance(grad_sparsity, MVUE):
        hint = (
            f" Use jaxnm.MVUE.parse({grad_sparsity!r}) to convert a command-line string."
            if isinstance(grad_sparsity, str)
            else ""
        )
        raise TypeError(
            f"`grad_sparsity` must be None or a jaxnm.MVUE, got {grad_sparsity!r}.{hint}"
        )
    if needs_key:
        check_key(key)
    return grad_sparsity


def prune_tokens(g: jax.Array, spec: MVUE, key: jax.Array) -> jax.Array:
    """MVUE-prunes ``g`` along axis 1 (tokens), leaving a ragged tail dense.

    Args:
      g: ``(B, T, F)`` floating array: batch (not pruned across), tokens (the N:M group
        axis), features.
      spec: the estimator (validated; nothing is re-checked here, in the backward pass).
      key: PRNG key.

    Returns:
      ``(B, T, F)`` array of ``g``'s dtype; the first ``T − T mod m`` tokens hold ``spec.n`` of
      every ``spec.m`` kept per group, the last ``T mod m`` tokens are unchanged.
    """
    tokens = g.shape[1]
    full = tokens - tokens % spec.m
    if full == 0:
        return g
    if full == tokens:
        return estimate(g, spec, key, 1)[0]
    head = estimate(g[:, :full], spec, key, 1)[0]
    return jnp.concatenate([head, g[:, full:]], axis=1)


@dataclasses.dataclass(frozen=True)
class TokenPruner:
    """``prune(g, key)``: MVUE of a 2-D ``g (T, F)`` along its tokens (axis 0), as the
    hashable callable :func:`jaxnm.kernels.cusparselt.cusparselt_linear` takes."""

    spec: MVUE

    def __call__(self, g: jax.Array, key: jax.Array) -> jax.Array:
        return prune_tokens(g[None], self.spec, key)[0]
