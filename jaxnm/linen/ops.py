"""Linen op modules for the ``dot_general_cls`` / ``conv_general_dilated_cls`` seams.

Flax instantiates them inside ``nn.Dense``, ``nn.DenseGeneral`` and ``nn.Conv`` and calls
them like ``lax.dot_general`` / ``lax.conv_general_dilated``. They look up the mask of
their layer's ``kernel`` in the :data:`MASKS` collection (``variables[MASKS]`` mirrors
``variables["params"]``, see :func:`jaxnm.linen.mask_collection`) and run the N:M
custom_vjp op of :mod:`jaxnm.ops`; a layer without a mask runs the plain op. MVUE keys come
from the ``"mvue"`` RNG stream (``rngs={"mvue": key}`` in ``apply``).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

from jaxnm.ops import MVUE, nm_conv, nm_dot_general

MASKS = "nm_masks"
"""Name of the variable collection holding the masks (bool, of the kernels' shapes)."""

RNG_STREAM = "mvue"
"""Name of the RNG stream of the MVUE keys."""


class _NMOpBase(nn.Module):
    """Reads the parent layer's mask and ``grad_sparsity``.

    Attributes:
      grad_sparsity: overrides the parent layer's ``grad_sparsity`` attribute when set.
    """

    grad_sparsity: MVUE | None = None

    def _mask(self):
        layer = self.parent
        if layer is None or not layer.has_variable(MASKS, "kernel"):
            return None
        return layer.get_variable(MASKS, "kernel")

    def _spec(self) -> MVUE | None:
        if self.grad_sparsity is not None:
            return self.grad_sparsity
        return getattr(self.parent, "grad_sparsity", None)

    def _key(self, spec: MVUE | None):
        if spec is None:
            return None
        if not self.has_rng(RNG_STREAM):
            raise ValueError(
                f"`grad_sparsity` (={spec!r}) needs an RNG stream {RNG_STREAM!r}: pass "
                f"`rngs={{{RNG_STREAM!r}: key}}` to `apply`."
            )
        return self.make_rng(RNG_STREAM)


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
        check_kernel_axes(dimension_numbers, jnp.ndim(rhs), self.parent.name)
        spec = self._spec()
        return nm_dot_general(
            lhs,
            rhs,
            mask,
            dimension_numbers,
            grad_sparsity=spec,
            key=self._key(spec),
            precision=precision,
            preferred_element_type=preferred_element_type,
        )


class NMConvGeneralDilated(_NMOpBase):
    """``conv_general_dilated_cls`` for ``nn.Conv`` (HWIO kernel as ``rhs``); takes the
    arguments of ``lax.conv_general_dilated`` as Flax passes them."""

    def __call__(self, lhs, rhs, *args, **kwargs):
        mask = self._mask()
        if mask is None:
            return lax.conv_general_dilated(lhs, rhs, *args, **kwargs)
        spec = self._spec()
        return nm_conv(lhs, rhs, mask, *args, grad_sparsity=spec, key=self._key(spec), **kwargs)


def check_kernel_axes(dimension_numbers, rhs_ndim: int, layer: str | None) -> None:
    """N:M groups run along the kernel's axis -2, which must be contracted; axis -1 must be
    an output axis (so the transposed mask serves the input gradient).

    Raises:
      ValueError: otherwise, naming the layer.
    """
    (_, rhs_contract), (_, rhs_batch) = dimension_numbers
    rhs_contract = {a % rhs_ndim for a in rhs_contract}
    rhs_batch = {a % rhs_ndim for a in rhs_batch}
    rows, cols = rhs_ndim - 2, rhs_ndim - 1
    if rows in rhs_contract and cols not in rhs_contract and cols not in rhs_batch:
        return
    raise ValueError(
        f"layer `{layer}`: the kernel's last two axes must be (contracted, output) for N:M "
        f"masks along axis -2, got contracting axes {sorted(rhs_contract)} of a rank-{rhs_ndim} "
        "kernel; exclude it with `include` in jaxnm.sparsify."
    )
