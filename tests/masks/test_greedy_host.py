"""The NumPy twin of the greedy solver (jaxnm.masks.greedy_host) gives the device solver's
masks bit for bit, and sparsify's init uses it: the same masks, no solver compile."""

import contextlib
import logging
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxnm
from jaxnm.masks import SOLVERS, greedy, greedy_host, layers, residual
from jaxnm.masks.packing import pack, pack_host
from jaxnm.masks.scores import importance

KINDS = ("normal", "ties", "special", "tiny", "subnormal", "wide", "cauchy")


@contextlib.contextmanager
def compiled_functions():
    """Names of the functions jax compiles inside the block (``jax.log_compiles``' records),
    e.g. ``jit(_solve_packed)`` for sparsify's compiled solver."""
    names = []

    class Record(logging.Handler):
        def emit(self, record):
            message = record.getMessage()
            if message.startswith("Compiling "):
                names.append(message.removeprefix("Compiling ").split(" with ")[0])

    handler, logger = Record(), logging.getLogger("jax")
    logger.addHandler(handler)
    try:
        with jax.log_compiles(True):
            yield names
    finally:
        logger.removeHandler(handler)


def solver_compiles(names):
    return [name for name in names if "solve" in name]


def raw(kind: str, shape, seed: int) -> np.ndarray:
    """float32 weights of one distribution: ties, zeros, ±inf, NaN, subnormal and tiny
    magnitudes (where XLA:CPU flushes subnormal results) included."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32)
    if kind == "ties":
        x = np.round(x * 2) / 2
    elif kind == "special":
        r = rng.random(shape)
        x[r < 0.05] = np.inf
        x[(r > 0.05) & (r < 0.1)] = np.nan
        x[(r > 0.1) & (r < 0.2)] = 0
        x[(r > 0.2) & (r < 0.3)] *= np.float32(1e-39)  # subnormal
        x[(r > 0.3) & (r < 0.35)] = -np.inf
    elif kind == "tiny":  # normal, but differences and tolerances are subnormal
        x *= np.float32(1e-37)
    elif kind == "subnormal":
        x *= np.float32(2.0**-110)
    elif kind == "wide":
        x *= np.exp(rng.standard_normal(shape) * 10).astype(np.float32)
    elif kind == "cauchy":
        x = rng.standard_cauchy(shape).astype(np.float32)
    return x


def scores(tiles: int, m: int, seed: int = 0) -> np.ndarray:
    """float32 (B, m, m) solver input, every distribution of KINDS."""
    parts = [raw(k, (tiles, m, m), seed + i) for i, k in enumerate(KINDS)]
    return np.asarray(importance(jnp.concatenate([jnp.asarray(p) for p in parts])))


def check_host_equals_device(n: int, m: int, tiles: int) -> None:
    s = scores(tiles, m)
    expected = np.asarray(jax.jit(greedy.solve, static_argnums=1)(s, n))
    got = greedy_host.solve(s, n)
    assert got.dtype == np.bool_ and got.shape == s.shape
    bad = np.nonzero(np.any(got != expected, axis=(1, 2)))[0]
    assert bad.size == 0, f"{n}:{m}: {bad.size} tiles differ, first {bad[:5]}"


@pytest.mark.slow
@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (2, 8), (4, 8), (6, 8), (8, 16), (3, 6)])
def test_host_greedy_equals_device_greedy(n, m):
    """Every distribution at many n:m (the fast suite checks 4:8 through sparsify)."""
    check_host_equals_device(n, m, tiles=4000 if m <= 8 else 600)


@pytest.mark.parametrize("m", [8, pytest.param(6, marks=pytest.mark.slow)])
def test_pairwise_sum_is_the_host_order(m):
    """finite_scores' +inf substitute (a pairwise sum) is the same on host and device."""
    s = scores(64, m)
    device = np.asarray(jax.jit(residual.finite_scores)(s))
    np.testing.assert_array_equal(
        greedy_host.finite_scores(s).view(np.int32), device.view(np.int32)
    )


def test_host_greedy_chunks_and_errors():
    s = scores(40, 8)
    whole = greedy_host.solve(s, 4)
    chunk = greedy_host.CHUNK
    try:
        greedy_host.CHUNK = 7
        np.testing.assert_array_equal(greedy_host.solve(s, 4), whole)
    finally:
        greedy_host.CHUNK = chunk
    assert greedy_host.solve(np.zeros((0, 8, 8), np.float32), 4).shape == (0, 8, 8)
    with pytest.raises(ValueError, match="scores"):
        greedy_host.solve(np.zeros((8, 8), np.float32), 4)


def test_pack_host_equals_pack():
    rng = np.random.default_rng(0)
    for m, shape in [(4, (3, 8, 12)), (8, (16, 5)), (16, (32, 3)), (32, (2, 64, 4))]:
        mask = rng.random(shape) < 0.5
        got = pack_host(mask, m)
        np.testing.assert_array_equal(got, np.asarray(pack(jnp.asarray(mask), m)))
        assert got.dtype == pack(jnp.asarray(mask), m).dtype


def test_host_solver_twins():
    assert layers.host_solver(SOLVERS["greedy"], 2, 4) is greedy_host.solve
    assert layers.host_solver(SOLVERS["auto"], 4, 8) is greedy_host.solve
    assert layers.host_solver(SOLVERS["auto"], 2, 4) is None  # exhaustive there
    assert layers.host_solver(SOLVERS["exact_device"], 4, 8) is None
    assert layers.host_solver(lambda s, n: greedy.solve(s, n), 4, 8) is None


def params_all_kinds():
    """A params tree whose kernels mix every distribution (two per kernel, by rows) and
    float dtype."""
    specs = [
        ((3, 3, 16, 32), jnp.float32, "special", "tiny"),
        ((64, 48), jnp.bfloat16, "ties", "cauchy"),
        ((32, 16), jnp.float16, "normal", "special"),
        ((16, 24), jnp.float32, "subnormal", "wide"),
    ]
    tree = {}
    for i, (shape, dtype, top, bottom) in enumerate(specs):
        half = (*shape[:-2], shape[-2] // 2, shape[-1])
        x = np.concatenate([raw(top, half, i), raw(bottom, half, 10 + i)], axis=-2)
        tree[f"layer{i}"] = {"kernel": jnp.asarray(x, dtype), "bias": jnp.zeros(shape[-1])}
    return tree


@pytest.mark.parametrize("method", ["greedy", pytest.param("auto", marks=pytest.mark.slow)])
def test_sparsify_init_masks_equal_the_compiled_solver(method):
    """init solves on the host (no solver compile; the jitted solver's cache stays
    unchanged), eagerly and under jit, and its masks are the compiled refresh solver's."""
    params = params_all_kinds()
    # A DenseGeneral-style kernel (in, heads, head_dim), masked on its (16, 16) view.
    params["attn"] = {"kernel": jnp.asarray(raw("cauchy", (16, 8, 2), 7))}
    default = jaxnm.default_include(8, True)

    def include(path, leaf):
        return jaxnm.KernelView(1) if path[0] == "attn" else default(path, leaf)

    tx = jaxnm.sparsify(4, 8, method=method, include=include)
    with compiled_functions() as names:
        eager = tx.init(params)
        traced = jax.jit(tx.init)(params)
    assert not solver_compiles(names), names
    on_device = jaxnm.sparsify(4, 8, method=method, include=include, solve_on="device")
    with compiled_functions() as names:  # the control: the compiled solver is seen
        compiled = on_device.init(params).masks
    assert solver_compiles(names), names
    leaves = jax.tree.leaves(compiled)
    assert len(leaves) == 5
    for got_eager, got_traced, want in zip(
        jax.tree.leaves(eager.masks), jax.tree.leaves(traced.masks), leaves, strict=True
    ):
        assert got_eager.dtype == want.dtype and got_eager.shape == want.shape
        np.testing.assert_array_equal(got_eager, want)
        np.testing.assert_array_equal(got_traced, want)


def test_solve_on_host_refreshes_in_the_step_without_a_solver_compile():
    """solve_on="host": the refresh branch solves through a host callback; its masks are
    those init solves from the same params, and the jitted solver is never compiled."""
    params = params_all_kinds()
    grads = jax.tree.map(jnp.ones_like, params)
    tx = jaxnm.sparsify(4, 8, method="greedy", refresh_every=1, solve_on="host")
    with compiled_functions() as names:
        state = tx.init(params)
        moved = jax.tree.map(lambda p, g: (p - 0.5 * g).astype(p.dtype), params, grads)
        _, new = jax.jit(tx.update)(grads, state, moved)
    assert names and not solver_compiles(names), names  # the step compiled, no solver
    expected = tx.init(moved).masks
    changed = False
    for got, want, old in zip(
        jax.tree.leaves(new.masks),
        jax.tree.leaves(expected),
        jax.tree.leaves(state.masks),
        strict=True,
    ):
        np.testing.assert_array_equal(got, want)
        changed |= not np.array_equal(got, old)
    assert changed


def _callbacks(hlo: str) -> list[str]:
    return [t for t in re.findall(r'custom_call_target="([^"]+)"', hlo) if "callback" in t]


def test_solve_on_auto_refreshes_on_cpu_by_the_solver_compiled_apart():
    """solve_on="auto" on the CPU: the step's compile holds no solver (its refresh branch
    calls the jitted solver through a callback), the solver compiles once at the first
    refresh and is shared by a second step function, under vmap too, and the masks are
    bit for bit those of solve_on="device" (the solver compiled into the step)."""
    params = params_all_kinds()
    params["attn"] = {"kernel": jnp.asarray(raw("cauchy", (16, 8, 2), 7))}
    default = jaxnm.default_include(8, True)

    def include(path, leaf):
        return jaxnm.KernelView(1) if path[0] == "attn" else default(path, leaf)

    grads = jax.tree.map(jnp.ones_like, params)
    moved = jax.tree.map(lambda p, g: (p - 0.5 * g).astype(p.dtype), params, grads)
    auto = jaxnm.sparsify(4, 8, method="greedy", refresh_every=1, include=include)
    device = jaxnm.sparsify(
        4, 8, method="greedy", refresh_every=1, include=include, solve_on="device"
    )
    state = auto.init(params)
    jax.clear_caches()  # no solver compiled by an earlier test
    with compiled_functions() as names:
        step = jax.jit(auto.update).lower(grads, state, moved).compile()
    assert names and not solver_compiles(names), names
    assert len(_callbacks(step.as_text())) == 1, "the refresh's callback is missing"
    # The callback compiles on its own thread, which jax.log_compiles does not see: the
    # jitted solver's cache counts its compiles.
    solver = jaxnm._sparsify._solve_packed
    assert solver._cache_size() == 0
    _, new = step(grads, state, moved)
    jax.block_until_ready(new)
    assert solver._cache_size() == 1
    with compiled_functions() as names:  # another step function: the same solver
        _, again = jax.jit(lambda g, s, p: auto.update(g, s, p))(grads, state, moved)
        batched = jax.vmap(auto.update, in_axes=(None, None, 0))(
            grads, state, jax.tree.map(lambda a, b: jnp.stack([a, b]), params, moved)
        )[1]
        jax.block_until_ready((again, batched))
    assert names and not solver_compiles(names), names
    assert solver._cache_size() == 1
    in_step = jax.jit(device.update).lower(grads, state, moved).compile()
    assert not _callbacks(in_step.as_text())
    _, want = in_step(grads, state, moved)
    changed = False
    for got, got_again, got_batched, expected, old in zip(
        jax.tree.leaves(new.masks),
        jax.tree.leaves(again.masks),
        jax.tree.leaves(batched.masks),
        jax.tree.leaves(want.masks),
        jax.tree.leaves(state.masks),
        strict=True,
    ):
        assert got.dtype == expected.dtype and got.shape == expected.shape
        np.testing.assert_array_equal(got, expected)
        np.testing.assert_array_equal(got_again, expected)
        np.testing.assert_array_equal(got_batched[0], old)  # the params it was given
        np.testing.assert_array_equal(got_batched[1], expected)
        changed |= not np.array_equal(got, old)
    assert changed


def test_solve_on_auto_refresh_reuses_the_solver_init_compiled():
    """A solver without a NumPy twin (2:4 exhaustive) is compiled by an eager init; the
    refresh branch's callback reuses that executable instead of compiling another."""
    params = {
        "conv": {"kernel": jnp.asarray(raw("normal", (3, 3, 8, 16), 1))},
        "dense": {"kernel": jnp.asarray(raw("ties", (32, 8), 2), jnp.bfloat16)},
    }
    grads = jax.tree.map(jnp.ones_like, params)
    moved = jax.tree.map(lambda p, g: (p - 0.5 * g).astype(p.dtype), params, grads)
    tx = jaxnm.sparsify(2, 4, method="exhaustive", refresh_every=1)
    solver = jaxnm._sparsify._solve_packed
    jax.clear_caches()
    state = tx.init(params)
    assert solver._cache_size() == 1
    step = jax.jit(tx.update).lower(grads, state, moved).compile()
    assert len(_callbacks(step.as_text())) == 1  # the refresh calls the solver apart
    _, new = step(grads, state, moved)
    jax.block_until_ready(new)
    assert solver._cache_size() == 1  # ... the one init compiled
    want = jaxnm.sparsify(2, 4, method="exhaustive", solve_on="device").init(moved).masks
    for got, expected in zip(jax.tree.leaves(new.masks), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(got, expected)


def test_solve_on_errors():
    with pytest.raises(ValueError, match="solve_on"):
        jaxnm.sparsify(4, 8, solve_on="gpu")
    with pytest.raises(ValueError, match="NumPy twin"):
        jaxnm.sparsify(2, 4, method="auto", solve_on="host")  # exhaustive: no twin
    with pytest.raises(ValueError, match="NumPy twin"):
        jaxnm.sparsify(4, 8, transposable=False, solve_on="host")
    assert "solve_on" in jaxnm.SPARSIFY_STATIC_ARGS
