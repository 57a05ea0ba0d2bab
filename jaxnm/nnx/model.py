"""Turn an NNX model N:M-sparse in place, and export it dense-masked for inference.

One source of truth: the masks live in the :func:`jaxnm.sparsify` state of an
``nnx.Optimizer``. :func:`sparsify_model` hands each sparsified layer the optimizer's own
packed-mask Variable (the same object, not a copy), so ``optimizer.update`` refreshes the
masks the layers read, inside or outside ``nnx.jit``. This relies on NNX graph mode (the
default), which keeps shared Variables shared; pass ``model`` and ``optimizer`` to the same
``nnx.jit`` call.
"""

from __future__ import annotations

from typing import Any, TypeVar

import jax
import jax.numpy as jnp
from flax import nnx

from jaxnm._params import format_path, key_path_names
from jaxnm._state import find_state
from jaxnm.nnx.ops import NMConv, NMDotGeneral, NMEinsum, NMOp, check_einsum_kernel, einsum_plan
from jaxnm.ops import MVUE, check_grad_sparsity
from jaxnm.ops._nm_dot_general import OP_BACKENDS, OpBackend

ModelT = TypeVar("ModelT", bound=nnx.Module)

# layer type -> name of its injectable op attribute, and the op module replacing it.
_OP_ATTRS: tuple[tuple[type, str, type], ...] = (
    (nnx.Linear, "dot_general", NMDotGeneral),
    (nnx.Conv, "conv_general_dilated", NMConv),
    (nnx.Einsum, "einsum_op", NMEinsum),
)


def sparsify_model(
    model: ModelT,
    optimizer: nnx.Optimizer,
    *,
    grad_sparsity: MVUE | None = None,
    rngs: nnx.Rngs | None = None,
    backend: OpBackend = "xla",
) -> ModelT:
    """Routes every sparsified kernel of ``model`` through the N:M training ops, in place.

    The optimizer decides which kernels are sparse (its :func:`jaxnm.sparsify` ``include``)
    and owns their masks; this function links each such ``nnx.Linear``, ``nnx.Conv`` and
    ``nnx.Einsum`` to its mask. Forward: ``kernel ⊙ mask``; input gradient with the same
    (transposed) mask; kernel gradient straight through, from the MVUE-pruned output
    gradient when ``grad_sparsity`` is set. Model code and the train step stay unchanged::

      optimizer = nnx.Optimizer(model, optax.chain(jaxnm.sparsify(2, 4), optax.adamw(1e-3)),
                                wrt=nnx.Param)
      jaxnm.nnx.sparsify_model(model, optimizer, grad_sparsity=jaxnm.MVUE(2, 4),
                               rngs=nnx.Rngs(1))

    Args:
      model: the NNX model the optimizer was built for.
      optimizer: ``nnx.Optimizer`` whose ``tx`` chains :func:`jaxnm.sparsify`.
      grad_sparsity: ``None`` or a :class:`jaxnm.MVUE`, e.g. ``MVUE(2, 4)``.
      rngs: ``nnx.Rngs`` for the MVUE keys (one key per layer call from its default
        stream; shared by all layers); required with ``grad_sparsity``.
      backend: ``"xla"``, or ``"cusparselt"`` (EXPERIMENTAL, unverified on hardware: the
        three GEMMs of every ``nnx.Linear`` on NVIDIA's 2:4 sparse tensor cores, see
        :func:`jaxnm.ops.nm_dot_general`; needs ``sparsify(2, 4, transposable=True)``;
        Conv and Einsum kernels are rejected).

    Returns:
      ``model`` (modified in place).

    Raises:
      ValueError: no sparsify state in the optimizer, ``grad_sparsity`` without ``rngs``, or
        a sparsified parameter that is not the kernel of a supported layer (the message
        names its path; exclude it with ``include``) or an Einsum kernel whose last two
        axes are not (contracted, output).
    """
    check_grad_sparsity(grad_sparsity, needs_key=False)
    if backend not in OP_BACKENDS:
        raise ValueError(f"`backend` (={backend!r}) must be one of {OP_BACKENDS}.")
    if grad_sparsity is not None and rngs is None:
        raise ValueError(f"`grad_sparsity` (={grad_sparsity!r}) needs `rngs` (an nnx.Rngs).")
    state = find_state(optimizer.opt_state)
    nodes = {tuple(path): node for path, node in nnx.iter_graph(model)}
    for path, bits in _mask_variables(state.masks):
        *owner, attr = path
        layer = nodes.get(tuple(owner))
        found = _op_attr(layer) if attr == "kernel" else None
        if found is None:
            raise ValueError(
                f"parameter `{format_path(path)}` is sparsified by the optimizer, but "
                f"jaxnm.nnx only wraps the kernels of nnx.Linear, nnx.Conv and nnx.Einsum "
                f"(got {type(layer).__name__}). Exclude it with `include=` in "
                "jaxnm.sparsify, or mask it yourself with jaxnm.apply_masks."
            )
        name, op_cls = found
        if backend != "xla" and op_cls is not NMDotGeneral:
            raise ValueError(
                f"backend={backend!r} runs nnx.Linear kernels only; `{format_path(path)}` is "
                f"the kernel of a {type(layer).__name__}. Exclude it with `include=` in "
                "jaxnm.sparsify, or use backend='xla'."
            )
        if isinstance(layer, nnx.Einsum) and layer.einsum_str is not None:
            spec = layer.einsum_str
            check_einsum_kernel(spec, einsum_plan(spec, _lhs_rank(spec), len(layer.kernel_shape)))
        current = getattr(layer, name)
        original = current.original if isinstance(current, NMOp) else current
        op = op_cls(
            bits,
            state.m,
            grad_sparsity=grad_sparsity,
            rngs=rngs,
            original=original,
            backend=backend,
        )
        setattr(layer, name, nnx.data(op))
    return model


def export_dense(model: ModelT) -> ModelT:
    """A copy of ``model`` for inference: masked kernels, original Flax ops, no jaxnm state.

    Every layer linked by :func:`sparsify_model` gets ``kernel ← kernel ⊙ mask`` (the
    optimizer's current masks) and its original op back, so the result is a plain Flax
    model with the original graph structure (serialisable and usable without jaxnm).
    ``model`` itself is not modified.

    Args:
      model: a model prepared with :func:`sparsify_model`.

    Returns:
      a new model (``nnx.clone``) with dense, masked kernels.
    """
    model = nnx.clone(model)
    for _, layer in list(nnx.iter_graph(model)):
        found = _op_attr(layer)
        if found is None or not isinstance(getattr(layer, found[0]), NMOp):
            continue
        op = getattr(layer, found[0])
        kernel = layer.kernel[...]
        layer.kernel[...] = jnp.where(op.mask(), kernel, jnp.zeros((), kernel.dtype))
        setattr(layer, found[0], nnx.static(op.original))
    return model


def _op_attr(layer: Any) -> tuple[str, type] | None:
    for layer_type, name, op_cls in _OP_ATTRS:
        if isinstance(layer, layer_type):
            return name, op_cls
    return None


def _mask_variables(masks: Any) -> list[tuple[tuple, nnx.Variable]]:
    flat, _ = jax.tree_util.tree_flatten_with_path(
        masks, is_leaf=lambda x: x is None or isinstance(x, nnx.Variable)
    )
    out = []
    for path, leaf in flat:
        if leaf is None or (isinstance(leaf, nnx.Variable) and leaf.get_value() is None):
            continue
        if not isinstance(leaf, nnx.Variable):
            raise TypeError(
                "`optimizer.opt_state` holds plain arrays, not NNX Variables: pass the "
                "nnx.Optimizer itself."
            )
        out.append((key_path_names(path), leaf))
    return out


def _lhs_rank(einsum_str: str) -> int:
    lhs = einsum_str.replace(" ", "").split(",")[0]
    return len(lhs.replace("...", ""))
