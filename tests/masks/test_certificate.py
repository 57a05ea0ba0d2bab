"""Optimality certificates: bound >= LP optimum >= mask value; gap 0 exactly at the optimum."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp
import tile_kinds
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import linprog

import jaxnm
from jaxnm.masks import certificate, device_exact, exact, fixed, greedy

NM = [(1, 2), (2, 4), (3, 4), (4, 8), (2, 8), (8, 16)]
#: The hypothesis properties' n:m in CI (each new n:m compiles the solvers and the
#: certificate; CI budget): 8:16 is checked by test_exact_device_masks_have_zero_gap, every
#: n:m of NM by the thorough test (``-m slow``).
NM_CI = [(1, 2), (2, 4), (4, 8)]
#: Tiles per example in CI; the thorough test (``-m slow``) checks 10,000 per n:m and kind.
TILES = 64
THOROUGH_TILES = 10_000
#: Examples per property: every example may compile a solver for a new n:m (CI budget).
EXAMPLES = 6


def draw(kind, b, m, seed):
    return tile_kinds.draw(kind, b, m, np.random.default_rng(seed))


def lp_masks(s, n):
    """The LP of every tile at once (block-diagonal, HiGHS): an optimal vertex per tile,
    integral by total unimodularity. Returns bool ``(B, m, m)``."""
    b, m, _ = s.shape
    one = sp.eye(m, format="csr")
    rows = sp.kron(one, np.ones((1, m)))  # tile row sums
    cols = sp.kron(np.ones((1, m)), one)
    a_eq = sp.block_diag([sp.vstack([rows, cols])] * b, format="csr")
    scale = s.reshape(b, -1).max(-1, keepdims=True)
    scale[scale == 0] = 1
    cost = -(s.reshape(b, -1) / scale).ravel()  # each tile in units of its largest score
    res = linprog(cost, A_eq=a_eq, b_eq=np.full(2 * m * b, n), bounds=(0, 1), method="highs")
    assert res.status == 0
    x = res.x.reshape(b, m, m)
    assert np.allclose(x, np.round(x), atol=1e-6)  # a vertex: integral
    keep = np.round(x).astype(bool)
    assert np.all(keep.sum(-1) == n) and np.all(keep.sum(-2) == n)
    return keep


def shortfall(s, best, keep):
    """Per tile ``value(best) - value(keep)``, correctly rounded (``math.fsum`` of exact
    float64 terms): a float64 ``retained`` difference can be off by more than a tile's
    certified gap when its scores span 16 decades."""
    terms = np.where(best, s.astype(np.float64), 0.0) - np.where(keep, s.astype(np.float64), 0.0)
    return np.array([math.fsum(t) for t in terms.reshape(len(s), -1)])


@functools.cache
def certify_fn(n):
    return jax.jit(lambda s, k: certificate.certify_tiles(s, k, n))


@functools.cache
def solver_fn(name, n):
    """One jitted solver per (name, n), shared by every test (no eager op-by-op calls)."""
    solve = {
        "greedy": greedy.solve,
        "plain_greedy": functools.partial(greedy.solve, improve_rounds=0),
        "exact_device": device_exact.solve,
    }[name]
    return jax.jit(lambda s: solve(s, n))


def masks_to_certify(solver, s, n):
    if solver == "shifted":  # a far-from-optimal valid mask: circulant band
        m = s.shape[-1]
        band = (np.arange(m)[None, :] - np.arange(m)[:, None]) % m < n
        return np.broadcast_to(band, s.shape)
    return np.asarray(solver_fn(solver, n)(jnp.asarray(s)))


def check_certificate(s, keep, n, best, slack):
    """bound >= the value of ``best`` (the LP's or OR-Tools' mask) >= the mask's value,
    up to ``slack`` (per tile, float64) for how far ``best`` may miss the optimum."""
    cert = jax.tree.map(lambda x: np.asarray(x, np.float64), certify_fn(n)(s, keep))
    value, optimum = tile_kinds.retained(s, keep), tile_kinds.retained(s, best)
    assert np.all(cert.bound >= optimum)  # any valid mask, the oracle's included
    assert np.all(optimum >= value - slack)
    assert np.all(cert.value <= value)
    assert np.all(cert.gap >= shortfall(s, best, keep))
    assert np.all(cert.bound >= cert.value + cert.gap * (1 - 1e-6))


@settings(max_examples=EXAMPLES)
@given(
    nm=st.sampled_from(NM_CI),
    kind=st.sampled_from(tile_kinds.KINDS),
    solver=st.sampled_from(["greedy", "exact_device", "shifted"]),
    seed=st.integers(0, 2**31 - 1),
)
def test_bound_above_lp_optimum_above_value(nm, kind, solver, seed):
    n, m = nm
    s = draw(kind, TILES, m, seed)
    # HiGHS works to ~1e-7 (in units of the tile's largest score): its vertex may miss
    # the optimum by that much on wide ranges, where the solvers are exact.
    top = s.reshape(len(s), -1).max(-1).astype(np.float64)
    check_certificate(s, masks_to_certify(solver, s, n), n, lp_masks(s, n), 1e-7 * n * m * top)


@pytest.mark.slow
@pytest.mark.parametrize("kind", tile_kinds.KINDS)
@pytest.mark.parametrize("n,m", NM)
def test_bound_above_optimum_above_value_thorough(n, m, kind):
    """10,000 random tiles per n:m and kind, every solver and the circulant mask; the
    optimum from OR-Tools (``exact``, integer costs at ``COST_BITS``: HiGHS would take
    minutes per 10,000 tiles), the LP on the first 256 tiles."""
    s = draw(kind, THOROUGH_TILES, m, 1000 * n + m)
    top = s.reshape(len(s), -1).max(-1).astype(np.float64)
    best = exact.solve_host(s, n)
    lp_part = slice(0, 256)
    lp_best = lp_masks(s[lp_part], n)
    for solver in ["greedy", "exact_device", "shifted"]:
        keep = masks_to_certify(solver, s, n)
        check_certificate(s, keep, n, best, 2 * m * n * 2.0**-exact.COST_BITS * top)
        check_certificate(s[lp_part], keep[lp_part], n, lp_best, 1e-7 * n * m * top[lp_part])


@settings(max_examples=max(4, EXAMPLES * 2 // 3))
@given(nm=st.sampled_from(NM_CI), seed=st.integers(0, 2**31 - 1))
def test_gap_is_zero_exactly_at_the_optimum(nm, seed):
    """Integer scores: float64 totals are exact, so "optimal" is decidable here."""
    n, m = nm
    s = draw("integers", TILES, m, seed)
    keep = np.asarray(solver_fn("plain_greedy", n)(jnp.asarray(s)))
    cert = certify_fn(n)(s, keep)
    optimal = tile_kinds.retained(s, keep) == tile_kinds.retained(s, lp_masks(s, n))
    np.testing.assert_array_equal(np.asarray(cert.gap) == 0, optimal)


@pytest.mark.slow  # in CI: test_solver_contract certifies exact_device at gap 0 on every kind
@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (8, 16)])
def test_exact_device_masks_have_zero_gap(n, m):
    s = np.concatenate([draw(kind, 64, m, 7) for kind in tile_kinds.KINDS])
    keep = solver_fn("exact_device", n)(jnp.asarray(s))
    gap = np.asarray(certify_fn(n)(s, keep).gap, np.float64)
    top = s.reshape(len(s), -1).max(-1)
    # Scores below the grid (2**-30 of the tile's largest) are rounded outwards: a tile
    # holding some may show at most one grid unit per entry; every other tile shows 0.
    on_grid = np.all((s == 0) | (s >= 2.0**-30 * top[:, None, None]), axis=(-2, -1))
    unit = 2.0 ** (np.frexp(top)[1] - fixed.frac_bits(m))
    assert np.all(gap[on_grid] == 0)
    assert np.all(gap <= m * m * unit)
    assert np.mean(on_grid) > 0.75  # all but (some) log-uniform tiles


def test_invalid_masks_get_an_infinite_gap():
    s = draw("normal", 4, 4, 0)
    keep = np.zeros((4, 4, 4), bool)
    keep[:, :2, :2] = True  # one row kept twice too few
    cert = certify_fn(2)(jnp.asarray(s), jnp.asarray(keep))
    assert np.all(np.isinf(cert.gap)) and np.all(np.isinf(cert.bound))


def test_non_finite_scores_certify_the_ranking_problem():
    s = draw("normal", 16, 8, 1)
    s[:, 0, 0] = np.inf
    s[:, 1, 1] = -1.0  # NaN marker
    keep = solver_fn("exact_device", 4)(jnp.asarray(s))
    cert = certify_fn(4)(jnp.asarray(s), keep)
    assert float(jnp.max(cert.gap)) == 0.0 and bool(jnp.all(jnp.isfinite(cert.bound)))


def test_layer_certificate_under_jit_and_vmap():
    w = jax.random.normal(jax.random.key(0), (3, 16, 32), jnp.bfloat16)
    mask = jax.jit(lambda w: jaxnm.transposable_mask(w, 4, 8, method="greedy"))(w)
    cert = jax.jit(lambda w, k: certificate.certify(w, k, 4, 8))(w, mask)
    assert cert.gap.shape == (3, 2, 4) and cert.gap.dtype == jnp.float32
    # jitted: an eager vmap would dispatch the Bellman–Ford loops op by op (CI time)
    batched = jax.jit(jax.vmap(lambda w, k: certificate.certify(w, k, 4, 8)))(w, mask)
    for a, b in zip(cert, batched, strict=True):
        np.testing.assert_array_equal(a, b)
    fraction = 1 - jnp.sum(cert.gap) / jnp.sum(cert.value)
    assert 0.99 < float(fraction) <= 1.0
