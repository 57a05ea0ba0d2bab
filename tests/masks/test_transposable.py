"""Properties every transposable-mask method must have (iterates over all registered methods)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxnm
from jaxnm.masks import SOLVERS, exhaustive

METHODS = sorted(set(SOLVERS) - {"auto"})  # "auto" dispatches to two of them
NM = [(1, 2), (2, 4), (4, 8), (2, 8), (8, 16)]
DTYPES = [jnp.float32, jnp.bfloat16, jnp.float16]


@functools.cache
def mask_fn(method, n, m):
    """One jitted function per (method, n, m), shared by every test (compiles once/shape)."""
    return jax.jit(lambda x: jaxnm.transposable_mask(x, n, m, method=method))


def allowed(method, n, m):
    return method != "exhaustive" or exhaustive.pattern_count_at_most(n, m, exhaustive.MAX_PATTERNS)


def tile_counts(mask, m):
    """Numpy reference: per-tile row and column counts of ``mask (..., R, C)``."""
    mask = np.asarray(mask)
    *lead, rows, cols = mask.shape
    tiles = mask.reshape(*lead, rows // m, m, cols // m, m)
    return tiles.sum(axis=-1), tiles.sum(axis=-3)


def assert_valid(mask, shape, n, m):
    assert mask.shape == shape and mask.dtype == jnp.bool_
    row_counts, col_counts = tile_counts(mask, m)
    np.testing.assert_array_equal(row_counts, n)
    np.testing.assert_array_equal(col_counts, n)
    assert bool(jaxnm.is_transposable_nm(mask, n, m))


def make_weights(rng, shape, kind, dtype):
    """Random weights of a given flavour: plain, tied (integers / all equal), non-finite."""
    if kind == "normal":
        w = rng.standard_normal(shape)
    elif kind == "integers":
        w = rng.integers(-3, 4, shape).astype(float)
    elif kind == "equal":
        w = np.full(shape, 0.5)
    else:  # "nonfinite": normal with NaN, +inf, -inf sprinkled in
        w = rng.standard_normal(shape)
        u = rng.random(shape)
        w[u < 0.15] = np.nan
        w[(u >= 0.15) & (u < 0.25)] = np.inf
        w[(u >= 0.25) & (u < 0.3)] = -np.inf
    return jnp.asarray(w, dtype)


layers = given(
    nm=st.sampled_from(NM),
    lead=st.lists(st.integers(1, 2), max_size=2),
    tiles=st.tuples(st.integers(1, 2), st.integers(1, 3)),
    dtype=st.sampled_from(DTYPES),
    kind=st.sampled_from(["normal", "integers", "equal", "nonfinite"]),
    seed=st.integers(0, 2**31 - 1),
)


def check_every_mask_is_valid(method, nm, lead, tiles, dtype, kind, seed):
    n, m = nm
    if not allowed(method, n, m):
        return
    shape = (*lead, tiles[0] * m, tiles[1] * m)
    w = make_weights(np.random.default_rng(seed), shape, kind, dtype)
    # One jit compilation per example keeps this fast; eager = jit is tested below.
    mask = mask_fn(method, n, m)(w)
    assert_valid(mask, shape, n, m)


@pytest.mark.parametrize("method", sorted(set(METHODS) - {"exact_device"}))
@settings(max_examples=8)
@layers
def test_every_mask_is_valid(method, nm, lead, tiles, dtype, kind, seed):
    check_every_mask_is_valid(method, nm, lead, tiles, dtype, kind, seed)


# Each example compiles exact_device for its layer shape (~5 s): fewer examples in CI (its
# masks on every kind of tile: test_solver_contract).
@settings(max_examples=3 if settings.default.max_examples <= 20 else 8)
@layers
def test_every_exact_device_mask_is_valid(nm, lead, tiles, dtype, kind, seed):
    check_every_mask_is_valid("exact_device", nm, lead, tiles, dtype, kind, seed)


def _layer_plumbing_cases():
    """The layer-level plumbing (tiling, leading and non-leading vmapped axes) is the same for
    every solver; the solver contract (test_solver_contract.py) checks eager = jit = vmap for
    each solver on its tiles. CI runs greedy, exhaustive and auto; the exact solvers with
    ``-m slow`` (each eager call of them costs a compile per op; CI budget)."""
    cases = [(x, 4, 8) for x in METHODS if allowed(x, 4, 8)] + [
        ("exhaustive", 2, 4),
        ("auto", 2, 4),
    ]
    slow = {"exact", "exact_device"}
    return [pytest.param(*c, marks=[pytest.mark.slow] if c[0] in slow else []) for c in cases]


@pytest.mark.parametrize("method, n, m", _layer_plumbing_cases())
def test_jit_vmap_eager_identical_and_deterministic(method, n, m):
    w = make_weights(np.random.default_rng(0), (3, 2 * m, 3 * m), "normal", jnp.float32)

    def f(x):
        return jaxnm.transposable_mask(x, n, m, method=method)

    eager = f(w)
    assert_valid(eager, w.shape, n, m)
    np.testing.assert_array_equal(f(w), eager)
    np.testing.assert_array_equal(mask_fn(method, n, m)(w), eager)
    np.testing.assert_array_equal(jax.jit(jax.vmap(f))(w), eager)
    # vmap over an axis that is not the leading one.
    w4 = w.reshape(3, 2, m, 3 * m)
    per_slice = jax.jit(jax.vmap(f, in_axes=1, out_axes=1))(w4)
    np.testing.assert_array_equal(per_slice, f(w4))


@pytest.mark.parametrize("method", [*METHODS, "auto"])
def test_ties_are_deterministic(method):
    """Repeated calls agree (jitted; eager = jit: test_solver_contract.py)."""
    n, m = 2, 4
    w = make_weights(np.random.default_rng(1), (2, 8, 8), "integers", jnp.float32)
    first = mask_fn(method, n, m)(w)
    np.testing.assert_array_equal(mask_fn(method, n, m)(w + 0), first)
    np.testing.assert_array_equal(mask_fn(method, n, m)(jnp.array(np.asarray(w))), first)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("n, m", [(1, 2), (2, 4), (4, 8)])
def test_inf_pattern_is_kept(method, n, m):
    """A tile whose +inf entries form a full pattern must return exactly that pattern."""
    if not allowed(method, n, m):
        pytest.skip("exhaustive is not allowed for this n:m")
    rng = np.random.default_rng(2)
    cols = (np.arange(m)[:, None] + np.arange(n)[None, :] + 1) % m  # circulant pattern
    pattern = np.zeros((m, m), bool)
    np.put_along_axis(pattern, cols, True, axis=1)
    pattern = pattern[rng.permutation(m)]
    w = np.where(pattern, -np.inf, rng.standard_normal((m, m)) * 10)
    mask = mask_fn(method, n, m)(jnp.asarray(w, jnp.float32))
    np.testing.assert_array_equal(mask, pattern)


@pytest.mark.parametrize("method", [*METHODS, "auto"])
def test_all_nan_and_all_inf_tiles(method):
    # The shape of test_ties_are_deterministic: the same compiled solver.
    w = jnp.stack([jnp.full((8, 8), jnp.nan), jnp.full((8, 8), jnp.inf)])
    assert_valid(mask_fn(method, 2, 4)(w), w.shape, 2, 4)


@pytest.mark.parametrize("method", METHODS)
def test_empty_batch(method):
    w = jnp.zeros((0, 4, 8))
    mask = jaxnm.transposable_mask(w, 2, 4, method=method)
    assert mask.shape == w.shape and mask.dtype == jnp.bool_


def test_auto_uses_exhaustive_when_cheap_and_greedy_otherwise():
    w = make_weights(np.random.default_rng(3), (8, 16), "normal", jnp.float32)
    np.testing.assert_array_equal(
        jaxnm.transposable_mask(w, 2, 4), jaxnm.transposable_mask(w, 2, 4, method="exhaustive")
    )
    np.testing.assert_array_equal(
        jaxnm.transposable_mask(w, 4, 8), jaxnm.transposable_mask(w, 4, 8, method="greedy")
    )


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: jaxnm.transposable_mask(jnp.ones((8, 8), jnp.int32), 2, 4), r"floating.*\(8, 8\)"),
        (lambda: jaxnm.transposable_mask(jnp.ones((8, 8)), 0, 4), "`n` \\(=0\\)"),
        (lambda: jaxnm.transposable_mask(jnp.ones((8, 8)), -1, 4), "`n` \\(=-1\\)"),
        (lambda: jaxnm.transposable_mask(jnp.ones((8, 8)), 5, 4), "`n` \\(=5\\).*m=4"),
        (lambda: jaxnm.transposable_mask(jnp.ones((6, 8)), 2, 4), r"\(6, 8\).*multiples of m=4"),
        (lambda: jaxnm.transposable_mask(jnp.ones((8, 6)), 2, 4), r"\(8, 6\).*multiples of m=4"),
        (lambda: jaxnm.transposable_mask(jnp.ones((8,)), 2, 4), r"\(8,\).*rank >= 2"),
        (lambda: jaxnm.transposable_mask(jnp.ones((8, 8)), 2, 4, method="ilp"), "'ilp'"),
        (
            lambda: jaxnm.transposable_mask(jnp.ones((8, 8)), 4, 8, method="exhaustive"),
            "exhaustive.*4:8",
        ),
        (lambda: jaxnm.is_transposable_nm(jnp.ones((6, 8)), 2, 4), r"\(6, 8\)"),
    ],
)
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_non_int_n_is_type_error():
    with pytest.raises(TypeError, match="`n`"):
        jaxnm.transposable_mask(jnp.ones((8, 8)), 2.0, 4)


def test_methods_are_one_vocabulary_and_solvers_plug_in():
    import typing

    assert set(typing.get_args(jaxnm.masks.MaskMethod)) == set(SOLVERS)
    with pytest.raises(TypeError):
        SOLVERS["mine"] = SOLVERS["greedy"]  # read-only: no global registry
    w = jax.random.normal(jax.random.key(3), (8, 16))
    calls = []

    def mine(scores, n):  # the solver contract: float32 (B, m, m), n -> bool (B, m, m)
        calls.append((scores.shape, scores.dtype, n))
        return SOLVERS["exhaustive"](scores, n)

    np.testing.assert_array_equal(
        jaxnm.transposable_mask(w, 2, 4, method=mine),
        jaxnm.transposable_mask(w, 2, 4, method="exhaustive"),
    )
    assert calls == [((8, 4, 4), jnp.float32, 2)]
    with pytest.raises(TypeError, match="solver callable"):
        jaxnm.transposable_mask(w, 2, 4, method=3)
    with pytest.raises(ValueError, match=r"\['auto', 'exact', 'exact_device', 'exhaustive'"):
        jaxnm.transposable_mask(w, 2, 4, method="ilp")


def test_eager_calls_compile_once_and_unhashable_solvers_still_work():
    """An eager call is one compiled program per shape and solver (a second call traces
    nothing); a solver object that cannot be a static argument is traced as is."""
    w = jax.random.normal(jax.random.key(4), (8, 16))
    traced = []

    def counting(scores, n):
        traced.append(scores.shape)
        return SOLVERS["exhaustive"](scores, n)

    first = jaxnm.transposable_mask(w, 2, 4, method=counting)
    np.testing.assert_array_equal(first, jaxnm.transposable_mask(w, 2, 4, method="exhaustive"))
    second = jaxnm.transposable_mask(-w[::-1], 2, 4, method=counting)
    np.testing.assert_array_equal(second, first[::-1])
    assert traced == [(8, 4, 4)]  # the second call reused the compiled program

    class Unhashable:
        __hash__ = None

        def __call__(self, scores, n):
            return SOLVERS["exhaustive"](scores, n)

    np.testing.assert_array_equal(jaxnm.transposable_mask(w, 2, 4, method=Unhashable()), first)
