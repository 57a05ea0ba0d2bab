"""The ``"greedy"`` transposable solver now versus at an earlier commit, same process.

Loads ``jaxnm/masks/greedy.py`` and ``jaxnm/masks/residual.py`` as they were at ``--commit``
(``git show``) into private modules, then times that ``solve`` and today's round-robin on
the same Gaussian tiles (median after the compile call) and prints the ratio and the
retained |w| of both. Needs a git checkout.

    python benchmarks/greedy_versions.py --commit b172720 --size 4096 --nm 4:8 --reps 7
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxnm.masks import greedy

ROOT = Path(__file__).resolve().parent.parent


def load_at(commit: str) -> types.ModuleType:
    """``jaxnm.masks.greedy`` as of ``commit`` (with that commit's ``residual``)."""

    def source(path: str) -> str:
        return subprocess.run(
            ["git", "show", f"{commit}:{path}"],
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
        ).stdout

    residual = types.ModuleType(f"residual_{commit}")
    exec(compile(source("jaxnm/masks/residual.py"), "residual.py", "exec"), residual.__dict__)
    sys.modules[residual.__name__] = residual
    text = source("jaxnm/masks/greedy.py").replace(
        "from jaxnm.masks.residual import", f"from {residual.__name__} import"
    )
    old = types.ModuleType(f"greedy_{commit}")
    exec(compile(text, "greedy.py", "exec"), old.__dict__)
    return old


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--commit", default="b172720", help="the earlier version")
    p.add_argument("--size", type=int, default=4096)
    p.add_argument("--nm", nargs="+", default=["4:8"])
    p.add_argument("--reps", type=int, default=7)
    a = p.parse_args()
    old = load_at(a.commit)
    for nm in a.nm:
        n, m = map(int, nm.split(":"))
        tiles = (a.size // m) ** 2
        s = jnp.abs(jax.random.normal(jax.random.key(0), (tiles, m, m), jnp.float32))
        fns = {
            f"greedy @ {a.commit}": jax.jit(lambda x, n=n: old.solve(x, n)),
            "greedy (now)": jax.jit(lambda x, n=n: greedy.solve(x, n)),
        }
        value = {}
        for k, f in fns.items():
            value[k] = float(jnp.sum(jnp.where(jax.block_until_ready(f(s)), s, 0.0)))
        times = {k: [] for k in fns}
        for _ in range(a.reps):
            for k, f in fns.items():
                t = time.perf_counter()
                jax.block_until_ready(f(s))
                times[k].append(time.perf_counter() - t)
        med = {k: float(np.median(v)) for k, v in times.items()}
        then, now = med[f"greedy @ {a.commit}"], med["greedy (now)"]
        print(f"{a.size}x{a.size} float32 {n}:{m}, {tiles} tiles, median of {a.reps}:")
        for k in fns:
            print(f"  {k:20s} {med[k]:7.3f} s   retained |w| {value[k]:.6e}")
        print(f"  now / then: {now / then:.3f}")


if __name__ == "__main__":
    main()
