"""Linen op modules for the ``dot_general_cls`` / ``conv_general_dilated_cls`` seams.

Flax instantiates them inside ``nn.Dense``, ``nn.DenseGeneral`` and ``nn.Conv`` and calls
them like ``lax.dot_general`` / ``lax.conv_general_dilated``. They look up the mask of
their layer's ``kernel`` in the :data:`MASKS` collection (``variables[MASKS]`` mirrors
``variables["params"]``, see :func:`jaxnm.linen.variables`) and run the N:M
custom_vjp op of :mod:`jaxnm.ops`. Every layer must find its entry there: a mask, or
:data:`DENSE` for a kernel the optimizer left dense (:func:`jaxnm.linen.variables` writes
both); a missing collection or entry raises (only ``init`` runs without masks). MVUE keys come from
the ``"mvue"`` RNG stream (``rngs={"mvue": key}`` in ``apply``); without the stream the
forward pass (inference) runs and a gradient through it raises.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxnm.ops import MVUE, nm_conv, nm_dot_general

MASKS = "nm_masks"
"""Name of the variable collection holding the masks (bool, of the kernels' shapes)."""

RNG_STREAM = "mvue"
"""Name of the RNG stream of the MVUE keys."""

DENSE = np.zeros((), bool)
"""The :data:`MASKS` entry of a kernel that the optimizer leaves dense (a 0-d False)."""

VIEW = "kernel_view"
"""The :data:`MASKS` entry beside ``kernel`` of a kernel whose mask is N:M on its flattened
``(in, out)`` view (a ``DenseGeneral`` kernel selected with a :class:`jaxnm.KernelView`):
a bool array of shape ``(in_axes,)`` (only its shape is read), written by
:func:`jaxnm.linen.variables`."""


class _NMOpBase(nn.Module):
    """Reads the parent layer's mask and ``grad_sparsity``.

    Attributes:
      grad_sparsity: overrides the parent layer's ``grad_sparsity`` attribute when set.
    """

    grad_sparsity: MVUE | None = None

    def _mask(self):
        """The layer's mask, or None to run dense (``init``, or a :data:`DENSE` entry)."""
        layer = self.parent
        if layer is None or self.is_initializing():
            return None
        if not layer.has_variable(MASKS, "kernel"):
            if MASKS not in layer.scope.root.variables():
                missing = f"no {MASKS!r} collection was passed to `apply`"
            else:
                missing = f"the {MASKS!r} collection has no entry for it (path mismatch)"
            raise ValueError(
                f"jaxnm.linen layer `{'/'.join(layer.scope.path)}`: {missing}. Pass "
                "`jaxnm.linen.variables(params, opt_state)` as the variables of `apply`, with "
                "the params the optimizer updates."
            )
        mask = layer.get_variable(MASKS, "kernel")
        return None if jnp.ndim(mask) == 0 else mask

    def _spec(self) -> MVUE | None:
        if self.grad_sparsity is not None:
            return self.grad_sparsity
        return getattr(self.parent, "grad_sparsity", None)

    def _run(self, op: Callable, spec: MVUE | None, lhs, rhs):
        """``op(lhs, rhs, grad_sparsity, key)``; without the MVUE stream the forward runs
        and only a gradient raises (MVUE acts in the backward pass alone)."""
        if spec is None:
            return op(lhs, rhs, None, None)
        if self.has_rng(RNG_STREAM):
            return op(lhs, rhs, spec, self.make_rng(RNG_STREAM))
        message = (
            f"`grad_sparsity` (={spec!r}) needs an RNG stream {RNG_STREAM!r} for the gradient: "
            f"pass `rngs={{{RNG_STREAM!r}: key}}` to `apply`."
        )
        return _forward_only(lambda a, b: op(a, b, None, None), message)(lhs, rhs)


class NMDotGeneral(_NMOpBase):
    """``dot_general_cls`` for ``nn.Dense`` / ``nn.DenseGeneral``: the kernel is ``rhs``; its
    axis ``-2`` must be contracted and axis ``-1`` an output axis."""

    def __call__(self, lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
        mask = self._mask()
        if mask is None:
            return lax.dot_general(
                lhs,
                rhs,
                dimension_numbers,
                precision,
                preferred_element_type=preferred_element_type,
            )
        view = (
            self.parent.get_variable(MASKS, VIEW) if self.parent.has_variable(MASKS, VIEW) else None
        )
        in_axes = None if view is None else int(np.shape(view)[0])
        check_kernel_axes(dimension_numbers, jnp.ndim(rhs), self.parent.name, in_axes)

        def op(a, b, spec, key):
            return nm_dot_general(
                a,
                b,
                mask,
                dimension_numbers,
                grad_sparsity=spec,
                key=key,
                precision=precision,
                preferred_element_type=preferred_element_type,
            )

        return self._run(op, self._spec(), lhs, rhs)


class NMConvGeneralDilated(_NMOpBase):
    """``conv_general_dilated_cls`` for ``nn.Conv`` (HWIO kernel as ``rhs``); takes the
    arguments of ``lax.conv_general_dilated`` as Flax passes them."""

    def __call__(self, lhs, rhs, *args, **kwargs):
        mask = self._mask()
        if mask is None:
            return lax.conv_general_dilated(lhs, rhs, *args, **kwargs)

        def op(a, b, spec, key):
            return nm_conv(a, b, mask, *args, grad_sparsity=spec, key=key, **kwargs)

        return self._run(op, self._spec(), lhs, rhs)


def _forward_only(fn: Callable, message: str) -> Callable:
    """``fn(lhs, rhs)`` whose gradient raises ``ValueError(message)`` when traced."""

    @jax.custom_vjp
    def f(lhs, rhs):
        return fn(lhs, rhs)

    def fwd(lhs, rhs):
        return fn(lhs, rhs), None

    def bwd(_, g):
        raise ValueError(message)

    f.defvjp(fwd, bwd)
    return f


def check_kernel_axes(
    dimension_numbers, rhs_ndim: int, layer: str | None, in_axes: int | None = None
) -> None:
    """The kernel's mask must be N:M along its contraction, with the output axes free (so
    the transposed mask serves the input gradient): with ``in_axes`` (a flattened-view mask,
    :data:`VIEW`) the contracted axes are exactly the leading ``in_axes`` ones and there
    are no batch axes; otherwise axis -2 is contracted and axis -1 is an output axis.

    Raises:
      ValueError: otherwise, naming the layer.
    """
    (_, rhs_contract), (_, rhs_batch) = dimension_numbers
    rhs_contract = {a % rhs_ndim for a in rhs_contract}
    rhs_batch = {a % rhs_ndim for a in rhs_batch}
    if in_axes is not None:
        if rhs_contract == set(range(in_axes)) and not rhs_batch:
            return
        raise ValueError(
            f"layer `{layer}`: its mask is N:M on the flattened view of a kernel whose leading "
            f"{in_axes} axes are contracted, but the layer contracts axes "
            f"{sorted(rhs_contract)} (batch axes {sorted(rhs_batch)}) of its rank-{rhs_ndim} "
            "kernel."
        )
    rows, cols = rhs_ndim - 2, rhs_ndim - 1
    if rows in rhs_contract and cols not in rhs_contract and cols not in rhs_batch:
        return
    raise ValueError(
        f"layer `{layer}`: the kernel's last two axes must be (contracted, output) for N:M "
        f"masks along axis -2, got contracting axes {sorted(rhs_contract)} of a rank-{rhs_ndim} "
        "kernel; exclude it with `include` in jaxnm.sparsify, or select it with "
        "`jaxnm.linen.include(model, x, m=...)`, which masks DenseGeneral kernels on their "
        "flattened (in, out) view."
    )
