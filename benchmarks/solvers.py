"""Transposable-mask solvers: time and quality per method, against baselines in the same run.

For each layer size and n:m, every method registered in ``jaxnm.masks.transposable``
(``exhaustive`` only where its pattern count is allowed) is timed as a jitted
``transposable_mask`` call: compile time apart, then the median of ``--repeats`` runs after
a warm-up. Quality is the retained ``|w|`` as a fraction of the exact optimum (from the
``exact`` method); "certified ≥" is the fraction of the optimum each mask is *proven* to
reach by :func:`jaxnm.masks.certify` (LP-dual bound, no exact solve; 1 means gap 0).
``--dists cauchy`` adds heavy-tailed (Cauchy) weights. Baselines run in the same process:

* ``networkx (per tile)``: what the reference code did, one ``networkx`` min-cost flow per
  tile (integer-scaled costs here, since float costs hang). Only ``--nx-tiles`` tiles are
  solved; the time is extrapolated to the whole layer (marked ``*``).
* ``plain greedy``: the paper's greedy pass without repair
  (``jaxnm.masks.greedy.greedy_keep``); its masks may leave rows/columns short, and the
  table says how many tiles are short.

Usage::

    python benchmarks/solvers.py                          # 1024^2 and 4096^2, 2:4 4:8 8:16
    python benchmarks/solvers.py --sizes 1024 --nm 4:8    # quick
    python benchmarks/solvers.py --methods greedy exact --repeats 5
    python benchmarks/solvers.py --dists normal cauchy --sizes 1024
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time

import jax
import jax.numpy as jnp
import networkx as nx
import numpy as np

import jaxnm
from jaxnm.masks import SOLVERS, certify, exact, exhaustive, greedy
from jaxnm.masks.scores import importance
from jaxnm.masks.tiles import from_tiles, to_tiles

BUILT_IN = sorted(set(SOLVERS) - {"auto"})  # "auto" dispatches to two of them


def _time(fn, arg, repeats: int, slow_s: float) -> tuple[float, float, object]:
    """Returns (compile s, median run s, output); one timed run if the warm-up is slow."""
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(arg).compile()
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    out = jax.block_until_ready(compiled(arg))  # warm-up
    warm_s = time.perf_counter() - start
    runs = []
    for _ in range(1 if warm_s > slow_s else repeats):
        start = time.perf_counter()
        out = jax.block_until_ready(compiled(arg))
        runs.append(time.perf_counter() - start)
    return compile_s, statistics.median(runs), out


def _networkx_tile(tile: np.ndarray, n: int) -> np.ndarray:
    """One tile as the reference did it: a networkx min-cost flow (integer costs)."""
    m = tile.shape[0]
    cost = np.rint(-tile / max(np.abs(tile).max(), 1e-30) * 2**30).astype(np.int64)
    g = nx.DiGraph()
    for i in range(m):
        g.add_node(("r", i), demand=-n)
        g.add_node(("c", i), demand=n)
    for i in range(m):
        for j in range(m):
            g.add_edge(("r", i), ("c", j), capacity=1, weight=int(cost[i, j]))
    flow = nx.min_cost_flow(g)
    return np.array([[flow[("r", i)][("c", j)] for j in range(m)] for i in range(m)], bool)


def _networkx_baseline(scores: np.ndarray, n: int, sample: int, rng):
    """Seconds per tile over ``sample`` random tiles, their indices, and their masks."""
    idx = rng.choice(len(scores), size=min(sample, len(scores)), replace=False)
    start = time.perf_counter()
    masks = np.stack([_networkx_tile(scores[i], n) for i in idx])
    per_tile = (time.perf_counter() - start) / len(idx)
    return per_tile, idx, masks


def certified(w, mask, n: int, m: int) -> float:
    """The mask's proven fraction of the optimum, ``1 - sum(gap) / sum(value)`` from
    :func:`jaxnm.masks.certify` (an LP-dual bound; no exact solve)."""
    cert = jax.jit(lambda w, k: certify(w, k, n, m))(w, mask)
    gap, value = float(jnp.sum(cert.gap)), float(jnp.sum(cert.value))
    return 1.0 - gap / value


def weights(size: int, dist: str) -> jax.Array:
    key = jax.random.key(0)
    if dist == "cauchy":  # heavy-tailed
        return jax.random.cauchy(key, (size, size), jnp.float32)
    return jax.random.normal(key, (size, size), jnp.float32)


def run(size, n, m, methods, repeats, nx_tiles, slow_s, dist="normal"):
    """Benchmarks one layer; returns table rows."""
    w = weights(size, dist)
    absw = np.abs(np.asarray(w, np.float64))
    tiles = np.asarray(to_tiles(importance(w), m)).reshape(-1, m, m)
    rows = []

    def retained(mask):
        return float(np.sum(absw * np.asarray(mask)))

    results = {}
    for method in ["exact", *[x for x in methods if x != "exact"]]:
        if method == "exhaustive" and not exhaustive.pattern_count_at_most(
            n, m, exhaustive.MAX_PATTERNS
        ):
            continue

        def fn(x, method=method):
            return jaxnm.transposable_mask(x, n, m, method=method)

        compile_s, run_s, mask = _time(fn, w, repeats, slow_s)
        assert bool(jaxnm.is_transposable_nm(mask, n, m)), method
        results[method] = (compile_s, run_s, retained(mask), certified(w, mask, n, m))
    optimum = results["exact"][2]

    # Baseline: plain greedy (no repair).
    def plain(x):
        t = to_tiles(importance(x), m)
        keep = greedy.greedy_keep(t.reshape(-1, m, m), n)
        return from_tiles(keep.reshape(t.shape))

    plain_compile_s, plain_s, plain_mask = _time(plain, w, repeats, slow_s)
    pm = np.asarray(to_tiles(plain_mask, m)).reshape(-1, m, m)
    short = np.mean(np.any(pm.sum(-1) < n, axis=-1))

    # Baseline: networkx per tile, sampled and extrapolated.
    per_tile, idx, nx_masks = _networkx_baseline(tiles, n, nx_tiles, np.random.default_rng(0))
    nx_s = per_tile * len(tiles)
    sample = tiles[idx].astype(np.float64)
    nx_quality = np.sum(sample * nx_masks) / np.sum(sample * exact.solve_host(tiles[idx], n))

    label = f"{size}² {dist}"
    for method in methods:
        if method not in results:
            continue
        compile_s, run_s, kept, cert = results[method]
        rows.append(
            (label, f"{n}:{m}", method, compile_s, run_s, nx_s / run_s, kept / optimum, cert, "")
        )
    rows.append(
        (
            label,
            f"{n}:{m}",
            "plain greedy (baseline)",
            plain_compile_s,
            plain_s,
            nx_s / plain_s,
            retained(plain_mask) / optimum,
            float("nan"),
            f"{short:.0%} of tiles short (invalid)",
        )
    )
    rows.append(
        (
            label,
            f"{n}:{m}",
            "networkx per tile (baseline)",
            float("nan"),
            nx_s,
            1.0,
            nx_quality,
            float("nan"),
            f"* {len(idx)} tiles timed, × {len(tiles)} extrapolated",
        )
    )
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--nm", nargs="+", default=["2:4", "4:8", "8:16"])
    parser.add_argument("--methods", nargs="+", default=BUILT_IN)
    parser.add_argument("--dists", nargs="+", choices=["normal", "cauchy"], default=["normal"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--nx-tiles", type=int, default=100)
    parser.add_argument(
        "--slow-s", type=float, default=20.0, help="one timed run when warm-up exceeds this"
    )
    args = parser.parse_args(argv)
    unknown = set(args.methods) - set(SOLVERS)
    if unknown:
        parser.error(f"unknown methods {sorted(unknown)}; registered: {BUILT_IN}")

    print(f"jax {jax.__version__} on {jax.devices()[0].platform}; median of {args.repeats} runs")
    print()
    print(
        "| layer | n:m | method | compile s | run s (median) | × vs networkx | "
        "retained / optimum | certified ≥ | note |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---|")
    for dist, size, nm in itertools.product(args.dists, args.sizes, args.nm):
        n, m = (int(v) for v in nm.split(":"))
        rows = run(size, n, m, args.methods, args.repeats, args.nx_tiles, args.slow_s, dist)
        for label, pat, method, compile_s, run_s, speedup, quality, cert, note in rows:
            comp = "–" if np.isnan(compile_s) else f"{compile_s:.2f}"
            star = "*" if "networkx" in method else ""
            proven = "–" if np.isnan(cert) else f"{cert:.6f}"
            print(
                f"| {label} | {pat} | {method} | {comp} | {run_s:.3g}{star} | "
                f"{speedup:.3g} | {quality:.5f} | {proven} | {note} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
