"""Importance scores and deterministic ranking inside small groups.

Policy for non-finite entries (documented in the README and relied on by every solver):
scores are ``|w|`` computed in float32; ``±inf`` ranks above every finite value and NaN
ranks below every number (its score is set to ``-1``, while real scores are ``>= 0``).
Equal scores keep the lower index first. The result is a valid mask for any input.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def importance(w: jax.Array) -> jax.Array:
    """Returns float32 scores ``|w|`` with NaN mapped to ``-1`` (ranked last).

    Args:
      w: array of any floating dtype and shape; weights or non-negative scores.

    Returns:
      float32 array of ``w``'s shape.
    """
    s = jnp.abs(w.astype(jnp.float32))
    return jnp.where(jnp.isnan(s), -1.0, s)


def rank_in_groups(scores: jax.Array) -> jax.Array:
    """Ranks entries within groups along the last axis, best first.

    The rank of entry ``i`` is the number of entries ``j`` with a larger score, or an equal
    score and a lower index. It uses ``m**2`` comparisons per group and no sort, so it is
    identical on every backend and under ``jit``/``vmap``.

    Args:
      scores: ``(..., m)`` float array; the last axis holds one group.

    Returns:
      int32 array ``(..., m)``: 0 for the best entry, ``m - 1`` for the worst.
    """
    m = scores.shape[-1]
    si = scores[..., :, None]
    sj = scores[..., None, :]
    idx = jnp.arange(m)
    earlier = idx[None, :] < idx[:, None]  # [i, j]: j comes before i
    beats = (sj > si) | ((sj == si) & earlier)
    return jnp.sum(beats, axis=-1, dtype=jnp.int32)
