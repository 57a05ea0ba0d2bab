"""The on-device exact solver: optimal values, a negative-cycle certificate, identity."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tile_kinds import retained

import jaxnm
from jaxnm.masks import certificate, chunks, device_exact, exact, fixed, greedy, residual

NM = [(1, 2), (2, 4), (4, 8), (3, 8), (2, 8), (8, 16)]


def most_negative_cycle_mean(tile, keep):
    """float64 Floyd–Warshall on the residual row graph: min over rows of the closure
    diagonal (negative iff some cycle of the residual graph is negative)."""
    m = tile.shape[0]
    add = np.where(keep, np.inf, -tile)  # [u, c]
    drop = np.where(keep, tile, np.inf)  # [v, c]
    dist = np.min(add[:, None, :] + drop[None, :, :], axis=-1)  # [u, v]
    for k in range(m):
        dist = np.minimum(dist, dist[:, k : k + 1] + dist[k : k + 1, :])
    return np.min(np.diag(dist))


def tiles(kind, n_tiles, m, seed):
    rng = np.random.default_rng(seed)
    if kind == "normal":
        s = np.abs(rng.standard_normal((n_tiles, m, m)))
    elif kind == "integers":  # many ties
        s = rng.integers(0, 4, (n_tiles, m, m)).astype(float)
    else:  # wide dynamic range
        s = np.abs(rng.standard_normal((n_tiles, m, m))) * 10.0 ** rng.integers(
            -20, 20, (n_tiles, m, m)
        )
    return s.astype(np.float32)


@functools.cache
def jitted_solve(n, max_rounds=None):
    """``jit(device_exact.solve)`` per setting: one compile, not op-by-op dispatch (CI time)."""
    return jax.jit(lambda s: device_exact.solve(s, n, max_rounds=max_rounds))


@settings(max_examples=8)
@given(
    nm=st.sampled_from(NM),
    kind=st.sampled_from(["normal", "integers", "scaled"]),
    seed=st.integers(0, 2**31 - 1),
)
def test_equals_the_optimum(nm, kind, seed):
    n, m = nm
    s = tiles(kind, 24, m, seed)
    keep = np.asarray(jitted_solve(n)(jnp.asarray(s)))
    assert np.all(keep.sum(-1) == n) and np.all(keep.sum(-2) == n)
    value = retained(s, keep)
    optimum = retained(s, exact.solve_host(s, n))
    scale = s.reshape(len(s), -1).max(-1).astype(np.float64)
    # Documented bound (m * tol) plus float32 rounding of the tile's total.
    bound = 4 * m * m * np.finfo(np.float32).eps * scale + 1e-6 * optimum
    assert np.all(np.abs(value - optimum) <= bound)
    for tile, k, b in zip(s.astype(np.float64), keep, bound, strict=True):
        assert most_negative_cycle_mean(tile, k) >= -b


@pytest.mark.slow  # in CI: test_equals_the_optimum (OR-Tools) and test_solver_contract
@pytest.mark.parametrize("n,m", [(4, 8), (8, 16)])
def test_gaussian_tiles_are_optimal(n, m):
    s = tiles("normal", 256, m, n)
    keep = jitted_solve(n)(jnp.asarray(s))
    value = retained(s, keep)
    optimum = retained(s, exact.solve_host(s, n))
    np.testing.assert_allclose(value, optimum, rtol=2e-6)


def test_nan_and_inf():
    rng = np.random.default_rng(5)
    s = np.abs(rng.standard_normal((32, 8, 8)))
    s[rng.random(s.shape) < 0.2] = np.inf
    s[rng.random(s.shape) < 0.2] = -1.0  # NaN marker
    keep = np.asarray(jitted_solve(4)(jnp.asarray(s, jnp.float32)))
    assert np.all(keep.sum(-1) == 4) and np.all(keep.sum(-2) == 4)
    # As many infinite entries as a transposable tile can hold, then the best finite ones.
    inf = np.isinf(s).astype(np.float32)
    np.testing.assert_array_equal(retained(inf, keep), retained(inf, exact.solve_host(inf, 4)))
    finite = np.asarray(residual.finite_scores(jnp.asarray(s, jnp.float32)))
    np.testing.assert_allclose(
        retained(finite, keep), retained(finite, exact.solve_host(finite, 4)), rtol=1e-5
    )


def test_max_rounds_zero_is_the_repaired_greedy():
    s = jnp.asarray(tiles("normal", 16, 8, 0))

    plain = jax.jit(lambda s: greedy.solve(s, 4, improve_rounds=0))
    np.testing.assert_array_equal(jitted_solve(4, max_rounds=0)(s), plain(s))


def test_compacted_rounds_match_whole_batch_rounds():
    s = residual.finite_scores(jnp.asarray(tiles("normal", 96, 8, 3)))
    start = jax.jit(lambda s: greedy.solve(s, 4, improve_rounds=0))(s)
    cancel = jax.jit(
        residual.cancel_cycles, static_argnames=("max_rounds", "min_buffer", "whole_batch")
    )
    for rounds in (3, 50):  # stopped mid-way with tiles at different rounds; run to the end
        whole = cancel(s, start, max_rounds=rounds, min_buffer=96)
        assert not np.array_equal(whole, start)  # the rounds do change masks
        compact = cancel(s, start, max_rounds=rounds, min_buffer=2)
        np.testing.assert_array_equal(whole, compact)
        # Buffers of B // 8 from the first round on (tiles at different rounds share one).
        gathered = cancel(s, start, max_rounds=rounds, min_buffer=2, whole_batch=False)
        np.testing.assert_array_equal(whole, gathered)


def test_float_proof_in_chunks_equals_one_batch(monkeypatch):
    # 360 tiles in chunks of 60 (the largest divisor of 360 in [8, 64]): the same
    # verdicts as the whole batch at once, on optimal and on greedy-only masks.
    s = jnp.asarray(np.concatenate([tiles(k, 90, 8, 7) for k in ("normal", "integers")] * 2))
    keeps = [
        jnp.asarray(exact.solve_host(np.asarray(s), 4)),
        jax.jit(lambda s: greedy.solve(s, 4, improve_rounds=0))(s),
    ]
    monkeypatch.setattr(chunks, "CHUNK_TILES", 64)
    assert chunks.chunk_size(360, 64) == 60
    assert chunks.chunk_size(64, 64) == 64 and chunks.chunk_size(67 * 2, 64) == 67 * 2
    for keep in keeps:
        chunked = jax.jit(lambda s, k: certificate.proven_optimal_float(s, k))(s, keep)
        whole = jax.jit(certificate._proven_optimal_chunk)(s, keep)
        np.testing.assert_array_equal(chunked, whole)
        assert 0 < int(np.sum(whole)) < s.shape[0]  # both verdicts occur


def test_exact_fallback_batches_equal_whole_batch():
    # 4,096 tiles: 50 unproven tiles fit the small batch (64), 200 the larger one (256),
    # 600 take the whole-batch path. Every tile ends as the whole-batch exact cancelling
    # leaves it, and tiles not marked unproven are untouched.
    s = residual.finite_scores(jnp.asarray(tiles("integers", 4096, 8, 11)))
    start = jax.jit(lambda s: greedy.solve(s, 4, improve_rounds=0))(s)
    rng = np.random.default_rng(0)
    fallback = jax.jit(functools.partial(device_exact._exact_cancelling, max_rounds=128))
    whole = jax.jit(
        lambda s, k, u: residual.cancel_cycles(fixed.from_scores(s), k, max_rounds=128, active=u)
    )
    for count in (50, 200, 600):
        unproven = np.zeros(4096, bool)
        unproven[rng.choice(4096, count, replace=False)] = True
        got = fallback(s, start, jnp.asarray(unproven))
        np.testing.assert_array_equal(got, whole(s, start, jnp.asarray(unproven)))
        np.testing.assert_array_equal(np.asarray(got)[~unproven], np.asarray(start)[~unproven])
        assert not np.array_equal(np.asarray(got)[unproven], np.asarray(start)[unproven])


def test_transposable_mask_exact_device_under_jit():
    w = jax.random.normal(jax.random.key(2), (2, 16, 32), jnp.bfloat16)
    mask = jax.jit(lambda w: jaxnm.transposable_mask(w, 4, 8, method="exact_device"))(w)
    assert bool(jaxnm.is_transposable_nm(mask, 4, 8))
    reference = jaxnm.transposable_mask(w, 4, 8, method="exact")
    scores = jnp.abs(w.astype(jnp.float32))
    np.testing.assert_allclose(
        float(jnp.sum(jnp.where(mask, scores, 0))),
        float(jnp.sum(jnp.where(reference, scores, 0))),
        rtol=1e-6,
    )


def check_float_proof(n, m, seed, per_kind):
    """``proven_optimal_float`` (stage 2 of exact_device): proven => every cycle of the
    residual graph costs > 0 in float64, on optimal (OR-Tools) and on poor (circulant)
    masks of normal, tied and wide-range tiles; and it proves most optimal Gaussian tiles
    (else the exact stage would do all the work)."""
    kinds = ["normal", "integers", "scaled"]
    s = np.concatenate([tiles(kind, per_kind, m, seed + i) for i, kind in enumerate(kinds)])
    ar = np.arange(m)
    circulant = np.broadcast_to((ar[None, :] - ar[:, None]) % m < n, s.shape)
    best = exact.solve_host(s, n)
    prove = jax.jit(certificate.proven_optimal_float)
    for keep in (circulant, best):
        proven = np.asarray(prove(jnp.asarray(s), jnp.asarray(keep)))
        for tile, k in zip(s[proven].astype(np.float64), keep[proven], strict=True):
            assert most_negative_cycle_mean(tile, k) > 0
    gauss = np.asarray(prove(jnp.asarray(s[:per_kind]), jnp.asarray(best[:per_kind])))
    assert np.mean(gauss) > 0.8


def test_float_proof_never_proves_a_suboptimal_mask():
    check_float_proof(4, 8, seed=0, per_kind=32)


@pytest.mark.slow
@pytest.mark.parametrize("n,m", NM)
def test_float_proof_never_proves_a_suboptimal_mask_thorough(n, m):
    check_float_proof(n, m, seed=n * m, per_kind=2000 // m)
