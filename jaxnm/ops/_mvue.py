"""Minimum-variance unbiased N:M pruning (MVUE) of neural gradients, BRIEF §5.

For a group ``a`` of ``m`` entries keeping ``n``, entry ``i`` is kept with probability
``p_i = min(1, c·|a_i|)`` (``Σ p_i = n``) and set to ``a_i / p_i``; every other entry becomes 0.
The estimate is unbiased, ``E[out] = a``, and its variance ``Σ a_i² (1/p_i − 1)`` is the least
of any unbiased estimator that keeps ``n`` of ``m``. Implemented:

* exact (``approx=False``), 1:2: keep ``a_0`` with probability ``|a_0| / (|a_0| + |a_1|)``, valued
  ``sign(a_0)(|a_0| + |a_1|)``; else the same for ``a_1``.
* exact (``approx=False``), 2:4, ``S = Σ|a_i|``: if ``max|a_i| < S/2``, ``p_i = 2|a_i| / S`` (drawn
  with systematic sampling, two points ``u`` and ``u + 1`` on the cumulated ``p``), kept values
  ``sign(a_i)·S/2``. Otherwise the dominant entry is kept as is and one of the other three is
  kept with probability ``|a_j| / R``, valued ``sign(a_j)·R``, ``R = S − max|a_i|``.
* ``approx=True``, 2:4 (2by4-pretrain): draw one index ``∝ |a|``, a second ``∝ |a|`` among
  the other three, and divide each kept value by its exact inclusion probability
  ``π_k = (|a_k| / S)·(1 + Σ_{l≠k} |a_l| / (S − |a_l|))``. Unbiased, slightly higher variance.

Uniforms: one per group (two for ``approx=True``) from :func:`mvue_uniforms`, a counter hash
keyed by ``key``; every uniform is exactly uniform over keys, so the estimates are unbiased.

Exactly ``n`` positions are kept in every group. Groups with fewer than ``n`` nonzero entries keep
deterministic extra positions (the lowest indices not yet kept) with value 0, so the kept set
always fits a hardware N:M format. Arithmetic is float32 (or wider when the input is float64);
the result is cast back to the input dtype, so it is unbiased up to that dtype's rounding.
A group holding NaN or ±inf (or whose magnitudes sum beyond the float range) keeps its first
``n`` positions with value NaN, so a broken gradient stays visible.
"""

from __future__ import annotations

import dataclasses
import math
import re

import jax
import jax.numpy as jnp
from jax import lax

from jaxnm._checks import check_floating, check_group_axis, check_nm

# Case "A" of exact 2:4 is used only when 2·max|a_i| < S·(1 − _DOMINANT_TOL), so that no
# probability rounds to 1 or above and the two systematic points never fall in one interval.
# The dominant case ("B") is unbiased for every group, so the tolerance costs no bias.
_DOMINANT_TOL = 2.0**-18

#: The ``(n, m)`` pairs of the exact (``False``) and the approximate (``True``) estimator.
SUPPORTED_NM = {False: ((1, 2), (2, 4)), True: ((2, 4),)}

_CLI_FORM = re.compile(r"mvue_(\d+)_(\d+)(_approx)?")


@dataclasses.dataclass(frozen=True)
class MVUE:
    """Minimum-variance unbiased N:M pruning of neural gradients: the ``grad_sparsity`` setting.

    Validated once, when constructed; every op that takes ``grad_sparsity: MVUE | None``
    uses it as is. Frozen and hashable, so it is a static setting under ``jit``.

    Attributes:
      n: entries kept per group of ``m``.
      m: group size. Supported: 1:2 and 2:4 (exact), 2:4 with ``approx=True``.
      approx: the 2:4 sequential draw of 2by4-pretrain (unbiased, slightly higher variance,
        see the module docstring) instead of the exact minimum-variance estimator.

    Example:
      >>> import jaxnm
      >>> jaxnm.MVUE(1, 2)
      MVUE(n=1, m=2, approx=False)
      >>> jaxnm.MVUE.parse("mvue_2_4_approx") == jaxnm.MVUE(2, 4, approx=True)
      True
    """

    n: int = 2
    m: int = 4
    approx: bool = False

    def __post_init__(self):
        n, m = check_nm(self.n, self.m)
        if not isinstance(self.approx, bool):
            raise TypeError(f"`approx` must be a bool, got {self.approx!r}.")
        if (n, m) not in SUPPORTED_NM[self.approx]:
            supported = ", ".join(f"{a}:{b}" for a, b in SUPPORTED_NM[self.approx])
            kind = "approx=True" if self.approx else "exact MVUE"
            raise ValueError(f"{kind} supports n:m in {{{supported}}}, got n:m = {n}:{m}.")
        object.__setattr__(self, "n", n)
        object.__setattr__(self, "m", m)

    def __str__(self) -> str:
        """The command-line form, e.g. ``"mvue_2_4"`` or ``"mvue_2_4_approx"``."""
        return f"mvue_{self.n}_{self.m}" + ("_approx" if self.approx else "")

    @classmethod
    def parse(cls, text: str) -> MVUE | None:
        """Converts a command-line string: ``"none"`` (dense), ``"mvue_1_2"``,
        ``"mvue_2_4"`` or ``"mvue_2_4_approx"`` (the inverse of ``str``).

        For examples and CLIs; the library itself only takes :class:`MVUE` values.

        Raises:
          ValueError: any other string.
        """
        if text == "none":
            return None
        match = _CLI_FORM.fullmatch(text) if isinstance(text, str) else None
        if match is None:
            raise ValueError(
                f"`grad_sparsity` (={text!r}) must be 'none' or 'mvue_<n>_<m>[_approx]', "
                "e.g. 'mvue_2_4'."
            )
        return cls(int(match[1]), int(match[2]), approx=match[3] is not None)


def check_key(key, name: str = "key") -> None:
    """Raises ``ValueError`` if a PRNG key is missing (``None``)."""
    if key is None:
        raise ValueError(
            f"`{name}` is required for MVUE gradient pruning (it is stochastic), got None. "
            "Pass e.g. jax.random.fold_in(jax.random.fold_in(base_key, step), layer_id)."
        )


def mvue(
    x: jax.Array, n: int, m: int, key: jax.Array, *, axis: int = 0, approx: bool = False
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
      approx: the 2:4 sequential draw instead of the exact estimator (see :class:`MVUE`).

    Returns:
      Array of ``x``'s shape and dtype with exactly ``n`` kept positions per group (see the
      module docstring) and ``E[mvue(x)] = x`` over keys.

    Raises:
      ValueError: non-floating ``x``, unsupported ``n:m``/``approx``, ``m`` not dividing
        ``x.shape[axis]``, or ``key=None``.

    Example:
      >>> import jax, jax.numpy as jnp, jaxnm
      >>> g = jnp.array([-0.5, 0.1, 0.2, -0.05])
      >>> out = jaxnm.mvue(g, 2, 4, jax.random.key(0))
      >>> int((out != 0).sum()), float(out[0])
      (2, -0.5)
    """
    return mvue_with_mask(x, n, m, key, axis=axis, approx=approx)[0]


def mvue_with_mask(
    x: jax.Array, n: int, m: int, key: jax.Array, *, axis: int = 0, approx: bool = False
) -> tuple[jax.Array, jax.Array]:
    """Like :func:`mvue`, also returning the kept positions.

    Returns:
      ``(values, keep)``: ``values`` has ``x``'s shape and dtype; ``keep`` is a bool array of
      ``x``'s shape with exactly ``n`` True per group of ``m`` along ``axis`` (``values`` is 0
      wherever ``keep`` is False).
    """
    spec = MVUE(n, m, approx=approx)
    check_floating(x, "x")
    check_key(key)
    axis = check_group_axis(jnp.shape(x), axis, m, name="x")
    return estimate(x, spec, key, axis)


def estimate(x: jax.Array, spec: MVUE, key: jax.Array, axis: int) -> tuple[jax.Array, jax.Array]:
    """:func:`mvue_with_mask` without checks, for callers that validated their arguments.

    Args:
      x: floating array; ``x.shape[axis]`` a multiple of ``spec.m``.
      spec: the (validated) estimator.
      key: PRNG key.
      axis: non-negative axis index.

    Returns:
      ``(values, keep)`` as :func:`mvue_with_mask`.
    """
    n, m = spec.n, spec.m
    shape = x.shape
    pre = math.prod(shape[:axis])
    post = math.prod(shape[axis + 1 :])
    compute_dtype = jnp.promote_types(x.dtype, jnp.float32)
    groups = x.reshape(pre, shape[axis] // m, m, post).astype(compute_dtype)
    slots = [groups[:, :, i, :] for i in range(m)]
    if spec.approx:
        u1, u2 = mvue_uniforms(key, slots[0].shape, 2)
        values, keep = _approx_2_4(slots, u1, u2)
    else:
        (u,) = mvue_uniforms(key, slots[0].shape, 1)
        values, keep = (_exact_1_2 if m == 2 else _exact_2_4)(slots, u)
    # A group with a NaN or inf entry keeps its first n positions, valued NaN.
    finite = jnp.isfinite(sum(jnp.abs(a) for a in slots))
    keep = [jnp.where(finite, k, i < n) for i, k in enumerate(keep)]
    values = [
        jnp.where(finite, v, jnp.where(k, jnp.nan, 0)) for v, k in zip(values, keep, strict=True)
    ]
    values = jnp.stack(values, axis=2).reshape(shape).astype(x.dtype)
    keep = jnp.stack(keep, axis=2).reshape(shape)
    return values, keep


def mvue_uniforms(key: jax.Array, shape: tuple[int, ...], count: int) -> list[jax.Array]:
    """``count`` float32 arrays of ``shape`` with uniform entries in ``[0, 1)``.

    Only ``2·count`` words are drawn with ``jax.random`` (threefry by default); entry ``i``
    is ``lowbias32(i ^ w₀) ^ w₁`` (the ``lowbias32`` integer hash of C. Wellons, a bijection
    of ``uint32``). As ``w₁`` is uniform, over random keys every entry is *exactly* uniform
    on the grid ``{0, 2⁻²³, …, 1 − 2⁻²³}`` (as ``jax.random.uniform``), which is all
    unbiasedness needs; different entries are decorrelated by the hash. It fuses into the
    consumer, where ``jax.random.uniform`` costs a separate multi-pass loop (measured in one
    run on the 2-core CPU: MVUE 2:4 of a 4096×3072 float32 gradient 314 ms → 130 ms). One
    round of the hash instead of two cut the fused MVUE 2:4 time by about a sixth
    (BENCHMARKS.md, Training ops); the uniformity and decorrelation tests hold either way.

    Args:
      key: PRNG key (typed or raw ``uint32[2]``).
      shape: output shape; at most ``2**32`` entries.
      count: number of independent arrays.

    Returns:
      list of ``count`` float32 arrays of ``shape``.
    """
    size = math.prod(shape)
    if size >= 2**32:
        raise ValueError(f"MVUE draws at most 2**32 uniforms per call, got shape {shape}.")
    words = jax.random.bits(key, (count, 2), jnp.uint32)
    index = lax.iota(jnp.uint32, size).reshape(shape)
    out = []
    for j in range(count):
        bits = _lowbias32(index ^ words[j, 0]) ^ words[j, 1]
        mantissa = (bits >> 9) | jnp.uint32(0x3F800000)  # [1, 2) with 23 random bits
        out.append(lax.bitcast_convert_type(mantissa, jnp.float32) - 1)
    return out


def _lowbias32(x: jax.Array) -> jax.Array:
    """A bijective 32-bit integer hash with low avalanche bias (C. Wellons, ``lowbias32``)."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def _pick(cums, t):
    """One-hot of the interval holding ``t``: interval ``i`` is ``[cums[i-1], cums[i])``.

    ``cums`` are cumulated non-negative widths without the last one (interval ``len(cums)``
    extends to ``+inf``); intervals of zero width are never picked. Comparing ``t = u·total``
    with unnormalised sums needs no division.
    """
    idx = sum((c <= t).astype(jnp.int32) for c in cums)
    return [idx == i for i in range(len(cums) + 1)]


def _first_other(taken):
    """One-hot of the lowest position not in ``taken`` (a list of bool arrays)."""
    out, found = [], jnp.zeros_like(taken[0])
    for t in taken:
        here = ~t & ~found
        out.append(here)
        found = found | here
    return out


def _cumsum(b):
    """Running sums ``[b0, b0 + b1, ...]`` of a list of arrays."""
    out = [b[0]]
    for bi in b[1:]:
        out.append(out[-1] + bi)
    return out


def _exact_1_2(a, u):
    b0, b1 = jnp.abs(a[0]), jnp.abs(a[1])
    s = b0 + b1
    first = (u * s < b0) | (s == 0)  # an all-zero group keeps position 0 (value 0)
    keep = [first, ~first]
    values = [jnp.where(k, jnp.copysign(s, ai), 0) for k, ai in zip(keep, a, strict=True)]
    return values, keep


def _exact_2_4(a, u):
    """Exact 2:4 MVUE as systematic sampling on one line, evaluated slot by slot.

    Balanced groups lay the four magnitudes ``b_i`` end to end (total ``S``) and keep the
    intervals holding ``t₁ = u·S/2`` and ``t₂ = t₁ + S/2``: ``p_i = 2b_i/S``, value
    ``sign(a_i)·S/2``. Dominant groups keep the first maximum as is and lay out only the other
    three (total ``R``), keeping the interval holding ``t₁ = u·R``: ``p_j = b_j/R``, value
    ``sign(a_j)·R``. Both cases share ``t₁ = u·H`` with ``H = S/2`` or ``R`` (the kept
    magnitude), so each slot only tests its own interval ``[lo_i, hi_i)``; XLA fuses the four
    slots into one loop (measured about half the time of picking indices and one-hot
    decoding them, BENCHMARKS.md).
    """
    b = [jnp.abs(ai) for ai in a]
    s = sum(b)
    amax = jnp.maximum(jnp.maximum(b[0], b[1]), jnp.maximum(b[2], b[3]))
    dominant = 2 * amax >= s * (1 - _DOMINANT_TOL)  # also every all-zero group
    is_dom = [dominant & d for d in _first_other([bi != amax for bi in b])]
    bounds = _cumsum([jnp.where(d, 0, bi) for d, bi in zip(is_dom, b, strict=True)])
    total = bounds[-1]
    half = jnp.where(dominant, total, total / 2)  # H, the kept magnitude
    t1 = u * half  # < total, as u <= 1 - 2**-23
    # t1 + H < total in exact arithmetic; clamp to the float below total against rounding up.
    below_total = lax.bitcast_convert_type(
        lax.bitcast_convert_type(total, jnp.int32 if total.dtype == jnp.float32 else jnp.int64) - 1,
        total.dtype,
    )
    t2 = jnp.minimum(t1 + half, below_total)
    # total == 0 (at most one nonzero): keep the lowest position other than the maximum.
    spare = _first_other(is_dom)
    values, keep = [], []
    lo = jnp.zeros_like(s)
    for i, hi in enumerate(bounds):
        first, second = (lo <= t1) & (t1 < hi), (lo <= t2) & (t2 < hi)
        k = jnp.where(total > 0, first, spare[i]) | jnp.where(dominant, is_dom[i], second)
        keep.append(k)
        values.append(jnp.where(k, jnp.where(is_dom[i], a[i], jnp.copysign(half, a[i])), 0))
        lo = hi
    return values, keep


def approx_2_4_inclusion(b: list[jax.Array]) -> list[jax.Array]:
    """Inclusion probabilities of the two-step draw (first ``∝ b``, second ``∝ b`` among rest).

    ``π_k = b_k·(1/S + Σ_{l≠k} q_l)`` with ``q_l = (b_l / S) / r_l`` and ``r_l = S − b_l``
    summed directly from the other entries, so nothing cancels; terms with ``r_l = 0`` vanish.

    Args:
      b: four non-negative arrays of one shape, the magnitudes of a group's entries.

    Returns:
      four arrays of probabilities in ``[0, 1]`` summing to 2 (or fewer when a group has
      fewer than two nonzero entries).
    """
    s = b[0] + b[1] + b[2] + b[3]
    inv_s = 1 / jnp.where(s > 0, s, 1)
    q = []
    for i in range(4):
        r = sum(b[j] for j in range(4) if j != i)
        q.append(jnp.where(r > 0, (b[i] * inv_s) / jnp.where(r > 0, r, 1), 0))
    probs = []
    for k in range(4):
        others = sum(q[i] for i in range(4) if i != k)
        probs.append(jnp.where(b[k] > 0, jnp.minimum(b[k] * (inv_s + others), 1), 0))
    return probs


def _approx_2_4(a, u1, u2):
    b = [jnp.abs(ai) for ai in a]
    cum = _cumsum(b)
    s = cum[-1]
    first = _pick(cum[:-1], u1 * s)
    first = [jnp.where(s > 0, f, i == 0) for i, f in enumerate(first)]  # all zero: position 0
    rest = _cumsum([jnp.where(f, 0, bi) for f, bi in zip(first, b, strict=True)])
    r_tot = rest[-1]
    second = _pick(rest[:-1], u2 * r_tot)
    second = [jnp.where(r_tot > 0, o, f) for o, f in zip(second, _first_other(first), strict=True)]
    keep = [f | o for f, o in zip(first, second, strict=True)]
    pi = approx_2_4_inclusion(b)
    values = [
        jnp.where(k & (p > 0), ai / jnp.where(p > 0, p, 1), 0)
        for k, p, ai in zip(keep, pi, a, strict=True)
    ]
    return values, keep
