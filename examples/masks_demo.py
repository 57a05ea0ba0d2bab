"""Transposable N:M masks for a random layer: every method's time and quality, and diversity.

For a random Gaussian ``(size, size)`` Dense kernel (``(in, out)``, groups along ``in``) this
computes 2:4 and 4:8 transposable masks with each solver (``exhaustive`` only where its
pattern count is small), checks they are valid, and prints the median time of a jitted call
(compile time apart) and the retained ``|w|`` as a fraction of the exact optimum. Plain
(non-transposable) N:M masks and mask-diversity figures are printed for comparison.

    python examples/masks_demo.py               # 1024 x 1024, well under a minute on 2 cores
    python examples/masks_demo.py --size 4096   # the benchmark's large layer
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp

import jaxnm
from jaxnm.masks import SOLVERS, exhaustive

PATTERNS = ((2, 4), (4, 8))

BUILT_IN = sorted(set(SOLVERS) - {"auto"})  # "auto" dispatches to two of them


def _timed(fn, w, repeats: int):
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(w).compile()
    compile_s = time.perf_counter() - start
    out = jax.block_until_ready(compiled(w))  # warm-up
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = jax.block_until_ready(compiled(w))
        runs.append(time.perf_counter() - start)
    return out, compile_s, statistics.median(runs)


def compare_methods(w: jax.Array, n: int, m: int, repeats: int = 3) -> list[dict]:
    """Runs every applicable transposable method on ``w``; returns one record per method."""
    methods = [
        name
        for name in BUILT_IN
        if name != "exhaustive" or exhaustive.pattern_count_at_most(n, m, exhaustive.MAX_PATTERNS)
    ]
    absw = jnp.abs(w)
    records = []
    for name in methods:
        mask, compile_s, run_s = _timed(
            lambda x, name=name: jaxnm.transposable_mask(x, n, m, method=name), w, repeats
        )
        records.append(
            {
                "method": name,
                "valid": bool(jaxnm.is_transposable_nm(mask, n, m)),
                "compile_s": compile_s,
                "run_s": run_s,
                "retained": float(jnp.sum(absw * mask)),
            }
        )
    optimum = next(r["retained"] for r in records if r["method"] == "exact")
    for r in records:
        r["quality"] = r["retained"] / optimum
    return records


def main(argv: list[str] | None = None) -> list[dict]:
    """Prints the comparison for a random ``size x size`` layer; returns the records."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1024, help="layer is size x size")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    w = jax.random.normal(jax.random.key(args.seed), (args.size, args.size), jnp.float32)
    total = float(jnp.sum(jnp.abs(w)))
    print(f"random {args.size}x{args.size} float32 layer on {jax.devices()[0].platform}")
    all_records = []
    for n, m in PATTERNS:
        plain = float(jnp.sum(jnp.abs(w) * jaxnm.nm_mask(w, n, m))) / total
        print(f"\n{n}:{m} transposable (plain {n}:{m} along `in` keeps {plain:.4f} of |w|)")
        print(
            f"  {'method':<14}{'valid':>6}{'compile s':>11}{'run s':>9}{'kept |w|':>10}"
            f"{'vs exact':>10}"
        )
        for r in compare_methods(w, n, m, args.repeats):
            print(
                f"  {r['method']:<14}{r['valid']!s:>6}{r['compile_s']:>11.2f}"
                f"{r['run_s']:>9.4f}{r['retained'] / total:>10.4f}{r['quality']:>10.5f}"
            )
            all_records.append({"n": n, "m": m, **r})

    size = args.size * args.size
    print(f"\nmask diversity: log10(number of admissible masks), {args.size}² layer and 8x8 region")
    kinds = [("unstructured 50%", 2, 4, "unstructured")]
    for n, m in PATTERNS:
        kinds += [(f"{n}:{m}", n, m, "nm"), (f"{n}:{m} transposable", n, m, "transposable")]
    for name, n, m, kind in kinds:
        layer = jaxnm.mask_diversity(n, m, size, kind=kind)
        region = 10 ** jaxnm.mask_diversity(n, m, 64, kind=kind)
        print(f"  {name:<20}{layer:>14,.0f}   8x8: {region:.3e}")
    return all_records


if __name__ == "__main__":
    main()
