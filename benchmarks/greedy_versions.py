"""A device solver (``"greedy"`` or ``"exact_device"``) now versus at an earlier commit.

Loads the solver modules of ``jaxnm/masks/`` as they were at each ``--commit`` (``git
show``) into private modules, then times those ``solve`` functions and today's round-robin
on the same tiles (median after the compile call) and prints the ratios, the retained |w|
of each and, with ``--check``, how many tiles each leaves below the OR-Tools optimum
(``exact``, float64 totals; relative shortfall above ``1e-9``). Needs a git checkout.

    python benchmarks/greedy_versions.py --commit b172720 --size 4096 --nm 4:8 --reps 7
    python benchmarks/greedy_versions.py --solver exact_device --commit 97feb18 85b7929 \
        --dist cauchy --nm 2:4 4:8 8:16 --check
"""

from __future__ import annotations

import argparse
import re
import subprocess
import time
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxnm.masks import device_exact, exact, greedy

ROOT = Path(__file__).resolve().parent.parent
#: Modules of ``jaxnm.masks`` the device solvers are built from, dependencies first.
MODULES = ("fixed", "compaction", "residual", "certificate", "greedy", "exhaustive", "device_exact")


def load_at(commit: str, module: str = "greedy") -> types.ModuleType:
    """``jaxnm.masks.<module>`` as of ``commit``, with that commit's solver modules."""
    loaded: dict[str, types.ModuleType] = {}
    for name in MODULES:
        try:
            text = subprocess.run(
                ["git", "show", f"{commit}:jaxnm/masks/{name}.py"],
                cwd=ROOT,
                check=True,
                capture_output=True,
                text=True,
            ).stdout
        except subprocess.CalledProcessError:
            continue  # not there yet at that commit
        for dep in loaded:
            text = re.sub(rf"from jaxnm\.masks\.{dep} import", f"from _v.{dep} import", text)
            text = re.sub(
                rf"from jaxnm\.masks import (.*)\b{dep}\b", rf"from _v import \1{dep}", text
            )
        mod_ = types.ModuleType(f"{name}@{commit}")
        # Earlier modules are reachable as attributes of a fake `_v` package.
        package = types.ModuleType("_v")
        package.__dict__.update(loaded)
        import sys

        sys.modules["_v"] = package
        for dep, mod in loaded.items():
            sys.modules[f"_v.{dep}"] = mod
        exec(compile(text, f"{name}.py", "exec"), mod_.__dict__)
        loaded[name] = mod_
        if name == module:
            return loaded[name]
    raise ValueError(f"no jaxnm/masks/{module}.py at {commit}")


def scores(dist: str, tiles: int, m: int) -> jax.Array:
    x = jax.random.key(0)
    if dist == "cauchy":
        return jnp.abs(jax.random.cauchy(x, (tiles, m, m), jnp.float32))
    return jnp.abs(jax.random.normal(x, (tiles, m, m), jnp.float32))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--solver", choices=["greedy", "exact_device"], default="greedy")
    p.add_argument(
        "--commit", nargs="+", default=["b172720"], help="the earlier version(s), all timed"
    )
    p.add_argument("--size", type=int, default=4096)
    p.add_argument("--nm", nargs="+", default=["4:8"])
    p.add_argument("--dist", choices=["normal", "cauchy"], default="normal")
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--check", action="store_true", help="count tiles below the optimum")
    a = p.parse_args()
    module = {"greedy": "greedy", "exact_device": "device_exact"}[a.solver]
    versions = {f"{a.solver} @ {c}": load_at(c, module) for c in a.commit}
    now_k = f"{a.solver} (now)"
    versions[now_k] = {"greedy": greedy, "exact_device": device_exact}[a.solver]
    for nm in a.nm:
        n, m = map(int, nm.split(":"))
        tiles = (a.size // m) ** 2
        s = scores(a.dist, tiles, m)
        fns = {k: jax.jit(lambda x, n=n, v=v: v.solve(x, n)) for k, v in versions.items()}
        keep = {k: np.asarray(jax.block_until_ready(f(s))) for k, f in fns.items()}
        times = {k: [] for k in fns}
        for _ in range(a.reps):
            for k, f in fns.items():
                t = time.perf_counter()
                jax.block_until_ready(f(s))
                times[k].append(time.perf_counter() - t)
        med = {k: float(np.median(v)) for k, v in times.items()}
        host = np.asarray(s, np.float64)
        print(f"{a.size}x{a.size} {a.dist} float32 {n}:{m}, {tiles} tiles, median of {a.reps}:")
        if a.check:
            optimum = np.sum(host * exact.solve_host(np.asarray(s), n), axis=(-2, -1))
        for k in fns:
            value = np.sum(host * keep[k], axis=(-2, -1))
            line = f"  {k:28s} {med[k]:7.3f} s   retained |w| {value.sum():.9e}"
            if k != now_k:
                line += f"   same masks as now: {bool(np.array_equal(keep[k], keep[now_k]))}"
            if a.check:
                short = (optimum - value) / optimum
                below = int(np.sum(short > 1e-9))
                line += f"   tiles below optimum {below} (worst {short.max():.1e})"
            print(line)
        for k in fns:
            if k != now_k:
                print(f"  now / ({k}): {med[now_k] / med[k]:.3f}", flush=True)


if __name__ == "__main__":
    main()
