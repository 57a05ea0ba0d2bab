"""Layer masks: compacted flat batch vs uncompacted vs the tile grid, same run, same masks.

One random Gaussian float32 layer per size, solved by :func:`jaxnm.masks.layers.layer_masks`
up to four ways: ``plan="grid"`` (every tile its own vmapped solve: the path sparsify took before,
sharding-safe), ``plan="flat", compact=False`` (one flat batch, vmapped single tiles) and
``plan="flat", compact=True`` (one flat batch handed to the solver, which compacts it to the
tiles still working); and, where the solver has a NumPy twin
(:func:`jaxnm.masks.layers.host_solver`), ``layer_masks_host`` on the host (no compile: the
initial masks of ``sparsify``, and its refreshes with ``solve_on="host"``). Printed:
compile seconds and the median run seconds, the ratio of each to the first variant, and
whether the masks agree (they must). This decides :data:`jaxnm.masks.layers.COMPACT_MIN_TILES`.

  python benchmarks/layer_masks.py [--sizes 512 1024 2048] [--nm 4:8] [--method greedy]
      [--reps 3] [--variants flat host ...]

Ratios are to the first variant measured (the grid path by default).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import numpy as np

from jaxnm.masks import SOLVERS, layers

VARIANTS = {
    "grid (tile-wise)": dict(plan="grid", compact=None),
    "flat": dict(plan="flat", compact=False),
    "flat compacted": dict(plan="flat", compact=True),
    "host": None,  # layer_masks_host with the solver's NumPy twin
}


def time_host(w, n, m, host, reps):
    """(0 compile seconds, median run seconds, mask) of the host solve, from NumPy weights."""
    w = np.asarray(w)
    out = layers.layer_masks_host([w], n, m, host)[0]
    runs = []
    for _ in range(reps):
        start = time.perf_counter()
        layers.layer_masks_host([w], n, m, host)
        runs.append(time.perf_counter() - start)
    return 0.0, statistics.median(runs), out


def time_variant(w, n, m, solver, reps, **kwargs):
    fn = jax.jit(lambda w: layers.layer_masks([w], n, m, solver, **kwargs)[0])
    start = time.perf_counter()
    compiled = fn.lower(w).compile()
    compile_s = time.perf_counter() - start
    out = jax.block_until_ready(compiled(w))
    runs = []
    for _ in range(reps):
        start = time.perf_counter()
        jax.block_until_ready(compiled(w))
        runs.append(time.perf_counter() - start)
    return compile_s, statistics.median(runs), np.asarray(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048])
    parser.add_argument("--nm", nargs="+", default=["4:8"])
    parser.add_argument("--method", default="greedy", choices=sorted(SOLVERS))
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args()
    print(f"jax {jax.__version__}, load average {os.getloadavg()[0]:.2f}, method {args.method}")
    print("| layer | n:m | tiles | variant | compile s | run s | compile / grid | run / grid |")
    print("|---|---|---:|---|---:|---:|---:|---:|")
    for nm in args.nm:
        n, m = (int(x) for x in nm.split(":"))
        for size in args.sizes:
            rng = np.random.default_rng(size)
            w = jax.numpy.asarray(rng.standard_normal((size, size)), jax.numpy.float32)
            results = {}
            solver = SOLVERS[args.method]
            for name in args.variants:
                if VARIANTS[name] is not None:
                    results[name] = time_variant(w, n, m, solver, args.reps, **VARIANTS[name])
                elif (host := layers.host_solver(solver, n, m)) is not None:
                    results[name] = time_host(w, n, m, host, args.reps)
            base_c, base_r, base_mask = next(iter(results.values()))
            base_c = base_c or float("nan")
            for name, (c, r, mask) in results.items():
                same = "" if np.array_equal(mask, base_mask) else " MASKS DIFFER"
                print(
                    f"| {size}² | {n}:{m} | {size * size // (m * m)} | {name}{same} | {c:.2f} | "
                    f"{r:.3g} | {c / base_c:.2f} | {r / base_r:.2f} |",
                    flush=True,
                )
    print(f"COMPACT_MIN_TILES = {layers.COMPACT_MIN_TILES}")


if __name__ == "__main__":
    main()
