"""Compacted rounds: apply a per-tile step only to the tiles that still need it.

A generic scheduler for iterative per-tile algorithms (the greedy pass, the repair and the
cycle cancelling of :mod:`jaxnm.masks.greedy` and :mod:`jaxnm.masks.residual`): the first
rounds run on the whole batch; once few tiles are still active, they are gathered into
smaller fixed-size buffers (``jnp.nonzero`` with a static size), so the total work follows
the number of active tiles rather than the slowest tile times the batch.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax

#: Each compacted buffer is this many times smaller than the previous one.
SHRINK = 8


def compacted_rounds(
    step: Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array]],
    scores,
    keep,
    *,
    max_rounds: int,
    min_buffer: int = 64,
    active: jax.Array | None = None,
    whole_batch: bool = True,
    compact: bool = True,
    finished_is_fixed: bool = False,
):
    """Applies ``step`` to the tiles that still need it, at most ``max_rounds`` times each.

    The first rounds run on the whole batch. Once at most an eighth of the tiles are
    active, the active ones are gathered (``jnp.nonzero`` with a static size) into a buffer
    of ``B // 8`` tiles, then ``B // 64`` and so on down to ``min_buffer``, so the work
    follows the number of active tiles. Each tile's result depends only on that tile, so
    it is the same whatever buffer it lands in.

    With ``whole_batch=False`` even the first rounds gather: each one steps the first
    ``B // 8`` active tiles (a tile may run its next round before others ran their
    first), so the work follows the active tiles to within ``B // 8`` from the start, at
    the price of a gather and a scatter per buffer. That pays when a round costs much
    more than moving a tile's data (cycle cancelling: ``m**3`` work on ``m**2`` data) and
    tiles need different numbers of rounds; the program has one loop fewer.

    With ``compact=False`` nothing is gathered: every round steps the whole batch until no
    tile is active (what a ``vmap`` of the rounds over single tiles computes, traced
    once instead of through ``vmap``'s loop batching). One loop and no gathers: the
    cheapest program to compile, the slowest to run on large batches.

    ``finished_is_fixed`` declares that a tile the step reports finished is a fixed point
    of the step (stepped again, it comes back unchanged and finished): the whole-batch
    rounds then step every tile without masking the finished ones back to their old
    values: no select of the whole state per round, so less to compile (the greedy
    solve's greedy pass and repair: 31 kB less LLVM IR on XLA:CPU), the same result.
    Used only when ``active`` is None.

    Args:
      step: ``(scores (K, ...), keep (K, ...)) -> (keep, active (K,) bool)``, one round.
      scores: ``(B, ...)`` or a pytree of such arrays: per-tile data the step reads
        (e.g. float32 ``(B, m, m)``).
      keep: ``(B, ...)`` or a pytree of such arrays: per-tile state the step updates
        (e.g. bool ``(B, m, m)``).
      max_rounds: rounds per tile (static int).
      min_buffer: smallest compacted batch (static int).
      active: bool ``(B,)``, the tiles to work on (``None``: all). When few are active
        from the start, the rounds begin on compacted buffers.
      whole_batch: whether the first rounds step the whole batch (see above; static).
      compact: whether to gather the active tiles into smaller buffers (static; False
        ignores ``min_buffer`` and ``whole_batch``).
      finished_is_fixed: whether finished tiles are fixed points of ``step`` (static;
        see above). A step for which this does not hold gives wrong results with True.

    Returns:
      ``keep`` after the rounds.
    """
    b = jax.tree.leaves(keep)[0].shape[0]
    if max_rounds <= 0 or b == 0:
        return keep
    sizes = [b]
    while compact and sizes[-1] // SHRINK >= min_buffer:
        sizes.append(sizes[-1] // SHRINK)
    if not whole_batch and len(sizes) > 1:
        sizes = sizes[1:]

    masked = not (finished_is_fixed and active is None)
    active = jnp.ones((b,), bool) if active is None else active
    if sizes == [b]:
        return _whole_batch_rounds(step, scores, keep, active, max_rounds, masked=masked)

    def gather(tree, idx):
        return jax.tree.map(lambda x: x[idx], tree)

    state = (keep, active, jnp.zeros((b,), jnp.int32))
    for level, size in enumerate(sizes):
        stop = sizes[level + 1] if level + 1 < len(sizes) else 0

        def cond(st, stop=stop):
            return jnp.sum(st[1]) > stop

        def body(st, size=size):
            keep, active, rounds = st
            if size == b:  # whole batch: no gather
                new, still = step(scores, keep)
                keep = _where_active(active, new, keep)
                rounds = rounds + active
                return keep, active & still & (rounds < max_rounds), rounds
            idx = jnp.nonzero(active, size=size, fill_value=b)[0].astype(jnp.int32)
            safe = jnp.minimum(idx, b - 1)
            new, still = step(gather(scores, safe), gather(keep, safe))
            done = rounds[safe] + 1
            keep = jax.tree.map(lambda k, n: k.at[idx].set(n, mode="drop"), keep, new)
            rounds = rounds.at[idx].set(done, mode="drop")
            active = active.at[idx].set(still & (done < max_rounds), mode="drop")
            return keep, active, rounds

        state = lax.while_loop(cond, body, state)
    return state[0]


def _where_active(active: jax.Array, new, keep):
    """``new`` where ``active`` (bool ``(B,)``), else ``keep`` (pytrees of ``(B, ...)``)."""
    return jax.tree.map(
        lambda n, k: jnp.where(active.reshape((-1,) + (1,) * (k.ndim - 1)), n, k), new, keep
    )


def _any(active: jax.Array) -> jax.Array:
    """Whether any entry of bool ``(B,)`` ``active`` is set, as a bool scalar.

    XLA:CPU splits ``jnp.any`` over a long axis into a tree of reduce-windows, and that
    of jax 0.10 compiles the first one (windows of 32 bools) into a kernel of ~300 kB of
    LLVM IR; this ``uint8`` maximum stays one reduction. ``benchmarks/loop_condition.py``:
    a loop on 12,832 tiles with ``jnp.any`` as its condition compiles in 2.6x the time of
    one with this form on jax 0.10, the same time on jax 0.12.
    """
    return jnp.max(active.astype(jnp.uint8)) > 0


def _whole_batch_rounds(
    step, scores, keep, active: jax.Array, max_rounds: int, *, masked: bool = True
):
    """:func:`compacted_rounds` with one buffer, the whole batch.

    Tiles only ever leave the active set, so every active tile has run as many rounds as
    the loop: one scalar counter replaces the per-tile counts, and the loop stops when no
    tile is active (:func:`_any`). Each kernel XLA:CPU compiles costs ~20 ms, so the fewer
    the better here. ``masked=False`` (finished tiles are fixed points of ``step``): every
    round steps every tile, and the new state is not masked back to the old one.
    """

    def cond(state):
        return _any(state[1])

    def body(state):
        keep, active, rounds = state
        new, still = step(scores, keep)
        rounds = rounds + 1
        if masked:
            new, still = _where_active(active, new, keep), active & still
        return new, still & (rounds < max_rounds), rounds

    return lax.while_loop(cond, body, (keep, active, jnp.zeros((), jnp.int32)))[0]
