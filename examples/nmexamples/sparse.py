"""How the examples turn the training flags into jaxnm calls.

``--sparsity 2:4|4:8`` and ``--transposable`` select ``jaxnm.sparsify(n, m, transposable=...)``,
chained first in front of AdamW in an ``nnx.Optimizer``; ``jaxnm.nnx.sparsify_model`` then
routes the sparsified layers of the model through jaxnm's N:M ops, which read the masks
from the optimizer state (one copy of the masks). ``--grad-sparsity mvue_1_2|mvue_2_4``
makes those ops prune the neural gradients with MVUE in the kernel-gradient GEMM.
"""

from __future__ import annotations

from typing import NamedTuple

import optax
from flax import nnx

import jaxnm
import jaxnm.nnx

SPARSITIES = {"dense": None, "2:4": (2, 4), "4:8": (4, 8)}
GRAD_SPARSITIES = ("none", "mvue_1_2", "mvue_2_4", "mvue_2_4_approx")


class SparseSpec(NamedTuple):
    """The sparsity of a run.

    Attributes:
      n: weights kept per group.
      m: group size.
      transposable: transposable N:M masks.
      grad_sparsity: ``None`` or a ``jaxnm.MVUE``.
    """

    n: int
    m: int
    transposable: bool
    grad_sparsity: jaxnm.MVUE | None


def spec_from_config(cfg) -> SparseSpec | None:
    """The :class:`SparseSpec` of a ``TrainConfig`` (``None`` for a dense run)."""
    if cfg.sparsity not in SPARSITIES:
        raise ValueError(f"`sparsity` (={cfg.sparsity!r}) must be one of {sorted(SPARSITIES)}.")
    if cfg.grad_sparsity not in GRAD_SPARSITIES:
        raise ValueError(
            f"`grad_sparsity` (={cfg.grad_sparsity!r}) must be one of {list(GRAD_SPARSITIES)}."
        )
    nm = SPARSITIES[cfg.sparsity]
    if nm is None:  # `transposable` (default True, as jaxnm.sparsify) has no effect here
        if cfg.grad_sparsity != "none":
            raise ValueError(
                "`grad_sparsity` needs a sparse run (--sparsity 2:4 or 4:8), "
                f"got sparsity={cfg.sparsity!r}, grad_sparsity={cfg.grad_sparsity!r}."
            )
        return None
    grad = jaxnm.MVUE.parse(cfg.grad_sparsity)  # the one place the flag becomes a value
    return SparseSpec(n=nm[0], m=nm[1], transposable=cfg.transposable, grad_sparsity=grad)


def chain(
    spec: SparseSpec | None,
    optimizer: optax.GradientTransformation,
    *,
    refresh_every: int,
    start_step: int = 0,
    end_step: int | None = None,
    srste: float = 0.0,
    method: jaxnm.masks.MaskMethod = "auto",
) -> optax.GradientTransformation:
    """``optax.chain(jaxnm.sparsify(...), optimizer)``, or ``optimizer`` for dense runs.

    ``start_step``: the first sparse step (dense before); ``end_step``: the step from which
    the masks stay frozen (``None``: refresh to the end); ``srste``: the SR-STE weight;
    ``method``: the transposable-mask solver.
    """
    if spec is None:
        return optimizer
    sparsify = jaxnm.sparsify(
        spec.n,
        spec.m,
        transposable=spec.transposable,
        refresh_every=refresh_every,
        start_step=start_step,
        end_step=end_step,
        srste=srste,
        method=method,
    )
    return optax.chain(sparsify, optimizer)


def attach(
    model: nnx.Module, optimizer: nnx.Optimizer, spec: SparseSpec | None, *, seed: int
) -> None:
    """Links the model's sparsified layers to the optimizer's masks (no-op for dense runs).

    ``jaxnm.nnx.sparsify_model`` swaps each sparsified layer's GEMM for jaxnm's N:M op:
    forward with ``kernel ⊙ mask``, input gradient with the transposed mask and, with
    ``grad_sparsity``, the kernel gradient from an MVUE-pruned neural gradient whose keys
    come from an ``nnx.Rngs`` seeded by ``seed`` (saved in checkpoints with the model).
    """
    if spec is None:
        return
    rngs = None if spec.grad_sparsity is None else nnx.Rngs(seed + 1)
    jaxnm.nnx.sparsify_model(model, optimizer, grad_sparsity=spec.grad_sparsity, rngs=rngs)
