"""Minimum-variance unbiased N:M pruning (MVUE) of neural gradients, BRIEF §5.

For a group ``a`` of ``m`` entries keeping ``n``, entry ``i`` is kept with probability
``p_i = min(1, c·|a_i|)`` (``Σ p_i = n``) and set to ``a_i / p_i``; every other entry becomes 0.
The estimate is unbiased, ``E[out] = a``, and its variance ``Σ a_i² (1/p_i − 1)`` is the least
of any unbiased estimator that keeps ``n`` of ``m``. Implemented:

* ``method="exact"``, 1:2: keep ``a_0`` with probability ``|a_0| / (|a_0| + |a_1|)``, valued
  ``sign(a_0)(|a_0| + |a_1|)``; else the same for ``a_1``.
* ``method="exact"``, 2:4, ``S = Σ|a_i|``: if ``max|a_i| < S/2``, ``p_i = 2|a_i| / S`` (drawn
  with systematic sampling, two points ``u`` and ``u + 1`` on the cumulated ``p``), kept values
  ``sign(a_i)·S/2``. Otherwise the dominant entry is kept as is and one of the other three is
  kept with probability ``|a_j| / R``, valued ``sign(a_j)·R``, ``R = S − max|a_i|``.
* ``method="approx"``, 2:4 (2by4-pretrain): draw one index ``∝ |a|``, a second ``∝ |a|`` among
  the other three, and divide each kept value by its exact inclusion probability
  ``π_k = (|a_k| / S)·(1 + Σ_{l≠k} |a_l| / (S − |a_l|))``. Unbiased, slightly higher variance.

Exactly ``n`` positions are kept in every group. Groups with fewer than ``n`` nonzero entries keep
deterministic extra positions (the lowest indices not yet kept) with value 0, so the kept set
always fits a hardware N:M format. Arithmetic is float32 (or wider when the input is float64);
the result is cast back to the input dtype, so it is unbiased up to that dtype's rounding.
Non-finite inputs propagate as NaN.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jaxnm._checks import check_floating, check_group_axis, check_nm

MVUE_METHODS = ("exact", "approx")
SUPPORTED_NM = {"exact": ((1, 2), (2, 4)), "approx": ((2, 4),)}

# Case "A" of exact 2:4 is used only when 2·max|a_i| < S·(1 − _DOMINANT_TOL), so that no
# probability rounds to 1 or above and the two systematic points never fall in one interval.
# The dominant case ("B") is unbiased for every group, so the tolerance costs no bias.
_DOMINANT_TOL = 2.0**-18


def check_mvue(n: int, m: int, method: str) -> tuple[int, int]:
    """Validates an MVUE setting; returns ``(n, m)`` as Python ints."""
    n, m = check_nm(n, m)
    if method not in MVUE_METHODS:
        raise ValueError(f"`method` must be one of {MVUE_METHODS}, got {method!r}.")
    if (n, m) not in SUPPORTED_NM[method]:
        supported = ", ".join(f"{a}:{b}" for a, b in SUPPORTED_NM[method])
        raise ValueError(
            f"MVUE method={method!r} supports n:m in {{{supported}}}, got n:m = {n}:{m}."
        )
    return n, m


def check_key(key, name: str = "key") -> None:
    """Raises ``ValueError`` if a PRNG key is missing (``None``)."""
    if key is None:
        raise ValueError(
            f"`{name}` is required for MVUE gradient pruning (it is stochastic), got None. "
            "Pass e.g. jax.random.fold_in(jax.random.fold_in(base_key, step), layer_id)."
        )


def mvue(
    x: jax.Array, n: int, m: int, key: jax.Array, *, axis: int = 0, method: str = "exact"
) -> jax.Array:
    """Unbiased minimum-variance N:M pruning of ``x`` along ``axis``.

    Args:
      x: floating array of any shape (float32, bfloat16, float16, float64), typically a
        neural gradient ``dY`` whose ``axis`` is the token/batch axis, the reduction axis of
        the weight-gradient GEMM ``dW = Xᵀ·dY``.
      n: entries kept per group (static int).
      m: group size (static int); ``x.shape[axis]`` must be a multiple of ``m``.
      key: PRNG key (``jax.random.key`` or a raw ``uint32[2]`` key). Every group draws its own
        uniforms from it; use a fresh key per step and per layer.
      axis: the axis holding the groups of ``m`` consecutive entries.
      method: ``"exact"`` (1:2 and 2:4 MVUE) or ``"approx"`` (2:4 sequential draw).

    Returns:
      Array of ``x``'s shape and dtype with exactly ``n`` kept positions per group (see the
      module docstring) and ``E[mvue(x)] = x`` over keys.

    Raises:
      ValueError: non-floating ``x``, unsupported ``n:m``/``method``, ``m`` not dividing
        ``x.shape[axis]``, or ``key=None``.

    Example:
      >>> import jax, jax.numpy as jnp, jaxnm
      >>> g = jnp.array([-0.5, 0.1, 0.2, -0.05])
      >>> out = jaxnm.mvue(g, 2, 4, jax.random.key(0))
      >>> int((out != 0).sum()), float(out[0])
      (2, -0.5)
    """
    return mvue_with_mask(x, n, m, key, axis=axis, method=method)[0]


def mvue_with_mask(
    x: jax.Array, n: int, m: int, key: jax.Array, *, axis: int = 0, method: str = "exact"
) -> tuple[jax.Array, jax.Array]:
    """Like :func:`mvue`, also returning the kept positions.

    Returns:
      ``(values, keep)``: ``values`` has ``x``'s shape and dtype; ``keep`` is a bool array of
      ``x``'s shape with exactly ``n`` True per group of ``m`` along ``axis`` (``values`` is 0
      wherever ``keep`` is False).
    """
    n, m = check_mvue(n, m, method)
    check_floating(x, "x")
    check_key(key)
    axis = check_group_axis(jnp.shape(x), axis, m, name="x")
    shape = x.shape
    pre = math.prod(shape[:axis])
    post = math.prod(shape[axis + 1 :])
    compute_dtype = jnp.promote_types(x.dtype, jnp.float32)
    groups = x.reshape(pre, shape[axis] // m, m, post).astype(compute_dtype)
    slots = [groups[:, :, i, :] for i in range(m)]
    u_shape = slots[0].shape
    if method == "approx":
        k1, k2 = jax.random.split(key)
        u1 = jax.random.uniform(k1, u_shape, compute_dtype)
        u2 = jax.random.uniform(k2, u_shape, compute_dtype)
        values, keep = _approx_2_4(slots, u1, u2)
    else:
        u = jax.random.uniform(key, u_shape, compute_dtype)
        values, keep = (_exact_1_2 if m == 2 else _exact_2_4)(slots, u)
    values = jnp.stack(values, axis=2).reshape(shape).astype(x.dtype)
    keep = jnp.stack(keep, axis=2).reshape(shape)
    return values, keep


def _pick(bounds, u):
    """One-hot of the interval holding ``u``: interval ``i`` is ``[bounds[i-1], bounds[i])``.

    ``bounds`` are the cumulated widths, except the last one (taken as ``+inf``); intervals
    of zero width are never picked.
    """
    idx = sum((b <= u).astype(jnp.int32) for b in bounds)
    return [idx == i for i in range(len(bounds) + 1)]


def _first_other(taken):
    """One-hot of the lowest position not in ``taken`` (a list of bool arrays)."""
    out, found = [], jnp.zeros_like(taken[0])
    for t in taken:
        here = ~t & ~found
        out.append(here)
        found = found | here
    return out


def _exact_1_2(a, u):
    b0, b1 = jnp.abs(a[0]), jnp.abs(a[1])
    s = b0 + b1
    # s == 0 gives NaN bounds, so position 0 is kept with value 0.
    keep = _pick([b0 / s], u)
    values = [jnp.where(k, jnp.sign(ai) * s, 0) for k, ai in zip(keep, a, strict=True)]
    return values, keep


def _exact_2_4(a, u):
    b = [jnp.abs(ai) for ai in a]
    cum = [b[0]]
    for bi in b[1:]:
        cum.append(cum[-1] + bi)
    s = cum[-1]
    amax = jnp.maximum(jnp.maximum(b[0], b[1]), jnp.maximum(b[2], b[3]))
    dominant = 2 * amax >= s * (1 - _DOMINANT_TOL)  # also every all-zero group

    # Balanced case: p_i = 2|a_i| / S, systematic sampling at u and u + 1.
    bounds = [2 * c / s for c in cum[:-1]]
    keep_a = [p | q for p, q in zip(_pick(bounds, u), _pick(bounds, u + 1), strict=True)]
    val_a = [jnp.sign(ai) * (s / 2) for ai in a]

    # Dominant case: keep the first maximum as is, one of the others with prob. |a_j| / R.
    is_max = _first_other([bi != amax for bi in b])
    rest = [jnp.where(d, 0, bi) for d, bi in zip(is_max, b, strict=True)]
    rcum = [rest[0]]
    for r in rest[1:]:
        rcum.append(rcum[-1] + r)
    r_tot = rcum[-1]
    other = _pick([c / r_tot for c in rcum[:-1]], u)
    # R == 0 (at most one nonzero): keep the lowest other position, value 0.
    other = [jnp.where(r_tot > 0, o, f) for o, f in zip(other, _first_other(is_max), strict=True)]
    keep_b = [d | o for d, o in zip(is_max, other, strict=True)]
    val_b = [jnp.where(d, ai, jnp.sign(ai) * r_tot) for d, ai in zip(is_max, a, strict=True)]

    keep = [jnp.where(dominant, kb, ka) for ka, kb in zip(keep_a, keep_b, strict=True)]
    values = [
        jnp.where(k, jnp.where(dominant, vb, va), 0)
        for k, va, vb in zip(keep, val_a, val_b, strict=True)
    ]
    return values, keep


def approx_2_4_inclusion(b: list[jax.Array]) -> list[jax.Array]:
    """Inclusion probabilities of the two-step draw (first ``∝ b``, second ``∝ b`` among rest).

    ``π_k = b_k / S + Σ_{l≠k} (b_l / S)·(b_k / r_l)`` with ``r_l = S − b_l`` summed directly
    from the other entries. Every factor lies in ``[0, 1]`` (``b_k <= r_l`` for ``k ≠ l``), so
    nothing overflows or cancels; terms with ``r_l = 0`` vanish.

    Args:
      b: four non-negative arrays of one shape, the magnitudes of a group's entries.

    Returns:
      four arrays of probabilities in ``[0, 1]`` summing to 2 (or fewer when a group has
      fewer than two nonzero entries).
    """
    s = b[0] + b[1] + b[2] + b[3]
    first = [bi / jnp.where(s > 0, s, 1) for bi in b]
    rest = [sum(b[j] for j in range(4) if j != i) for i in range(4)]
    safe_rest = [jnp.where(r > 0, r, 1) for r in rest]
    probs = []
    for k in range(4):
        second = sum(first[i] * (b[k] / safe_rest[i]) for i in range(4) if i != k)
        probs.append(jnp.minimum(first[k] + second, 1))
    return probs


def _approx_2_4(a, u1, u2):
    b = [jnp.abs(ai) for ai in a]
    cum = [b[0]]
    for bi in b[1:]:
        cum.append(cum[-1] + bi)
    s = cum[-1]
    first = _pick([c / s for c in cum[:-1]], u1)  # all-zero group: position 0
    rest = [jnp.where(f, 0, bi) for f, bi in zip(first, b, strict=True)]
    rcum = [rest[0]]
    for r in rest[1:]:
        rcum.append(rcum[-1] + r)
    r_tot = rcum[-1]
    second = _pick([c / r_tot for c in rcum[:-1]], u2)
    second = [jnp.where(r_tot > 0, o, f) for o, f in zip(second, _first_other(first), strict=True)]
    keep = [f | o for f, o in zip(first, second, strict=True)]
    pi = approx_2_4_inclusion(b)
    values = [
        jnp.where(k & (p > 0), ai / jnp.where(p > 0, p, 1), 0)
        for k, p, ai in zip(keep, pi, a, strict=True)
    ]
    return values, keep
