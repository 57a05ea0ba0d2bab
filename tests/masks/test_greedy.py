"""The greedy solver: the paper's greedy pass, repair, cycle cancelling, quality (jit/vmap/eager
agreement: tests/masks/test_solver_contract.py)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tile_kinds import KINDS, draw, retained

import jaxnm
from jaxnm.masks import compaction, exact, greedy, residual

NM = [(1, 2), (2, 4), (4, 8), (2, 8), (8, 16)]


def paper_greedy(tile, n):
    """Sequential reference: descending score, lower flat index first among ties."""
    m = tile.shape[0]
    order = sorted(range(m * m), key=lambda p: (-tile.flat[p], p))
    rows, cols = np.zeros(m, int), np.zeros(m, int)
    keep = np.zeros((m, m), bool)
    for p in order:
        r, c = divmod(p, m)
        if rows[r] < n and cols[c] < n:
            keep[r, c] = True
            rows[r] += 1
            cols[c] += 1
    return keep


def counts_ok(keep, n):
    keep = np.asarray(keep)
    return bool(np.all(keep.sum(-1) == n) and np.all(keep.sum(-2) == n))


# 12:40 needs two 32-bit words per row/column bit set; 3:5 a partly used byte.
@pytest.mark.parametrize("n,m", [(1, 2), (2, 4), (3, 5), (4, 8), (8, 16), (12, 40)])
def test_greedy_keep_matches_the_paper_greedy(n, m):
    rng = np.random.default_rng(m)
    # Distinct small integers (exact in the packed sort key), all-equal tiles (ties by
    # index) and NaN markers (-1).
    distinct = np.stack([rng.permutation(m * m).reshape(m, m) for _ in range(30)])
    equal = np.ones((2, m, m))
    nan_marked = np.where(rng.random((4, m, m)) < 0.3, -1.0, distinct[:4])
    tiles = np.concatenate([distinct, equal, nan_marked]).astype(np.float32)
    got = np.asarray(jax.jit(greedy.greedy_keep, static_argnums=1)(jnp.asarray(tiles), n))
    for tile, keep in zip(tiles, got, strict=True):
        np.testing.assert_array_equal(keep, paper_greedy(tile, n))


def test_rounds_without_masking_finished_tiles_match_the_masked_rounds():
    # A step whose finished tiles are fixed points (a counter that stops at its target):
    # stepping every tile every round gives the masked rounds' result, whether max_rounds
    # stops the loop first or every tile finishes.
    target = jnp.asarray([0, 1, 3, 5, 9], jnp.int32)

    def step(goal, k):
        new = jnp.minimum(k + 1, goal)
        return new, new < goal

    start = jnp.zeros(5, jnp.int32)
    for rounds in (0, 2, 4, 20):
        runs = [
            jax.jit(
                lambda s, fixed=fixed, rounds=rounds: compaction.compacted_rounds(
                    step, target, s, max_rounds=rounds, compact=False, finished_is_fixed=fixed
                )
            )(start)
            for fixed in (False, True)
        ]
        np.testing.assert_array_equal(runs[0], runs[1])
        np.testing.assert_array_equal(runs[1], np.minimum(target, rounds))


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (8, 16)])
def test_whole_batch_stages_match_the_compacted_stages(n, m):
    # compact=False steps every tile until none is active (finished tiles are fixed points
    # of the greedy round and of the repair); compact=True gathers the active ones into
    # smaller buffers (B // 8 >= 64 here). Every tile kind, plus +inf and NaN (-1) marks.
    rng = np.random.default_rng(m)
    s = np.concatenate([draw(kind, 80, m, rng) for kind in KINDS])
    marks = rng.random(s.shape)
    s = np.where(marks < 0.05, np.inf, np.where(marks > 0.95, -1.0, s)).astype(np.float32)
    s = residual.finite_scores(jnp.asarray(s))

    def stages(s, compact):
        kept = greedy.greedy_keep(s, n, compact=compact)
        return kept, greedy.repair(s, kept, n, compact=compact)

    run = jax.jit(stages, static_argnums=1)
    for got, want in zip(run(s, False), run(s, True), strict=True):
        np.testing.assert_array_equal(got, want)
    assert counts_ok(run(s, False)[1], n)


@functools.cache
def jitted_solve(n, rounds):
    """``jit(greedy.solve)``: one compile per setting, not op-by-op dispatch (CI time)."""
    return jax.jit(lambda s: greedy.solve(s, n, improve_rounds=rounds))


@settings(max_examples=6)
@given(
    nm=st.sampled_from(NM),
    kind=st.sampled_from(["normal", "integers", "nan_inf"]),
    rounds=st.sampled_from([0, None]),
    seed=st.integers(0, 2**31 - 1),
)
def test_solve_gives_exactly_n_per_row_and_column(nm, kind, rounds, seed):
    n, m = nm
    rng = np.random.default_rng(seed)
    if kind == "normal":
        s = np.abs(rng.standard_normal((8, m, m)))
    elif kind == "integers":  # many ties
        s = rng.integers(0, 3, (8, m, m)).astype(float)
    else:
        s = np.abs(rng.standard_normal((8, m, m)))
        s[rng.random(s.shape) < 0.2] = np.inf
        s[rng.random(s.shape) < 0.2] = -1.0  # NaN marker
    keep = jitted_solve(n, rounds)(jnp.asarray(s, jnp.float32))
    assert keep.dtype == jnp.bool_ and keep.shape == s.shape
    assert counts_ok(keep, n)


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (8, 16)])
def test_quality_against_the_optimum(n, m):
    s = np.abs(np.random.default_rng(n).standard_normal((256, m, m))).astype(np.float32)
    optimum = retained(s, exact.solve_host(s, n))
    scores = jnp.asarray(s)
    plain = retained(s, jax.jit(lambda s: greedy.solve(s, n, improve_rounds=0))(scores))
    keep = jax.jit(greedy.solve, static_argnums=1)(scores, n)
    value = retained(s, keep)
    assert counts_ok(keep, n)
    assert value.sum() >= 0.999 * optimum.sum()
    assert np.all(value >= 0.5 * optimum)
    assert np.all(value <= optimum * (1 + 1e-6))
    # Cycle cancelling never lowers a tile's score, and it does lift the aggregate.
    assert np.all(value >= plain - 1e-5 * optimum)
    assert value.sum() > plain.sum()


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_transposable_mask_greedy_dtypes(dtype):
    w = jax.random.normal(jax.random.key(1), (3, 16, 24), dtype)
    mask = jax.jit(lambda w: jaxnm.transposable_mask(w, 4, 8, method="greedy"))(w)
    assert mask.shape == w.shape and bool(jaxnm.is_transposable_nm(mask, 4, 8))


def test_default_rounds():
    assert [greedy.default_improve_rounds(m) for m in (2, 4, 8, 16, 32)] == [2, 2, 2, 4, 8]
