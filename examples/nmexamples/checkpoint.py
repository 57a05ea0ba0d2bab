"""Orbax checkpoints of the example train state, one per epoch.

Typed PRNG keys (``nnx.Rngs`` state) are stored as their raw ``uint32`` key data and
re-wrapped on restore, using the live state as the template.
"""

from __future__ import annotations

from pathlib import Path

import jax
import orbax.checkpoint as ocp


def manager(directory: str | Path, *, max_to_keep: int = 2) -> ocp.CheckpointManager:
    """A checkpoint manager writing to ``directory`` (created if missing)."""
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
    return ocp.CheckpointManager(Path(directory).absolute(), options=options)


def save(mngr: ocp.CheckpointManager, step: int, state) -> None:
    """Saves the leaves of the pytree ``state`` under ``step`` and waits until they are on disk.

    Only the leaves are stored (as one list), so any pytree (``nnx.State``, optax states,
    NamedTuples) round-trips; the structure comes back from the template given to
    :func:`restore`.
    """
    leaves = jax.tree.leaves(_keys_to_data(state))
    mngr.save(step, args=ocp.args.StandardSave({"leaves": leaves}))
    mngr.wait_until_finished()


def restore(mngr: ocp.CheckpointManager, template, step: int | None = None):
    """Restores the checkpoint ``step`` (default: the latest) into the structure of ``template``.

    Returns:
      ``(step, state)``, or ``(None, template)`` when the directory holds no checkpoint.
    """
    step = mngr.latest_step() if step is None else step
    if step is None:
        return None, template
    data = _keys_to_data(template)
    leaves, treedef = jax.tree.flatten(data)
    abstract = {"leaves": [ocp.utils.to_shape_dtype_struct(x) for x in leaves]}
    restored = mngr.restore(step, args=ocp.args.StandardRestore(abstract))["leaves"]
    if len(restored) != len(leaves):
        raise ValueError(
            f"checkpoint {step} holds {len(restored)} arrays, the model state has {len(leaves)}; "
            "was it written by a run with other settings?"
        )
    return step, _data_to_keys(jax.tree.unflatten(treedef, restored), template)


def _is_key(x) -> bool:
    return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _keys_to_data(tree):
    return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def _data_to_keys(tree, template):
    return jax.tree.map(
        lambda x, t: jax.random.wrap_key_data(x, impl=jax.random.key_impl(t)) if _is_key(t) else x,
        tree,
        template,
    )
