"""MVUE pruning of the output gradient ``dY`` along its token axis, for the weight gradient.

``grad_sparsity`` selects the estimator: ``None`` (dense), ``"mvue_1_2"``, ``"mvue_2_4"`` or
``"approx_mvue_2_4"`` (BRIEF §5). Groups of ``m`` run along the flattened token axis (all
output positions that the weight-gradient GEMM ``dW = Xᵀ·dY`` reduces over), separately for
every output feature.

Ragged tail policy: when the number of tokens ``T`` is not a multiple of ``m``, the first
``T − T mod m`` tokens are pruned and the last ``T mod m`` tokens stay dense (exact), so the
estimate stays unbiased for any ``T``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxnm.ops.mvue import check_key, mvue

GRAD_SPARSITY = ("mvue_1_2", "mvue_2_4", "approx_mvue_2_4")


class GradSparsity(NamedTuple):
    """A parsed ``grad_sparsity`` setting."""

    n: int  # kept per group
    m: int  # group size
    method: str  # "exact" or "approx", see jaxnm.ops.mvue


_PARSED = {
    "mvue_1_2": GradSparsity(1, 2, "exact"),
    "mvue_2_4": GradSparsity(2, 4, "exact"),
    "approx_mvue_2_4": GradSparsity(2, 4, "approx"),
}


def parse_grad_sparsity(grad_sparsity: str | None) -> GradSparsity | None:
    """Validates ``grad_sparsity`` and returns its :class:`GradSparsity` (``None`` if dense)."""
    if grad_sparsity is None:
        return None
    if not isinstance(grad_sparsity, str) or grad_sparsity not in _PARSED:
        raise ValueError(
            f"`grad_sparsity` must be None or one of {GRAD_SPARSITY}, got {grad_sparsity!r}."
        )
    return _PARSED[grad_sparsity]


def check_grad_key(spec: GradSparsity | None, key) -> None:
    """MVUE needs a key: raises ``ValueError`` when ``spec`` is set and ``key`` is None."""
    if spec is not None:
        check_key(key)


def prune_tokens(g: jax.Array, spec: GradSparsity, key: jax.Array) -> jax.Array:
    """MVUE-prunes ``g`` along axis 1 (tokens), leaving a ragged tail dense.

    Args:
      g: ``(B, T, F)`` floating array: batch (not pruned across), tokens (the N:M group
        axis), features.
      spec: the estimator.
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
        return mvue(g, spec.n, spec.m, key, axis=1, method=spec.method)
    head = mvue(g[:, :full], spec.n, spec.m, key, axis=1, method=spec.method)
    return jnp.concatenate([head, g[:, full:]], axis=1)
