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

from jaxnm._params import Include, Path, default_include
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
      predicate ``(path, leaf) -> bool``: True for the ``kernel`` of every
      :class:`jaxnm.linen.Dense`, ``DenseGeneral`` and ``Conv`` (or any Flax layer whose
      ``dot_general_cls`` / ``conv_general_dilated_cls`` is a jaxnm op) that tiles by ``m``
      (the default rule); False for plain Flax layers (they stay dense).

    Example::

      tx = optax.chain(jaxnm.sparsify(2, 4, include=jaxnm.linen.include(model, x, m=4)), ...)
    """
    paths: set[Path] = set()

    def record(next_fun, fn_args, fn_kwargs, context):
        module = context.module
        op = getattr(module, "dot_general_cls", None) or getattr(
            module, "conv_general_dilated_cls", None
        )
        if isinstance(op, type) and issubclass(op, (NMDotGeneral, NMConvGeneralDilated)):
            paths.add(tuple(module.path) + ("kernel",))
        return next_fun(*fn_args, **fn_kwargs)

    with nn.intercept_methods(record):
        jax.eval_shape(lambda *a: model.init(jax.random.key(0), *a), *args)
    tiles = default_include(m, transposable)

    def select(path: Path, leaf) -> bool:
        return tuple(path) in paths and tiles(path, leaf)

    return select
