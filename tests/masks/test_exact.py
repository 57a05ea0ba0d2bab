"""The exact solver against an independent LP optimum, and its integer scaling."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import linprog

import jaxnm
from jaxnm.masks import SOLVERS, exact, exhaustive, greedy
from jaxnm.masks.scores import importance
from jaxnm.masks.tiles import to_tiles

NM = [(1, 2), (2, 4), (4, 8), (2, 8), (8, 16)]


def lp_optimum(tile, n):
    """Max ``sum(tile * x)`` over the transportation polytope (integral: TU matrix)."""
    m = tile.shape[0]
    a_eq = np.zeros((2 * m, m * m))
    for i in range(m):
        a_eq[i, i * m : (i + 1) * m] = 1  # row i
        a_eq[m + i, i::m] = 1  # column i
    res = linprog(-tile.ravel(), A_eq=a_eq, b_eq=np.full(2 * m, n), bounds=(0, 1), method="highs")
    assert res.status == 0
    return -res.fun


def tiles_of(w, m):
    """float64 ``(B, m, m)`` scores exactly as the solvers see them (``|w|``, NaN -> -1)."""
    return np.asarray(to_tiles(importance(w), m), np.float64).reshape(-1, m, m)


@settings(max_examples=15)
@given(
    nm=st.sampled_from(NM),
    kind=st.sampled_from(["normal", "integers", "scaled"]),
    seed=st.integers(0, 2**31 - 1),
)
def test_exact_equals_lp_optimum(nm, kind, seed):
    n, m = nm
    rng = np.random.default_rng(seed)
    if kind == "normal":
        w = rng.standard_normal((2 * m, 2 * m))
    elif kind == "integers":  # many ties
        w = rng.integers(0, 4, (2 * m, 2 * m)).astype(float)
    else:  # wide dynamic range
        w = rng.standard_normal((2 * m, 2 * m)) * 10.0 ** rng.integers(-8, 9, (2 * m, 2 * m))
    w = jnp.asarray(w, jnp.float32)
    mask = jaxnm.transposable_mask(w, n, m, method="exact")
    scores = tiles_of(w, m)
    kept = tiles_of(mask.astype(jnp.float32), m) > 0
    # HiGHS works to ~1e-7 tolerances: fine for O(1) scores, not for 16 decades.
    lp_tol = 1e-7 * m * n if kind == "scaled" else 1e-9
    for tile, keep in zip(scores, kept, strict=True):
        top = np.abs(tile).max() or 1.0  # an all-zero tile keeps its scale
        optimum = lp_optimum(tile / top, n)  # the LP in units of the tile's largest score
        # Integer scaling error bound: 2 m n 2**-COST_BITS of the tile's largest score.
        tol = 2 * m * n * 2.0**-exact.COST_BITS + lp_tol
        assert abs(np.sum(tile / top * keep) - optimum) <= tol


@functools.cache
def mask_fn(method, n, m):
    """One jitted function per (method, n, m): the fixed shapes below compile once."""
    return jax.jit(lambda x: jaxnm.transposable_mask(x, n, m, method=method))


@pytest.mark.slow  # in CI the solver contract (test_solver_contract.py) checks the same bounds
@settings(max_examples=10)
@given(nm=st.sampled_from(NM), seed=st.integers(0, 2**31 - 1))
def test_every_method_keeps_at_least_half_of_optimum_on_every_tile(nm, seed):
    n, m = nm
    w = jnp.asarray(np.random.default_rng(seed).standard_normal((2 * m, 3 * m)), jnp.float32)
    scores = tiles_of(w, m)
    exact_keep = tiles_of(mask_fn("exact", n, m)(w), m) > 0
    opt = np.sum(scores * exact_keep, axis=(-2, -1))
    for method in sorted(set(SOLVERS) - {"auto"}):
        if method == "exhaustive" and not exhaustive.pattern_count_at_most(
            n, m, exhaustive.MAX_PATTERNS
        ):
            continue
        keep = tiles_of(mask_fn(method, n, m)(w), m) > 0
        got = np.sum(scores * keep, axis=(-2, -1))
        assert np.all(got >= 0.5 * opt), method
        assert np.all(got <= opt * (1 + 1e-6)), method  # nothing beats the optimum


def test_plain_greedy_pass_also_keeps_half():
    """The paper's 2-approximation bound holds for the greedy pass before repair."""
    rng = np.random.default_rng(0)
    for n, m in [(2, 4), (4, 8)]:
        scores = np.abs(rng.standard_normal((64, m, m))).astype(np.float32)
        keep = np.asarray(greedy.greedy_keep(jnp.asarray(scores), n))
        opt = np.sum(scores * exact.solve_host(scores, n), axis=(-2, -1))
        assert np.all(np.sum(scores * keep, axis=(-2, -1)) >= 0.5 * opt)


def test_power_of_two_rescaling_gives_same_mask():
    """Tiles are scaled by powers of two, so 2**k * w gives the same integer problem."""
    scores = np.abs(np.random.default_rng(1).standard_normal((32, 8, 8))).astype(np.float32)
    base = exact.solve_host(scores, 4)
    for k in (-30, -3, 5, 40):
        np.testing.assert_array_equal(exact.solve_host(np.ldexp(scores, k), 4), base)


def test_integer_gains_tiers():
    tile = np.array([[[np.inf, 1.0], [-1.0, 0.0]]], np.float32)
    gains = exact.integer_gains(tile, 1)
    inf_gain, one, nan, zero = gains.ravel()
    assert zero == 0 and nan < 0 < one
    assert one <= 2**exact.COST_BITS
    # one +inf entry outweighs any difference of finite totals (2 m n entries).
    assert inf_gain > 2 * 2 * 1 * 2**exact.COST_BITS
    # a NaN marker stays below zero even next to huge scores.
    huge = exact.integer_gains(np.array([[[3e38, -1.0], [0.0, 0.0]]], np.float32), 1)
    assert huge[0, 0, 1] < 0


def test_nan_avoided_when_complement_is_free():
    """With NaN on a full 2:4 pattern, the complement (also 2:4) keeps no NaN."""
    tile = np.ones((4, 4), np.float32)
    nan_at = np.eye(4, dtype=bool) | np.roll(np.eye(4, dtype=bool), 1, axis=1)
    tile[nan_at] = -1.0
    keep = exact.solve_host(tile[None], 2)[0]
    assert not np.any(keep & nan_at)


def test_split_into_several_calls_matches_one_call(monkeypatch):
    scores = np.abs(np.random.default_rng(2).standard_normal((50, 4, 4))).astype(np.float32)
    one_call = exact.solve_host(scores, 2)
    monkeypatch.setattr(exact, "_INT64_BUDGET", 2**39)  # forces a few tiles per call
    assert exact._tiles_per_call(2**exact.COST_BITS, 2, 4) < 50
    np.testing.assert_array_equal(exact.solve_host(scores, 2), one_call)


def test_host_function_keeps_leading_axes():
    scores = np.abs(np.random.default_rng(3).standard_normal((2, 3, 4, 4))).astype(np.float32)
    keep = exact.solve_host(scores, 2)
    assert keep.shape == scores.shape and keep.dtype == bool
    np.testing.assert_array_equal(
        keep.reshape(6, 4, 4), exact.solve_host(scores.reshape(6, 4, 4), 2)
    )


def test_under_jit_and_nested_vmap():
    w = jax.random.normal(jax.random.key(4), (2, 3, 8, 8))
    eager = jaxnm.transposable_mask(w, 4, 8, method="exact")

    def f(x):
        return jaxnm.transposable_mask(x, 4, 8, method="exact")

    np.testing.assert_array_equal(jax.jit(jax.vmap(jax.vmap(f)))(w), eager)
