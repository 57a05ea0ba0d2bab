"""On-device transposable solvers ("greedy", "exact_device") against baselines, same run.

Baselines: the paper's plain greedy (`greedy.greedy_keep`, no repair: tiles may be short)
and greedy + repair without cycle cancelling. Quality is retained |w| over the optimum
(from "exact_device", checked against OR-Tools "exact" on a sample of tiles). Methods are
timed round-robin (each repetition runs every method once) so that load drift on a shared
machine hits all of them alike; figures are medians, compile time is reported apart.

    python benchmarks/device_solvers.py --size 4096 --nm 4:8 --reps 5
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxnm.masks import device_exact, exact, greedy


def methods(n: int):
    return {
        "paper greedy (baseline)": lambda s: greedy.greedy_keep(s, n),
        "greedy+repair (baseline)": lambda s: greedy.solve(s, n, improve_rounds=0),
        "greedy": lambda s: greedy.solve(s, n),
        "exact_device": lambda s: device_exact.solve(s, n),
    }


def run(size: int, n: int, m: int, reps: int) -> None:
    tiles = (size // m) ** 2
    s = jnp.abs(jax.random.normal(jax.random.key(0), (tiles, m, m), jnp.float32))
    fns = {k: jax.jit(f) for k, f in methods(n).items()}
    first, value, times = {}, {}, {k: [] for k in fns}
    for k, f in fns.items():
        t = time.perf_counter()
        keep = jax.block_until_ready(f(s))
        first[k] = time.perf_counter() - t
        value[k] = float(jnp.sum(jnp.where(keep, s, 0.0)))
    sample = np.asarray(s[:2000])
    ref = exact.solve_host(sample, n)
    dev = np.asarray(fns["exact_device"](s)[:2000])
    gap = abs(np.sum(np.where(dev, sample, 0)) / np.sum(np.where(ref, sample, 0)) - 1)
    for _ in range(reps):
        for k, f in fns.items():
            t = time.perf_counter()
            jax.block_until_ready(f(s))
            times[k].append(time.perf_counter() - t)
    base = float(np.median(times["greedy+repair (baseline)"]))
    print(
        f"{size}x{size} float32, {n}:{m}, {tiles} tiles; exact_device vs OR-Tools on 2000 "
        f"tiles: relative gap {gap:.1e}"
    )
    for k in fns:
        med = float(np.median(times[k]))
        print(
            f"  {k:26s} {med:7.3f} s  (compile + first call {first[k]:6.1f} s)  "
            f"quality {value[k] / value['exact_device']:.5f}  time / greedy+repair "
            f"{med / base:.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--nm", nargs="+", default=["2:4", "4:8", "8:16"])
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    for size in args.size:
        for nm in args.nm:
            n, m = (int(x) for x in nm.split(":"))
            run(size, n, m, args.reps)


if __name__ == "__main__":
    main()
