"""NNX modules that stand in for the GEMM of ``nnx.Linear``, ``nnx.Conv`` and ``nnx.Einsum``.

Each op module replaces the layer's injectable op attribute (``dot_general``,
``conv_general_dilated``, ``einsum_op``) and runs the N:M custom_vjp op of :mod:`jaxnm.ops`:
forward with ``kernel ⊙ mask``, input gradient with the same (transposed) mask, kernel
gradient straight through, optionally from an MVUE-pruned output gradient. Each op holds
its layer's packed mask in its own :class:`NMMask` Variable (no Variable is shared with the
optimizer or another layer, so NNX graph and tree mode both work) and its own MVUE key
stream; :meth:`jaxnm.nnx.Optimizer.update` writes every refreshed mask into it.
"""

from __future__ import annotations

import string
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from jaxnm.masks.packing import unpack
from jaxnm.ops import MVUE, OpBackend, nm_conv, nm_dot_general


class NMMask(nnx.Variable):
    """The packed N:M mask of one kernel: ``(..., R // m, C)`` unsigned words (groups of
    ``m`` along the kernel's axis ``-2``, or along the contraction of its flattened ``(in,
    out)`` view, see :mod:`jaxnm.masks.packing` and :class:`jaxnm.KernelView`). Not a ``Param``:
    ``nnx.grad`` and the optimizer's ``wrt=nnx.Param`` leave it alone; filter it with
    ``jaxnm.nnx.NMMask``."""


class NMOp(nnx.Module):
    """Common state of the op modules.

    Attributes:
      bits: :class:`NMMask` of the layer's kernel, written by
        :meth:`jaxnm.nnx.Optimizer.update`.
      n: kept per group (static).
      m: group size (static).
      transposable: whether the mask is transposable N:M (static).
      grad_sparsity: ``None`` or a :class:`jaxnm.MVUE` (see :func:`jaxnm.ops.nm_dot_general`).
      rngs: this layer's own ``nnx.Rngs``, one key per call from its default stream (None
        when ``grad_sparsity`` is None).
      original: the op the layer had before (static), restored by
        :func:`jaxnm.nnx.export_dense`.
      backend: the GEMM backend of :func:`jaxnm.ops.nm_dot_general` (static; ``"xla"``, or
        the experimental ``"cusparselt"`` for Linear kernels).
      shape: the kernel's shape (static), when ``bits`` pack a flattened view of it
        (``LinearGeneral`` kernels of rank > 2, see :class:`jaxnm.KernelView`).
    """

    def __init__(
        self,
        bits: jax.Array,
        n: int,
        m: int,
        *,
        transposable: bool,
        grad_sparsity: MVUE | None,
        rngs: nnx.Rngs | None,
        original: Callable[..., Any],
        backend: OpBackend = "xla",
        shape: tuple[int, ...] | None = None,
    ):
        self.bits = NMMask(bits)
        self.shape = None if shape is None else tuple(shape)
        self.n = n
        self.backend = backend
        self.m = m
        self.transposable = transposable
        self.grad_sparsity = grad_sparsity
        self.rngs = rngs
        self.original = original

    def mask(self) -> jax.Array:
        """The current bool mask, of the kernel's shape."""
        mask = unpack(self.bits[...], self.m)
        return mask if self.shape is None else mask.reshape(self.shape)

    def key(self) -> jax.Array | None:
        return None if self.grad_sparsity is None else self.rngs()


class NMDotGeneral(NMOp):
    """``dot_general`` of ``nnx.Linear`` (the kernel is ``rhs``)."""

    def __call__(
        self,
        lhs,
        rhs,
        dimension_numbers,
        precision=None,
        preferred_element_type=None,
        out_sharding=None,
    ):
        return nm_dot_general(
            lhs,
            rhs,
            self.mask(),
            dimension_numbers,
            grad_sparsity=self.grad_sparsity,
            key=self.key(),
            precision=precision,
            preferred_element_type=preferred_element_type,
            out_sharding=out_sharding,
            backend=self.backend,
        )


class NMConv(NMOp):
    """``conv_general_dilated`` of ``nnx.Conv`` (HWIO kernel as ``rhs``); takes the arguments
    of ``lax.conv_general_dilated`` as Flax passes them (see
    :func:`jaxnm.ops.nm_conv`)."""

    def __call__(self, lhs, rhs, *args, **kwargs):
        return nm_conv(
            lhs, rhs, self.mask(), *args, grad_sparsity=self.grad_sparsity, key=self.key(), **kwargs
        )


class NMEinsum(NMOp):
    """``einsum_op`` of ``nnx.Einsum``: a two-operand einsum as one N:M ``dot_general``."""

    def __call__(
        self,
        einsum_str,
        lhs,
        rhs,
        precision=None,
        preferred_element_type=None,
        out_sharding=None,
    ):
        plan = einsum_plan(einsum_str, jnp.ndim(lhs), jnp.ndim(rhs))
        check_einsum_kernel(einsum_str, plan)
        y = nm_dot_general(
            lhs,
            rhs,
            self.mask(),
            plan.dimension_numbers,
            grad_sparsity=self.grad_sparsity,
            key=self.key(),
            precision=precision,
            preferred_element_type=preferred_element_type,
            out_sharding=out_sharding,
            backend=self.backend,
        )
        return jnp.transpose(y, plan.out_perm)


class EinsumPlan(NamedTuple):
    """How a two-operand einsum maps onto ``lax.dot_general``."""

    lhs: str  # subscripts with the ellipsis expanded
    rhs: str
    out: str
    dimension_numbers: tuple  # ((lhs_contract, rhs_contract), (lhs_batch, rhs_batch))
    out_perm: tuple[int, ...]  # dot_general order (batch, lhs free, rhs free) -> out


def einsum_plan(einsum_str: str, lhs_ndim: int, rhs_ndim: int) -> EinsumPlan:
    """Parses ``"lhs,rhs->out"`` (one ellipsis allowed in ``lhs`` and ``out``).

    Raises:
      ValueError: not two operands with an explicit output, an ellipsis in the kernel, a
        rank that does not match, or an index summed within one operand.
    """
    spec = einsum_str.replace(" ", "")
    if spec.count(",") != 1 or "->" not in spec:
        raise ValueError(
            f"`einsum_str` (={einsum_str!r}) must have two operands and an explicit output."
        )
    ins, out = spec.split("->")
    lhs, rhs = ins.split(",")
    if "..." in rhs:
        raise ValueError(f"`einsum_str` (={einsum_str!r}): no ellipsis in the kernel operand.")
    if "..." in lhs:
        free = [c for c in string.ascii_letters if c not in spec]
        fill = "".join(free[: lhs_ndim - (len(lhs) - 3)])
        lhs, out = lhs.replace("...", fill), out.replace("...", fill)
    if len(lhs) != lhs_ndim or len(rhs) != rhs_ndim:
        raise ValueError(
            f"`einsum_str` (={einsum_str!r}) does not match operand ranks {lhs_ndim}, {rhs_ndim}."
        )
    for name, operand in (("lhs", lhs), ("rhs", rhs)):
        other = rhs if name == "lhs" else lhs
        summed = [c for c in operand if c not in out and c not in other]
        if summed:
            raise ValueError(
                f"`einsum_str` (={einsum_str!r}) sums index {summed[0]!r} within {name}."
            )
    contract = [c for c in lhs if c in rhs and c not in out]
    batch = [c for c in lhs if c in rhs and c in out]
    lhs_free = [c for c in lhs if c not in rhs]
    rhs_free = [c for c in rhs if c not in lhs]
    order = batch + lhs_free + rhs_free
    dimension_numbers = (
        (tuple(lhs.index(c) for c in contract), tuple(rhs.index(c) for c in contract)),
        (tuple(lhs.index(c) for c in batch), tuple(rhs.index(c) for c in batch)),
    )
    return EinsumPlan(lhs, rhs, out, dimension_numbers, tuple(order.index(c) for c in out))


def check_einsum_kernel(einsum_str: str, plan: EinsumPlan) -> None:
    """N:M groups run along the kernel's axis -2: it must be contracted, and axis -1 must be
    an output-only (free) axis so that the transposed mask serves the input gradient.

    Raises:
      ValueError: otherwise.
    """
    rows, cols = plan.rhs[-2], plan.rhs[-1]
    if rows in plan.lhs and rows not in plan.out and cols in plan.out and cols not in plan.lhs:
        return
    raise ValueError(
        f"`einsum_str` (={einsum_str!r}): the kernel's last two axes ({rows!r}, {cols!r}) must "
        "be (contracted, output) for N:M masks along axis -2; reorder the kernel or exclude "
        "it with `include`."
    )
