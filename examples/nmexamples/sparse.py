"""How the examples turn the training flags into jaxnm calls.

``--sparsity 2:4|4:8`` and ``--transposable`` select ``jaxnm.sparsify(n, m, transposable=...)``,
chained first in front of AdamW; the forward pass uses the effective weights
``jaxnm.apply_masks(params, jaxnm.masks(opt_state))`` (straight-through to the dense params).
``--grad-sparsity mvue_1_2|mvue_2_4`` additionally routes the sparsified layers through
``jaxnm.nnx.sparsify_model`` so that their weight gradients use MVUE-pruned neural gradients.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import optax
from flax import nnx

import jaxnm

SPARSITIES = {"dense": None, "2:4": (2, 4), "4:8": (4, 8)}
GRAD_SPARSITIES = ("none", "mvue_1_2", "mvue_2_4")


class SparseSpec(NamedTuple):
    """The sparsity of a run.

    Attributes:
      n: weights kept per group.
      m: group size.
      transposable: transposable N:M masks.
      grad_sparsity: ``None``, ``"mvue_1_2"`` or ``"mvue_2_4"``.
    """

    n: int
    m: int
    transposable: bool
    grad_sparsity: str | None


def spec_from_config(cfg) -> SparseSpec | None:
    """The :class:`SparseSpec` of a ``TrainConfig`` (``None`` for a dense run)."""
    if cfg.sparsity not in SPARSITIES:
        raise ValueError(f"`sparsity` (={cfg.sparsity!r}) must be one of {sorted(SPARSITIES)}.")
    if cfg.grad_sparsity not in GRAD_SPARSITIES:
        raise ValueError(
            f"`grad_sparsity` (={cfg.grad_sparsity!r}) must be one of {list(GRAD_SPARSITIES)}."
        )
    nm = SPARSITIES[cfg.sparsity]
    if nm is None:
        if cfg.transposable or cfg.grad_sparsity != "none":
            raise ValueError(
                "`transposable` and `grad_sparsity` need a sparse run (--sparsity 2:4 or 4:8), "
                f"got sparsity={cfg.sparsity!r}, transposable={cfg.transposable}, "
                f"grad_sparsity={cfg.grad_sparsity!r}."
            )
        return None
    grad = None if cfg.grad_sparsity == "none" else cfg.grad_sparsity
    return SparseSpec(n=nm[0], m=nm[1], transposable=cfg.transposable, grad_sparsity=grad)


def chain(
    spec: SparseSpec | None, optimizer: optax.GradientTransformation, *, refresh_every: int
) -> optax.GradientTransformation:
    """``optax.chain(jaxnm.sparsify(...), optimizer)``, or ``optimizer`` for dense runs."""
    if spec is None:
        return optimizer
    return optax.chain(
        jaxnm.sparsify(spec.n, spec.m, transposable=spec.transposable, refresh_every=refresh_every),
        optimizer,
    )


def effective_params(spec: SparseSpec | None) -> Callable[[Any, Any], Any]:
    """``fn(params, opt_state)`` giving the weights of the forward pass."""
    if spec is None:
        return lambda params, opt_state: params
    return lambda params, opt_state: jaxnm.apply_masks(params, jaxnm.masks(opt_state))


def sparsify_model(model: nnx.Module, spec: SparseSpec | None, *, seed: int) -> nnx.Module:
    """Routes the layers through jaxnm's N:M ops when gradients are pruned; else unchanged."""
    if spec is None or spec.grad_sparsity is None:
        return model
    raise NotImplementedError("grad sparsity needs jaxnm.nnx.sparsify_model")
