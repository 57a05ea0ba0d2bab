"""Layer masks (jaxnm.masks.layers): one solver call for many weights, the same masks as
solving every tile on its own (the tile-wise path sparsify used before), whatever the plan."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tile_kinds import retained

from jaxnm.masks import SOLVERS, layers
from jaxnm.masks.tiles import from_tiles, to_tiles
from jaxnm.masks.transposable import is_transposable_nm, transposable_mask


def tilewise(ws, n, m, method):
    """Reference: the public transposable_mask on every single m x m tile (vmap over the
    tiles of all weights at once, one compile), as sparsify solved layers before."""
    solve = jax.vmap(functools.partial(transposable_mask, n=n, m=m, method=method))
    tiles = [to_tiles(w, m) for w in ws]
    keep = solve(jnp.concatenate([t.reshape(-1, m, m).astype(jnp.float32) for t in tiles]))
    out, start = [], 0
    for t in tiles:
        count = t.size // (m * m)
        out.append(from_tiles(keep[start : start + count].reshape(t.shape)))
        start += count
    return out


def weights(m, big):
    rng = np.random.default_rng(0)
    shapes = [(8 * m, 4 * m), (3, 3, 2 * m, 4 * m), (4 * m, 8 * m)]
    if big:  # enough tiles for the greedy solvers' compacted buffers (B // 8 >= 64)
        shapes[0] = (64 * m, 32 * m)
    ws = [jnp.asarray(rng.standard_normal(s), jnp.float32) for s in shapes]
    ws[1] = ws[1].astype(jnp.bfloat16)
    ws[2] = ws[2].at[0, :3].set(jnp.array([jnp.nan, jnp.inf, -jnp.inf]))  # policy kept
    return ws


def retained_per_tile(w, keep, m):
    """float64 retained |w| of every m x m tile (NaN counted as -1, as the solvers do)."""
    scores = np.abs(np.asarray(to_tiles(w.astype(jnp.float32), m), np.float64))
    scores = np.where(np.isnan(scores), -1.0, scores).reshape(-1, m, m)
    return retained(scores, np.asarray(to_tiles(keep, m)).reshape(-1, m, m))


def check_same_masks(n, m, method, plans, big=False):
    ws = weights(m, big)
    expected = jax.jit(tilewise, static_argnums=(1, 2, 3))(ws, n, m, method)
    solver = SOLVERS[method]
    for plan, compact in plans:
        got = jax.jit(
            lambda ws, plan=plan, compact=compact: layers.layer_masks(
                ws, n, m, solver, plan=plan, compact=compact
            )
        )(ws)
        for w, a, b in zip(ws, got, expected, strict=True):
            assert a.shape == w.shape and a.dtype == jnp.bool_
            assert bool(is_transposable_nm(a, n, m))
            if method == "exact":
                # Min-cost flow solves each call's tiles as one graph, so among tied optima
                # (the bf16 weight) the one it returns depends on the batch: the same optimal
                # value (to the integer scaling's error, 2**-32 of a tile's largest score per
                # kept entry), not always the same mask.
                np.testing.assert_allclose(
                    retained_per_tile(w, a, m), retained_per_tile(w, b, m), rtol=1e-7, err_msg=plan
                )
                continue
            np.testing.assert_array_equal(a, b, err_msg=f"{method} {n}:{m} {plan} {compact}")


def test_greedy_4_8_compacted_and_whole_batch_match_tilewise():
    # ("flat", False): greedy takes `compact`, so it gets the whole batch, uncompacted.
    check_same_masks(4, 8, "greedy", [("flat", True), ("flat", False)], big=True)


def test_solvers_that_take_compact():
    from jaxnm.masks import device_exact, exhaustive, greedy, solvers

    assert solvers.takes_compact(greedy.solve)
    assert solvers.takes_compact(solvers.auto)
    assert solvers.takes_compact(functools.partial(greedy.solve, improve_rounds=1))
    # No `compact` keyword: solve_tiles vmaps these over single tiles.
    assert not solvers.takes_compact(exhaustive.solve)
    assert not solvers.takes_compact(device_exact.solve)
    assert not solvers.takes_compact(lambda scores, n: scores > 0)
    assert not solvers.takes_compact(lambda scores, n, **options: scores > 0)


def test_exhaustive_2_4_every_plan_matches_tilewise():
    check_same_masks(2, 4, "exhaustive", [("flat", True), ("flat", False), ("grid", None)])


@pytest.mark.slow
@pytest.mark.parametrize(
    "n,m,method",
    [
        (4, 8, "greedy"),
        (4, 8, "exact_device"),
        (2, 4, "greedy"),
        (8, 16, "greedy"),
        (4, 8, "exact"),
    ],
)
def test_other_solvers_match_tilewise(n, m, method):
    if method == "exact":
        pytest.importorskip("ortools")
    check_same_masks(
        n, m, method, [("flat", True), ("flat", False), ("grid", None)], big=method != "exact"
    )


@pytest.mark.parametrize("m", [4, 8, 16])
def test_packed_masks_are_the_packed_layer_masks(m):
    # The flat plan packs the tile batch at once (a tile's rows are one group): the same
    # words as packing every weight's mask. Any solver output exercises the layout.
    from jaxnm.masks.packing import pack

    ws = weights(m, big=False)
    ws.append(jnp.zeros((0, m), jnp.float32))  # no tiles: an empty packed mask

    def solver(s, n):
        return s > 0.5

    @jax.jit
    def both(ws):
        return {
            plan: (
                [pack(k, m) for k in layers.layer_masks(ws, 1, m, solver, plan=plan)],
                layers.layer_masks_packed(ws, 1, m, solver, plan=plan),
            )
            for plan in ("flat", "grid")
        }

    for plan, (expected, packed) in both(ws).items():
        for want, words in zip(expected, packed, strict=True):
            assert words.shape == want.shape and words.dtype == want.dtype
            np.testing.assert_array_equal(words, want, err_msg=f"m={m} {plan}")


def test_default_plan_and_compaction():
    w = jnp.ones((8, 8))
    assert layers.default_plan([w]) == ("flat" if jax.device_count() == 1 else "grid")
    assert not layers.default_compact(layers.COMPACT_MIN_TILES - 1)
    assert layers.default_compact(layers.COMPACT_MIN_TILES)


def test_errors():
    solver = SOLVERS["exhaustive"]
    with pytest.raises(ValueError, match=r"ws\[1\].*multiples of m=4"):
        layers.layer_masks([jnp.ones((4, 4)), jnp.ones((4, 6))], 2, 4, solver)
    with pytest.raises(ValueError, match=r"ws\[0\].*floating"):
        layers.layer_masks([jnp.ones((4, 4), jnp.int32)], 2, 4, solver)
    with pytest.raises(ValueError, match="`plan`"):
        layers.layer_masks([jnp.ones((4, 4))], 2, 4, solver, plan="tiles")
    assert layers.layer_masks([], 2, 4, solver) == []
