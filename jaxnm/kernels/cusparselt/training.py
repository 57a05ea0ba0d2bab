"""The N:M training linear layer with all three GEMMs on cuSPARSELt 2:4 (``jax.custom_vjp``).

EXPERIMENTAL: compiled deviceless for H100/H200 and tested on CPU through the pure-JAX
emulation (``interpret=True``); not yet run or timed on a GPU.

``y = x · (w ⊙ mask)`` with ``x (T, K)``, ``w (K, N)``:

* forward: ``y = x · W`` with compressed ``Wᵀ (N, K)``, 2:4 along ``in`` (K);
* input gradient: ``dx = dy · Wᵀ`` with compressed ``W (K, N)``, 2:4 along ``out`` (N): the
  mask must be **transposable** 2:4;
* weight gradient: ``dW = xᵀ · prune(dy)`` with the pruned ``dyᵀ (N, T)`` compressed at run
  time, 2:4 along tokens. ``prune`` must keep at most 2 of every 4 consecutive tokens: MVUE
  2:4 (exact or approximate) or MVUE 1:2. Without ``prune`` the weight gradient is a dense
  XLA GEMM. The gradient reaches the dense ``w`` straight through (STE); SR-STE
  is added by :func:`jaxnm.sparsify` (``srste=``), not here.

Tokens are zero-padded to a multiple of 16 (cuSPARSELt's dimension rule for the sparse
``dyᵀ``); padded rows give zero outputs and gradients, and an MVUE group that mixes real and
padded tokens stays unbiased. ``K`` and ``N`` must be multiples of 16 (bfloat16/float16).

Weight compression (``weight_compression``): ``"step"`` compresses ``Wᵀ`` in the forward
and ``W`` in the backward of every call (two memory-bound passes over W per step, as
torchao's training path does). ``"refresh"`` uses a :class:`CusparseLtWeight` made by
:func:`compress_weight` at the last mask refresh: no compression in the step, correct only
while ``w`` does not change between refreshes (frozen or inference weights). Which one is
faster in a real step is a GPU measurement still pending (``benchmarks/gpu_check.py``).

A structure violation (a non-2:4 ``W``, ``Wᵀ`` or pruned ``dy``) is detected on the device
when ``check=True`` and turns the affected result into NaN instead of a silently wrong value.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp

from jaxnm.kernels.cusparselt import layout
from jaxnm.kernels.cusparselt.sparse_mm import CusparseLtMatrix, compress, matmul

WeightCompression = Literal["step", "refresh"]
TOKEN_MULTIPLE = 16  # tokens are padded to this (the sparse dyᵀ's column rule, 16-bit)
_DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


class CusparseLtWeight(NamedTuple):
    """A weight compressed for all three GEMMs (see :func:`compress_weight`)."""

    forward: CusparseLtMatrix  # Wᵀ (N, K), 2:4 along K
    input_grad: CusparseLtMatrix  # W (K, N), 2:4 along N


class AlgIds(NamedTuple):
    """cuSPARSELt algorithm ids (static; ``-1`` = library default) of the three GEMMs."""

    forward: int = -1
    input_grad: int = -1
    weight_grad: int = -1


DEFAULT_ALG_IDS = AlgIds()


@dataclasses.dataclass(frozen=True)
class _Config:
    prune: Callable[[jax.Array, jax.Array], jax.Array] | None
    check: bool
    alg_ids: AlgIds
    interpret: bool


def compress_weight(
    w: jax.Array, mask: jax.Array, *, check: bool = True, interpret: bool = False
) -> CusparseLtWeight:
    """Compresses ``w ⊙ mask`` for the forward (``Wᵀ``) and input-gradient (``W``) GEMMs.

    Args:
      w: ``(K, N)`` bfloat16 / float16 kernel.
      mask: ``(K, N)`` bool or 0/1, transposable 2:4 (2:4 along ``K`` and along ``N``).
      check: verify the 2:4 structure on the device.
      interpret: pure-JAX emulation.

    Returns:
      :class:`CusparseLtWeight`.
    """
    w_eff = _masked(w, mask)
    return CusparseLtWeight(
        forward=compress(w_eff.T, check=check, interpret=interpret),
        input_grad=compress(w_eff, check=check, interpret=interpret),
    )


def cusparselt_linear(
    x: jax.Array,
    w: jax.Array,
    mask: jax.Array,
    *,
    prune: Callable[[jax.Array, jax.Array], jax.Array] | None = None,
    key: jax.Array | None = None,
    weight_compression: WeightCompression = "step",
    compressed: CusparseLtWeight | None = None,
    check: bool = True,
    alg_ids: AlgIds = DEFAULT_ALG_IDS,
    interpret: bool = False,
) -> jax.Array:
    """``x · (w ⊙ mask)`` with the forward and both gradients on cuSPARSELt (see module doc).

    Args:
      x: ``(..., K)`` activations, ``w``'s dtype (bfloat16 or float16); leading axes are
        tokens.
      w: ``(K, N)`` kernel (Flax Dense layout); gets the straight-through gradient.
      mask: ``(K, N)`` bool or numeric, transposable 2:4. No gradient.
      prune: ``prune(g, key) -> g`` on ``g (T, N)``, keeping at most 2 of every 4
        consecutive rows (tokens), e.g. ``lambda g, k: jaxnm.mvue(g, 2, 4, k, axis=0)``;
        ``None``: dense XLA weight gradient. Must be hashable (a module-level function or
        frozen dataclass) so that jit caches.
      key: PRNG key for ``prune``.
      weight_compression: ``"step"`` or ``"refresh"`` (then pass ``compressed``).
      compressed: :func:`compress_weight` of the current ``w``/``mask`` (``"refresh"`` only).
      check: device-side 2:4 checks of every compressed operand (NaN results on violation).
      alg_ids: static algorithm ids from :func:`~jaxnm.kernels.cusparselt.search_algorithm`.
      interpret: run the pure-JAX emulation of every cuSPARSELt call (CPU testing).

    Returns:
      ``(..., N)`` in ``x``'s dtype (float32 accumulation).

    Raises:
      ValueError / TypeError: shapes, dtypes or settings cuSPARSELt cannot take.
    """
    k, n_out = _check_linear(x, w, mask)
    if weight_compression not in ("step", "refresh"):
        raise ValueError(
            f"`weight_compression` must be 'step' or 'refresh', got {weight_compression!r}."
        )
    if (weight_compression == "refresh") != (compressed is not None):
        raise ValueError(
            "`compressed` (from compress_weight) is required with weight_compression='refresh' "
            f"and only then; got weight_compression={weight_compression!r}, compressed="
            f"{'None' if compressed is None else 'given'}."
        )
    if prune is not None and key is None:
        raise ValueError("`key` is required with `prune` (MVUE is stochastic), got None.")
    if not isinstance(alg_ids, AlgIds):
        raise TypeError(f"`alg_ids` must be an AlgIds, got {type(alg_ids).__name__}.")
    cfg = _Config(prune, bool(check), alg_ids, bool(interpret))
    lead = x.shape[:-1]
    x2 = x.reshape(-1, k)
    tokens = x2.shape[0]
    padded = -(-tokens // TOKEN_MULTIPLE) * TOKEN_MULTIPLE
    x2 = jnp.pad(x2, ((0, padded - tokens), (0, 0)))
    y = _linear(cfg, x2, w, mask, key, compressed)
    return y[:tokens].reshape(*lead, n_out)


def _check_linear(x, w, mask) -> tuple[int, int]:
    if jnp.ndim(w) != 2:
        raise ValueError(f"`w` must be a 2-D (in, out) kernel, got shape {jnp.shape(w)}.")
    k, n_out = w.shape
    if jnp.shape(mask) != w.shape:
        raise ValueError(f"`mask` has shape {jnp.shape(mask)}, it must match w {w.shape}.")
    if jnp.ndim(x) < 1 or x.shape[-1] != k:
        raise ValueError(f"`x` has shape {jnp.shape(x)}: its last axis must equal K={k}.")
    if jnp.dtype(w.dtype) not in _DTYPES or x.dtype != w.dtype:
        raise TypeError(
            f"backend='cusparselt' trains in bfloat16 or float16 with x and w of one dtype; got "
            f"x {x.dtype}, w {w.dtype}."
        )
    layout.check_sparse_shape(n_out, k, w.dtype, "w")
    return k, n_out


def _masked(w: jax.Array, mask: jax.Array) -> jax.Array:
    return jnp.where(mask.astype(bool), w, jnp.zeros((), w.dtype))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _linear(cfg, x, w, mask, key, compressed):
    return _forward(cfg, x, w, mask, compressed)


def _forward(cfg: _Config, x, w, mask, compressed):
    if compressed is not None:
        a = compressed.forward
    else:
        a = compress(_masked(w, mask).T, check=cfg.check, interpret=cfg.interpret)
    return matmul(a, x, transpose_b=True, alg_id=cfg.alg_ids.forward)


def _linear_fwd(cfg, x, w, mask, key, compressed):
    return _forward(cfg, x, w, mask, compressed), (x, w, mask, key, compressed)


def _linear_bwd(cfg, res, g):
    x, w, mask, key, compressed = res
    g = g.astype(x.dtype)
    if compressed is not None:
        a_dx = compressed.input_grad
    else:
        a_dx = compress(_masked(w, mask), check=cfg.check, interpret=cfg.interpret)
    dx = matmul(a_dx, g, transpose_b=True, alg_id=cfg.alg_ids.input_grad)
    if cfg.prune is None:
        dw = jnp.dot(x.T, g, preferred_element_type=jnp.float32)
    else:
        g_pruned = cfg.prune(g, key)
        a_dw = compress(g_pruned.T, check=cfg.check, interpret=cfg.interpret)  # (N, T)
        dw = matmul(a_dw, x, transpose_b=False, alg_id=cfg.alg_ids.weight_grad)  # (K, N)
    return dx.astype(x.dtype), dw.astype(w.dtype), None, None, None


_linear.defvjp(_linear_fwd, _linear_bwd)
