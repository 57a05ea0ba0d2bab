"""Exhaustive enumeration: the pattern table, tie-breaking, and agreement with exact."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxnm
from jaxnm.masks import exact, exhaustive


@pytest.mark.parametrize("n, m", [(1, 1), (1, 2), (2, 4), (1, 4), (3, 4), (4, 4), (2, 5), (1, 6)])
def test_patterns_are_all_distinct_admissible_tiles(n, m):
    patterns = exhaustive.tile_patterns(n, m)
    assert patterns.shape == (jaxnm.count_transposable_tiles(n, m), m, m)
    assert np.all(patterns.sum(axis=-1) == n) and np.all(patterns.sum(axis=-2) == n)
    assert len({p.tobytes() for p in patterns}) == len(patterns)


def test_pattern_limits():
    assert exhaustive.pattern_count_at_most(2, 4, 90)
    assert not exhaustive.pattern_count_at_most(2, 4, 89)
    assert exhaustive.pattern_count_at_most(16, 16, 1)  # a single all-ones pattern
    assert not exhaustive.pattern_count_at_most(8, 16, exhaustive.MAX_PATTERNS)
    with pytest.raises(ValueError, match="2:8 has 187530840"):
        exhaustive.tile_patterns(2, 8)
    with pytest.raises(ValueError, match="at least 16!"):
        exhaustive.check_exhaustive(8, 16)


def test_ties_go_to_the_first_pattern():
    w = jnp.ones((2, 4, 4))
    mask = jaxnm.transposable_mask(w, 2, 4, method="exhaustive")
    np.testing.assert_array_equal(mask[0], exhaustive.tile_patterns(2, 4)[0])
    np.testing.assert_array_equal(mask[0], [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]])


def totals(scores, keep):
    return np.sum(scores.astype(np.float64) * keep, axis=(-2, -1))


@settings(max_examples=15)
@given(
    nm=st.sampled_from([(2, 4), (1, 2), (1, 4), (3, 4)]),
    kind=st.sampled_from(["normal", "integers"]),
    seed=st.integers(0, 2**31 - 1),
)
def test_exhaustive_equals_exact(nm, kind, seed):
    n, m = nm
    rng = np.random.default_rng(seed)
    if kind == "normal":
        scores = np.abs(rng.standard_normal((64, m, m)))
    else:
        scores = rng.integers(0, 3, (64, m, m)).astype(float)
    scores = scores.astype(np.float32)
    by_enum = np.asarray(jax.jit(lambda s: exhaustive.solve(s, n))(jnp.asarray(scores)))
    by_flow = exact.solve_host(scores, n)
    want = totals(scores, by_flow)
    # Equal up to float32 rounding of the matmul totals (exact on integer scores).
    np.testing.assert_allclose(totals(scores, by_enum), want, rtol=2e-6, atol=0)
    if kind == "normal":  # optimum unique with probability 1 (up to rounding)
        assert np.mean(np.all(by_enum == by_flow, axis=(-2, -1))) > 0.95


def test_low_precision_inputs_are_scored_in_float32():
    """bf16 weights whose totals differ only below bf16 resolution are still ranked right."""
    # Pattern 0 (the tie winner) drops (3, 0); summed in bf16 every total would be 4.0.
    w = jnp.asarray([[1.0, 1.0, 1.0, 1.0]] * 3 + [[1.0078125, 1.0, 1.0, 1.0]], jnp.bfloat16)
    assert not exhaustive.tile_patterns(2, 4)[0][3, 0]
    mask = jaxnm.transposable_mask(w, 2, 4, method="exhaustive")
    assert bool(mask[3, 0])
