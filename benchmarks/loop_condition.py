"""Compile time of a ``while_loop`` over a long bool flag, by the form of its condition.

The whole-batch rounds of the mask solvers (:mod:`jaxnm.masks.compaction`) loop while any
tile is active. This compiles a loop of the same shape (a float32 ``(B,)`` state and a bool
``(B,)`` flag, ``B`` = 12,832 tiles, the CNN's 4:8 batch of ``benchmarks/startup.py``) with
each form of "any flag set" as its condition, cold (``jax.clear_caches()`` and
``gc.collect()`` first), alternating, and prints medians and the ratio to the form
``_any`` uses (``jnp.max`` of the flags as ``uint8``):

  python benchmarks/loop_condition.py [ROUNDS]   (default 7)
"""

from __future__ import annotations

import gc
import statistics
import sys
import time

import jax
import jax.numpy as jnp
from jax import lax

from jaxnm.masks.compaction import _any

TILES = 12_832

CONDITIONS = {
    "jnp.max(uint8) > 0 (jaxnm)": _any,
    "jnp.any": jnp.any,
    "jnp.sum(int32) > 0": lambda a: jnp.sum(a, dtype=jnp.int32) > 0,
    "jnp.max(int32) > 0": lambda a: jnp.max(a.astype(jnp.int32)) > 0,
    "flag[0] (no reduction)": lambda a: a[0],
}


def loop(condition):
    def run(x):
        def body(state):
            value, flag = state
            value = value * 1.0001 + 1.0
            return value, flag & (value < 10.0)

        return lax.while_loop(lambda s: condition(s[1]), body, (x, x > 0))[0]

    return run


def main(rounds: int) -> None:
    x = jnp.zeros(TILES, jnp.float32)
    jax.jit(lambda a: a + 1)(x).block_until_ready()  # XLA's one-time set-up
    times = {name: [] for name in CONDITIONS}
    for _ in range(rounds):
        for name, condition in CONDITIONS.items():
            jax.clear_caches()
            gc.collect()
            start = time.perf_counter()
            jax.jit(loop(condition)).lower(x).compile()
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times["jnp.max(uint8) > 0 (jaxnm)"])
    print(f"jax {jax.__version__}, {TILES} flags, medians of {rounds} cold compiles")
    print("| loop condition | compile ms | / jaxnm's |\n|---|---:|---:|")
    for name, runs in times.items():
        median = statistics.median(runs)
        print(f"| {name} | {1000 * median:.0f} | {median / base:.2f}x |")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 7)
