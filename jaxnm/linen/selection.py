"""Selecting exactly the kernels of a Linen model that run an N:M op: :func:`include`.

The default selection of :func:`jaxnm.sparsify` sees only the params pytree, in which a plain
``nn.Dense`` kernel looks like a :class:`jaxnm.linen.Dense` one, so it sparsifies both; with
:func:`jaxnm.linen.variables` the plain layer then trains on its masked kernel (N:M forward
and input gradient, no MVUE). To keep the plain layers dense instead, select with
:func:`include`: it traces the model's ``init`` abstractly (``jax.eval_shape``: no compute, no
memory) and selects only the kernels of layers whose op seam is jaxnm's.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax

from jaxnm._params import Include, KernelView, Path, default_skip_reason
from jaxnm.linen.ops import NMConvGeneralDilated, NMDotGeneral


def include(model: nn.Module, *args: Any, m: int, transposable: bool = True) -> Include:
    """An ``include`` for :func:`jaxnm.sparsify` selecting the kernels of ``model``'s N:M layers.

    Args:
      model: the Linen model.
      *args: sample inputs of ``model.init`` (arrays or ``jax.ShapeDtypeStruct``; only their
        shapes and dtypes are used).
      m: the group size of the ``sparsify`` it is passed to.
      transposable: as in ``sparsify``.

    Returns:
      predicate ``(path, leaf) -> bool | KernelView``: True for the ``kernel`` of every
      :class:`jaxnm.linen.Dense`, ``DenseGeneral`` and ``Conv`` (or any Flax layer whose
      ``dot_general_cls`` / ``conv_general_dilated_cls`` is a jaxnm op, e.g.
      ``nn.MultiHeadDotProductAttention(qkv_dot_general_cls=jaxnm.linen.NMDotGeneral,
      out_dot_general_cls=jaxnm.linen.NMDotGeneral)``) that tiles by ``m`` (the default
      rule), a :class:`jaxnm.KernelView` for a ``DenseGeneral`` kernel of rank > 2 (masked on
      its flattened ``(in, out)`` view); False for plain Flax layers (they stay dense).

    Example::

      tx = optax.chain(jaxnm.sparsify(2, 4, include=jaxnm.linen.include(model, x, m=4)), ...)
    """
    paths: dict[Path, KernelView | None] = {}

    def record(next_fun, fn_args, fn_kwargs, context):
        module = context.module
        op = getattr(module, "dot_general_cls", None) or getattr(
            module, "conv_general_dilated_cls", None
        )
        if isinstance(op, type) and issubclass(op, (NMDotGeneral, NMConvGeneralDilated)):
            paths[tuple(module.path) + ("kernel",)] = _view(module)
        return next_fun(*fn_args, **fn_kwargs)

    with nn.intercept_methods(record):
        jax.eval_shape(lambda *a: model.init(jax.random.key(0), *a), *args)

    def select(path: Path, leaf) -> bool | KernelView:
        path = tuple(path)
        if path not in paths:
            return False
        view = paths[path]
        if default_skip_reason(path, leaf, m, transposable, view) is not None:
            return False
        return view or True

    return select


def _view(module: nn.Module) -> KernelView | None:
    """The flattened view of a ``DenseGeneral`` kernel of rank > 2 (no batch axes)."""
    if not isinstance(module, nn.DenseGeneral) or module.batch_dims:
        return None
    axis = module.axis if isinstance(module.axis, tuple | list) else (module.axis,)
    features = module.features if isinstance(module.features, tuple | list) else (module.features,)
    if len(axis) + len(features) <= 2:
        return None
    return KernelView(len(axis))
