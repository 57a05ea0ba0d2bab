"""N:M ``dot_general`` for training: all three GEMMs of a layer see N:M operands (BRIEF §4–5).

Forward ``Y = lhs · (rhs ⊙ mask)``. Backward (``jax.custom_vjp``):

* input gradient ``dlhs = dY · (rhs ⊙ mask)ᵀ``: with a transposable mask, N:M along ``out``;
* weight gradient ``drhs = lhsᵀ · prune(dY)``, passed straight through to the dense ``rhs``
  (STE, so masks can change); ``prune`` is MVUE along the token axes of ``dY`` (see
  :mod:`jaxnm.ops._grad_prune`);
* no gradient to ``mask`` (zeros; ``float0`` for a bool mask) or ``key``.

SR-STE is configured in :func:`jaxnm.sparsify` (``srste=``), not here: it adds its decay to
the gradient of the dense parameter, whichever op or layer uses it.

The input gradient is ``jax.linear_transpose`` of the forward contraction; the weight
gradient is one transpose-free ``dot_general`` (:meth:`_DotConfig.weight_grad`). Any
``dimension_numbers`` (batch dimensions included) are supported. Reverse mode only
(``jax.jvp`` of a ``custom_vjp`` function is not defined).

Keys: MVUE is stochastic and needs a fresh key per step and per layer, e.g.
``jax.random.fold_in(jax.random.fold_in(base_key, step), layer_index)``. Reusing one key for
two layers correlates their pruning noise (still unbiased per layer).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxnm._sharding import explicit_sharding, reshape
from jaxnm.kernels.cusparselt.dot_general import cusparselt_dot_general
from jaxnm.ops._grad_prune import TokenPruner, check_grad_sparsity, prune_tokens
from jaxnm.ops._masked_linear import (
    canonical_precision,
    check_operands,
    masked_linear,
    transpose_in_rhs,
)
from jaxnm.ops._mvue import MVUE

OpBackend = Literal["xla", "cusparselt"]
OP_BACKENDS = ("xla", "cusparselt")


class _DotConfig(NamedTuple):
    """Static (hashable) settings of one :func:`nm_dot_general` call."""

    dimension_numbers: tuple  # ((lhs_contract, rhs_contract), (lhs_batch, rhs_batch))
    precision: Any
    preferred_element_type: Any
    out_sharding: Any
    spec: MVUE | None  # None: dense weight gradient

    def apply(self, lhs, rhs):
        """The linear map ``lhs · rhs`` these settings describe."""
        return lax.dot_general(
            lhs,
            rhs,
            self.dimension_numbers,
            precision=self.precision,
            preferred_element_type=self.preferred_element_type,
            out_sharding=self.out_sharding,
        )

    def prune_output(self, g, lhs_ndim: int, key):
        """MVUE along the lhs free axes of ``dY`` (batch axes first, rhs free axes last)."""
        (lc, _), (lb, _) = self.dimension_numbers
        nb = len(lb)
        nt = lhs_ndim - len(lc) - nb
        shape = g.shape
        g3 = reshape(
            g,
            (math.prod(shape[:nb]), math.prod(shape[nb : nb + nt]), math.prod(shape[nb + nt :])),
        )
        return reshape(prune_tokens(g3, self.spec, key), shape)

    def weight_grad(self, lhs, g, rhs):
        """``∂(lhs · rhs)/∂rhs`` applied to ``g``, as one ``dot_general`` with no transposes.

        Usual kernels (no batch axes; ``lhs`` contracted on its trailing axes and ``rhs`` on
        its leading ones, in order, e.g. Dense ``(in, out)``) flatten to the 2-D GEMM
        ``lhs(T, K)ᵀ · g(T, N)``, reshaped to ``rhs``'s shape (all reshapes are free).
        Otherwise the result is contracted as ``(batch, contracting, free)`` and permuted
        to ``rhs``'s axis order. ``jax.linear_transpose`` instead emits ``dot_general(g,
        lhs)`` followed by a transpose, which XLA on CPU lowers with a transposed copy of
        ``g``; a pruned ``g`` is then computed inside that strided copy, ~10× slower than
        in ``g``'s own layout (BENCHMARKS.md, Train step).
        """
        if any(explicit_sharding(a) is not None for a in (lhs, rhs, g)):
            # On Explicit-sharding meshes JAX's own transpose rule picks the output sharding.
            return transpose_in_rhs(self.apply, lhs, g, rhs)
        (lc, rc), (lb, rb) = self.dimension_numbers
        nb, nc = len(lb), len(lc)
        if not lb and lc == tuple(range(lhs.ndim - nc, lhs.ndim)) and rc == tuple(range(nc)):
            k = math.prod(rhs.shape[:nc])
            out = lax.dot_general(
                lhs.reshape(-1, k),
                g.reshape(-1, rhs.size // k),
                (((0,), (0,)), ((), ())),
                precision=self.precision,
                preferred_element_type=self.preferred_element_type,
            )
            return out.reshape(rhs.shape).astype(rhs.dtype)
        free = tuple(i for i in range(lhs.ndim) if i not in lc and i not in lb)
        dims = ((free, tuple(range(nb, nb + len(free)))), (lb, tuple(range(nb))))
        out = lax.dot_general(
            lhs,
            g,
            dims,
            precision=self.precision,
            preferred_element_type=self.preferred_element_type,
        )
        # ``out`` axes: batch (paired as lb/rb), lhs contracting axes in lhs order, rhs free.
        contract_order = sorted(lc)
        rhs_free = [i for i in range(rhs.ndim) if i not in rc and i not in rb]
        source = {}
        for j, axis in enumerate(rb):
            source[axis] = j
        for axis_l, axis_r in zip(lc, rc, strict=True):
            source[axis_r] = nb + contract_order.index(axis_l)
        for k, axis in enumerate(rhs_free):
            source[axis] = nb + nc + k
        out = lax.transpose(out, tuple(source[axis] for axis in range(rhs.ndim)))
        return out.astype(rhs.dtype)


def nm_dot_general(
    lhs: jax.Array,
    rhs: jax.Array,
    mask: jax.Array,
    dimension_numbers,
    *,
    grad_sparsity: MVUE | None = None,
    key: jax.Array | None = None,
    precision=None,
    preferred_element_type=None,
    out_sharding=None,
    backend: OpBackend = "xla",
    interpret: bool = False,
) -> jax.Array:
    """``lax.dot_general(lhs, rhs ⊙ mask)`` with the N:M training backward pass.

    Args:
      lhs: activations, floating array; its non-contracted, non-batch axes are the token
        axes (the axes the weight gradient reduces over, where MVUE groups run).
      rhs: weight, floating array, e.g. a Flax Dense kernel ``(in, out)``. Receives the dense
        straight-through gradient.
      mask: array of ``rhs``'s shape, bool or numeric (``rhs ⊙ mask`` is
        ``where(mask, rhs, 0)`` for bool, ``rhs * mask`` otherwise); typically N:M along the
        contraction axis (``in``), or transposable N:M. Gets no gradient.
      dimension_numbers: as for ``lax.dot_general``:
        ``((lhs_contracting, rhs_contracting), (lhs_batch, rhs_batch))``.
      grad_sparsity: ``None`` (dense weight gradient) or a :class:`jaxnm.MVUE`, e.g.
        ``MVUE(2, 4)``: prune ``dY`` along its flattened token axes (groups of ``m``
        consecutive tokens, per batch index and output feature) before ``lhsᵀ · dY``. A
        ragged tail of ``T mod m`` tokens stays dense.
      key: PRNG key, required when ``grad_sparsity`` is set. Fold in the step and layer id.
      precision: passed to ``lax.dot_general`` for all three GEMMs.
      preferred_element_type: accumulation/output dtype of the GEMMs (e.g. ``jnp.float32``
        with bfloat16 operands). Gradients are returned in the operands' dtypes.
      out_sharding: passed to ``lax.dot_general`` (Flax NNX passes it, usually ``None``).
      backend: ``"xla"`` (dense XLA GEMMs on masked operands) or ``"cusparselt"``
        (EXPERIMENTAL, unverified on hardware: all three GEMMs on NVIDIA's 2:4 sparse tensor
        cores, see :func:`jaxnm.kernels.cusparselt.cusparselt_linear`; Dense form only,
        bfloat16/float16, a transposable 2:4 mask, ``precision`` ignored).
      interpret: with ``backend="cusparselt"``, run the pure-JAX emulation of its calls.

    Returns:
      ``lax.dot_general(lhs, rhs ⊙ mask, dimension_numbers, ...)``: batch axes, then lhs free
      axes, then rhs free axes.

    Raises:
      ValueError: ``mask.shape != rhs.shape``, non-floating operands or ``grad_sparsity``
        without ``key``.
      TypeError: ``grad_sparsity`` neither ``None`` nor a :class:`jaxnm.MVUE`.

    Example:
      >>> import jax, jax.numpy as jnp, jaxnm
      >>> x, w = jnp.ones((8, 4)), jnp.arange(8.0).reshape(4, 2)
      >>> mask = jaxnm.nm_mask(w, 2, 4)
      >>> dn = (((1,), (0,)), ((), ()))
      >>> jaxnm.ops.nm_dot_general(x, w, mask, dn)[0]
      Array([10., 12.], dtype=float32)
      >>> dw = jax.grad(lambda w: jaxnm.ops.nm_dot_general(
      ...     x, w, mask, dn, grad_sparsity=jaxnm.MVUE(2, 4), key=jax.random.key(0)).sum())(w)
    """
    ops = check_operands(lhs, rhs, mask, grad_sparsity, key)
    dimension_numbers = _normalize_dimension_numbers(dimension_numbers)
    if backend not in OP_BACKENDS:
        raise ValueError(f"`backend` (={backend!r}) must be one of {OP_BACKENDS}.")
    if backend == "cusparselt":
        return cusparselt_dot_general(
            lhs,
            rhs,
            ops.mask,
            dimension_numbers,
            prune=None if ops.spec is None else TokenPruner(ops.spec),
            key=ops.key,
            preferred_element_type=preferred_element_type,
            out_sharding=out_sharding,
            interpret=interpret,
        )
    cfg = _DotConfig(
        dimension_numbers=dimension_numbers,
        precision=canonical_precision(precision),
        preferred_element_type=preferred_element_type,
        out_sharding=out_sharding,
        spec=ops.spec,
    )
    return masked_linear(cfg, lhs, rhs, ops.mask, ops.key)


def nm_linear(
    x: jax.Array,
    w: jax.Array,
    mask: jax.Array,
    *,
    grad_sparsity: MVUE | None = None,
    key: jax.Array | None = None,
    precision=None,
    preferred_element_type=None,
    backend: OpBackend = "xla",
    interpret: bool = False,
) -> jax.Array:
    """``x @ (w ⊙ mask)`` with the N:M backward pass of :func:`nm_dot_general`.

    Args:
      x: ``(..., in)`` floating activations; all leading axes are tokens (MVUE groups run
        along their row-major flattening).
      w: ``(in, out)`` floating kernel (Flax Dense layout).
      mask: ``(in, out)`` bool or numeric mask, N:M along ``in`` (axis ``-2``) or
        transposable.
      grad_sparsity, key, precision, preferred_element_type, backend, interpret: see
        :func:`nm_dot_general`.

    Returns:
      ``(..., out)`` array.
    """
    if jnp.ndim(w) != 2:
        raise ValueError(f"`w` must be a 2-D (in, out) kernel, got shape {jnp.shape(w)}.")
    if jnp.ndim(x) < 1 or jnp.shape(x)[-1] != jnp.shape(w)[0]:
        raise ValueError(
            f"`x` has shape {jnp.shape(x)}: its last axis must match w.shape[0] "
            f"(w has shape {jnp.shape(w)})."
        )
    dn = (((jnp.ndim(x) - 1,), (0,)), ((), ()))
    return nm_dot_general(
        x,
        w,
        mask,
        dn,
        grad_sparsity=grad_sparsity,
        key=key,
        precision=precision,
        preferred_element_type=preferred_element_type,
        backend=backend,
        interpret=interpret,
    )


def nm_dot_general_fn(
    mask: jax.Array,
    *,
    grad_sparsity: MVUE | None = None,
    key: jax.Array | None = None,
    backend: OpBackend = "xla",
    interpret: bool = False,
) -> Callable[..., jax.Array]:
    """Closes :func:`nm_dot_general` over a mask and key, for Flax ``dot_general=`` seams.

    Flax ``nnx.Linear`` and ``linen.Dense`` call
    ``dot_general(inputs, kernel, dimension_numbers, precision=..., [preferred_element_type=...,
    out_sharding=...])``; the returned function has exactly that signature, so e.g.
    ``nnx.Linear(..., dot_general=nm_dot_general_fn(mask, grad_sparsity=MVUE(2, 4), key=k))``
    (build it inside the forward pass, where the current mask and key are known).

    Args:
      mask: mask of the kernel's shape.
      grad_sparsity, key, backend, interpret: see :func:`nm_dot_general`.

    Returns:
      ``fn(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None,
      out_sharding=None)``.
    """
    check_grad_sparsity(grad_sparsity, key)

    def dot_general(
        lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None, out_sharding=None
    ):
        return nm_dot_general(
            lhs,
            rhs,
            mask,
            dimension_numbers,
            grad_sparsity=grad_sparsity,
            key=key,
            precision=precision,
            preferred_element_type=preferred_element_type,
            out_sharding=out_sharding,
            backend=backend,
            interpret=interpret,
        )

    return dot_general


def _normalize_dimension_numbers(dn) -> tuple:
    try:
        (lc, rc), (lb, rb) = dn
        return (
            (tuple(int(i) for i in lc), tuple(int(i) for i in rc)),
            (tuple(int(i) for i in lb), tuple(int(i) for i in rb)),
        )
    except (TypeError, ValueError):
        raise ValueError(
            "`dimension_numbers` must be ((lhs_contracting, rhs_contracting), "
            f"(lhs_batch, rhs_batch)), got {dn!r}."
        ) from None
