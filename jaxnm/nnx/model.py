"""Turn an NNX model N:M-sparse in place, keep its masks current, export it for inference.

The optimizer owns the masks: they live in the :func:`jaxnm.sparsify` state of a
:class:`Optimizer` (an ``nnx.Optimizer``). :func:`sparsify_model` gives every sparsified
layer an N:M op holding its own copy of the mask (an :class:`~jaxnm.nnx.NMMask` Variable)
and its own MVUE key stream; :meth:`Optimizer.update` writes each refreshed mask into the
layers of the model it updates. No Variable is shared between layers or with the
optimizer, so the model works in NNX graph and tree mode (``nnx.jit(..., graph=False)``),
with ``nnx.split``/``merge``, ``nnx.clone``, ``nnx.view`` and orbax.
"""

from __future__ import annotations

from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxnm._params import KERNEL_VIEW, KernelView, Path, format_path, key_path_names
from jaxnm._state import sparse_leaves, unpack_leaf, variable_value
from jaxnm._summary import SparsitySummary, SummaryRow
from jaxnm.nnx.ops import NMConv, NMDotGeneral, NMEinsum, NMOp, check_einsum_kernel, einsum_plan
from jaxnm.ops import MVUE, OP_BACKENDS, OpBackend, check_grad_sparsity

ModelT = TypeVar("ModelT", bound=nnx.Module)

# layer type -> name of its injectable op attribute, and the op module replacing it.
_OP_ATTRS: tuple[tuple[type, str, type], ...] = (
    (nnx.Linear, "dot_general", NMDotGeneral),
    (nnx.LinearGeneral, "dot_general", NMDotGeneral),
    (nnx.Conv, "conv_general_dilated", NMConv),
    (nnx.Einsum, "einsum_op", NMEinsum),
)


class Optimizer(nnx.Optimizer):
    """``nnx.Optimizer`` whose :meth:`update` also writes the refreshed masks of its
    :func:`jaxnm.sparsify` state into the layers prepared by :func:`sparsify_model`.

    Constructed exactly like ``nnx.Optimizer``::

      optimizer = jaxnm.nnx.Optimizer(model, optax.chain(jaxnm.sparsify(2, 4), optax.adam(1e-3)),
                                      wrt=nnx.Param)
    """

    def __init__(self, model, tx, *args, **kwargs):
        """``nnx.Optimizer(model, tx, ...)``; first tags every ``nnx.LinearGeneral`` kernel of
        ``model`` with its :class:`jaxnm.KernelView` (metadata :data:`jaxnm.KERNEL_VIEW`), so
        that :func:`jaxnm.sparsify`'s default selection masks it on its flattened ``(in,
        out)`` view (e.g. the ``(in, heads, head_dim)`` projections of
        ``nnx.MultiHeadAttention``)."""
        tag_kernel_views(model)
        super().__init__(model, tx, *args, **kwargs)

    def update(self, model, grads, /, **kwargs):
        """``nnx.Optimizer.update``, then every sparsified layer of ``model`` gets its new
        mask. Works eagerly and under ``nnx.jit`` in graph or tree mode.

        Raises:
          ValueError: a sparsified kernel of ``model`` has no N:M op (``model`` was not
            prepared by :func:`sparsify_model`, or is a view/clone made before it).
        """
        updates = super().update(model, grads, **kwargs)
        for path, bits, _ in sparse_leaves(self.opt_state):
            _op_of(model, path, "update").bits[...] = jnp.asarray(variable_value(bits))
        return updates


def tag_kernel_views(model: nnx.Module) -> None:
    """Sets the :data:`jaxnm.KERNEL_VIEW` metadata of every ``nnx.LinearGeneral`` kernel of
    ``model`` without batch axes: its leading ``len(in_features)`` axes are contracted
    (:class:`jaxnm.KernelView`). Called by :class:`Optimizer`; a kernel that already has
    the metadata keeps it."""
    for _, module in nnx.iter_modules(model):
        if not isinstance(module, nnx.LinearGeneral) or module.batch_axis:
            continue
        if not module.kernel.has_metadata(KERNEL_VIEW):
            module.kernel.set_metadata(KERNEL_VIEW, KernelView(len(module.in_features)))


def sparsify_model(
    model: ModelT,
    optimizer: Optimizer,
    *,
    grad_sparsity: MVUE | None = None,
    rngs: nnx.Rngs | None = None,
    backend: OpBackend = "xla",
) -> ModelT:
    """Routes every sparsified kernel of ``model`` through the N:M training ops, in place.

    The optimizer decides which kernels are sparse (its :func:`jaxnm.sparsify` ``include``)
    and owns their masks; this function gives each such ``nnx.Linear``, ``nnx.Conv`` and
    ``nnx.Einsum`` an op holding a copy of its mask, which :meth:`Optimizer.update` keeps
    current. Forward: ``kernel ⊙ mask``; input gradient with the same (transposed) mask;
    kernel gradient straight through, from the MVUE-pruned output gradient when
    ``grad_sparsity`` is set. Model code and the train step stay unchanged::

      optimizer = jaxnm.nnx.Optimizer(
          model, optax.chain(jaxnm.sparsify(2, 4), optax.adamw(1e-3)), wrt=nnx.Param)
      jaxnm.nnx.sparsify_model(model, optimizer, grad_sparsity=jaxnm.MVUE(2, 4),
                               rngs=nnx.Rngs(1))

    Make ``nnx.view``\\ s of the model *after* this call: each sparsified layer gets a new
    kernel Variable (same value and metadata; references to it inside ``model`` are
    updated), and reading the old one — from a view or clone made before — raises.

    Args:
      model: the NNX model the optimizer was built for.
      optimizer: the :class:`Optimizer` built for ``model`` whose ``tx`` contains
        :func:`jaxnm.sparsify` (one or more parameter groups).
      grad_sparsity: ``None`` or a :class:`jaxnm.MVUE`, e.g. ``MVUE(2, 4)``.
      rngs: ``nnx.Rngs`` seeding the MVUE keys; every layer draws its own key stream from
        it once, here. Required with ``grad_sparsity``.
      backend: ``"xla"``, or ``"cusparselt"`` (EXPERIMENTAL, unverified on hardware: the
        three GEMMs of every ``nnx.Linear`` on NVIDIA's 2:4 sparse tensor cores, see
        :func:`jaxnm.ops.nm_dot_general`; needs ``sparsify(2, 4, transposable=True)``;
        Conv and Einsum kernels are rejected).

    Returns:
      ``model`` (modified in place).

    Raises:
      TypeError: ``optimizer`` is not a :class:`Optimizer` (e.g. None, or a plain
        ``nnx.Optimizer``, whose update could not refresh the layers' masks).
      ValueError: no sparsify state, ``grad_sparsity`` without ``rngs``, an optimizer built
        for a model of another structure, or a sparsified parameter that is not the kernel
        of a supported layer (the message names its path; exclude it with ``include``) or
        an Einsum kernel whose last two axes are not (contracted, output).
    """
    if not isinstance(optimizer, Optimizer):
        raise TypeError(
            "`optimizer` must be the jaxnm.nnx.Optimizer built for `model` (create it first: "
            "`optimizer = jaxnm.nnx.Optimizer(model, tx, wrt=nnx.Param)`), got "
            f"{type(optimizer).__name__}. A plain nnx.Optimizer cannot refresh the masks the "
            "layers read."
        )
    check_grad_sparsity(grad_sparsity, needs_key=False)
    if backend not in OP_BACKENDS:
        raise ValueError(f"`backend` (={backend!r}) must be one of {OP_BACKENDS}.")
    if grad_sparsity is not None and rngs is None:
        raise ValueError(f"`grad_sparsity` (={grad_sparsity!r}) needs `rngs` (an nnx.Rngs).")
    _check_same_params(model, optimizer)
    nodes = {tuple(path): node for path, node in nnx.iter_graph(model)}
    for path, bits, state in sparse_leaves(optimizer.opt_state):
        *owner, attr = path
        layer = nodes.get(tuple(owner))
        found = _op_attr(layer) if attr == "kernel" else None
        if found is None:
            raise ValueError(
                f"parameter `{format_path(path)}` (path {path!r}) is sparsified by the "
                "optimizer, but jaxnm.nnx only wraps the kernels of nnx.Linear, "
                f"nnx.LinearGeneral, nnx.Conv and nnx.Einsum (got {type(layer).__name__}). "
                "Exclude it with `include=` in jaxnm.sparsify, or mask it yourself with "
                "jaxnm.apply_masks."
            )
        name, op_cls = found
        if backend != "xla" and op_cls is not NMDotGeneral:
            raise ValueError(
                f"backend={backend!r} runs nnx.Linear kernels only; `{format_path(path)}` is "
                f"the kernel of a {type(layer).__name__}. Exclude it with `include=` in "
                "jaxnm.sparsify, or use backend='xla'."
            )
        if isinstance(layer, nnx.LinearGeneral) and (
            layer.dot_general_cls is not None or layer.batch_axis
        ):
            raise ValueError(
                f"`{format_path(path)}` is the kernel of an nnx.LinearGeneral with "
                + ("batch axes" if layer.batch_axis else "a `dot_general_cls`")
                + ", which jaxnm.nnx cannot route through the N:M op. Exclude it with "
                "`include=` in jaxnm.sparsify."
            )
        if isinstance(layer, nnx.Einsum) and layer.einsum_str is not None:
            spec = layer.einsum_str
            check_einsum_kernel(spec, einsum_plan(spec, _lhs_rank(spec), len(layer.kernel_shape)))
        current = getattr(layer, name)
        original = current.original if isinstance(current, NMOp) else current
        if not isinstance(current, NMOp):
            _renew_kernel(model, nodes, layer, path)
        op = op_cls(
            jnp.asarray(variable_value(bits)),
            state.n,
            state.m,
            transposable=state.transposable,
            grad_sparsity=grad_sparsity,
            rngs=None if grad_sparsity is None else nnx.Rngs(rngs()),
            original=original,
            backend=backend,
            shape=state.kernel_shape(path),
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


def sparsity_summary(model: nnx.Module) -> SparsitySummary:
    """:func:`jaxnm.sparsity_summary` of an NNX model prepared by :func:`sparsify_model`:
    one row per ``nnx.Param``, the sparse kernels with the ``n:m`` and current density of
    their layer's mask.

    Args:
      model: the model (its layers hold the masks).

    Returns:
      a :class:`jaxnm.SparsitySummary` (``print`` it for a table).
    """
    sparse, dense = {}, []
    for path, layer in nnx.iter_graph(model):
        found = _op_attr(layer)
        op = getattr(layer, found[0]) if found is not None else None
        if isinstance(op, NMOp):
            mask = np.asarray(op.mask())
            sparse[tuple(path) + ("kernel",)] = SummaryRow(
                tuple(path) + ("kernel",),
                mask.shape,
                op.n,
                op.m,
                op.transposable,
                float(mask.mean()),
            )
    flat, _ = jax.tree_util.tree_flatten_with_path(nnx.state(model, nnx.Param))
    for path, leaf in flat:
        names = key_path_names(path)
        if names not in sparse:
            reason = "not selected by the optimizer's `include`"
            dense.append(SummaryRow(names, tuple(np.shape(leaf)), None, None, None, 1.0, reason))
    return SparsitySummary(tuple(sparse.values()) + tuple(dense))


class _MovedKernel:
    """The value left in a kernel Variable that :func:`sparsify_model` replaced: any use of it
    (from an ``nnx.view`` or clone made before the call) raises instead of running dense."""

    def __init__(self, path: Path):
        self.path = path

    def _fail(self, *args, **kwargs):
        raise ValueError(
            f"kernel `{format_path(self.path)}` was moved by jaxnm.nnx.sparsify_model: this "
            "module is an nnx.view (or clone) made before sparsify_model and would run dense. "
            "Make views after sparsify_model, e.g. "
            "`train_model = nnx.view(model, use_running_average=False)`."
        )

    __getitem__ = __array__ = __jax_array__ = _fail

    @property
    def shape(self):
        self._fail()

    @property
    def dtype(self):
        self._fail()


jax.tree_util.register_pytree_node(
    _MovedKernel, lambda x: ((), x.path), lambda path, _: _MovedKernel(path)
)


def _renew_kernel(model: nnx.Module, nodes: dict, layer: nnx.Module, path: Path) -> None:
    """Gives ``layer`` (and every other holder inside ``model``) a new kernel Variable and
    poisons the old one, so that views made earlier fail loudly instead of running dense."""
    old = layer.kernel
    new = old.copy()
    for node in nodes.values():
        if isinstance(node, nnx.Module):
            for attr, value in list(vars(node).items()):
                if value is old:
                    setattr(node, attr, new)
    old.set_value(_MovedKernel(path))


def _op_of(model: nnx.Module, path: Path, where: str) -> NMOp:
    node = model
    for key in path[:-1]:
        node = node[key] if isinstance(key, int) or not hasattr(node, key) else getattr(node, key)
    found = _op_attr(node)
    op = getattr(node, found[0]) if found is not None else None
    if not isinstance(op, NMOp):
        raise ValueError(
            f"`model` passed to {where} has no N:M op for the sparsified kernel "
            f"`{format_path(path)}`: prepare it with jaxnm.nnx.sparsify_model(model, optimizer) "
            "and make nnx.view/nnx.clone copies after that call."
        )
    return op


def _check_same_params(model: nnx.Module, optimizer: Optimizer) -> None:
    """The optimizer's sparsify state must mirror ``model``'s ``wrt`` params."""
    params = {
        key_path_names(p): tuple(np.shape(x))
        for p, x in jax.tree_util.tree_flatten_with_path(nnx.state(model, optimizer.wrt))[0]
    }
    for path, bits, state in sparse_leaves(optimizer.opt_state):
        shape = tuple(np.shape(unpack_leaf(bits, state, path)))
        if params.get(path) != shape:
            raise ValueError(
                f"the optimizer sparsifies `{format_path(path)}` with shape {shape}, but `model` "
                f"has {params.get(path, 'no such parameter')}: pass the optimizer built for "
                "this model."
            )


def _op_attr(layer: Any) -> tuple[str, type] | None:
    for layer_type, name, op_cls in _OP_ATTRS:
        if isinstance(layer, layer_type):
            return name, op_cls
    return None


def _lhs_rank(einsum_str: str) -> int:
    lhs = einsum_str.replace(" ", "").split(",")[0]
    return len(lhs.replace("...", ""))
