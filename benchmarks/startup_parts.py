"""Where the CNN's sparse first-step compile goes: lowering and XLA compile, timed apart.

Four versions of the ``benchmarks/startup.py`` CNN training step, in one process, each
cold (``jax.clear_caches()`` first), alternating, medians of ``ROUNDS`` (argument, default 3):

* ``dense``: ``optax.adamw``;
* ``sparse``: ``optax.chain(jaxnm.sparsify(4, 8, method="greedy"), optax.adamw)`` (the
  default ``solve_on="auto"``: on the CPU the refresh calls the solver compiled apart);
* ``sparse device``: the same with ``solve_on="device"``: the solver compiled into the step;
* ``no solver``: the same, with the refresh branch's solver replaced by "keep the masks" (a
  diagnostic patch of the private ``jaxnm._sparsify._solve_packed_tree``; the initial masks
  are still solved on the host), so ``sparse device - no solver`` is the solver's own trace
  + compile, ``sparse - no solver`` what the callback and the solver's trace (for the
  non-CPU branch of ``lax.platform_dependent``) cost, and ``no solver - dense`` everything
  else jaxnm adds to the step.

  python benchmarks/startup_parts.py [ROUNDS]
"""

from __future__ import annotations

import statistics
import sys

import jax
import jax.numpy as jnp
import optax
from startup import inputs, measure_parts, models

import jaxnm
import jaxnm._sparsify as sparsify_module


def main(rounds: int) -> None:
    model, shape = models(False)["cnn"]
    data = inputs(model, shape)
    jax.jit(lambda a: a + 1)(jnp.zeros(3)).block_until_ready()  # XLA's one-time set-up
    solve_tree = sparsify_module._solve_packed_tree

    def keep_masks(masks, params, *args, on_host, **kwargs):
        if on_host:  # init: the host twin, as in the real step
            return solve_tree(masks, params, *args, on_host=on_host, **kwargs)
        return masks

    def measure(kind: str) -> tuple[float, float]:
        sparse = kind != "dense"
        tx = optax.adamw(1e-3)
        if sparse:
            solve_on = "device" if kind == "sparse device" else "auto"
            tx = optax.chain(jaxnm.sparsify(4, 8, method="greedy", solve_on=solve_on), tx)
        sparsify_module._solve_packed_tree = keep_masks if kind == "no solver" else solve_tree
        try:
            return measure_parts(model, data, tx, sparse)[1:3]
        finally:
            sparsify_module._solve_packed_tree = solve_tree

    times = {"dense": [], "sparse": [], "sparse device": [], "no solver": []}
    for _ in range(rounds):
        for kind, runs in times.items():
            runs.append(measure(kind))
    print(f"jax {jax.__version__}, medians of {rounds} cold round(s)")
    print("| CNN step | lowering s | compile s | total s |\n|---|---:|---:|---:|")
    for kind, runs in times.items():
        low, comp = (statistics.median(r[i] for r in runs) for i in range(2))
        print(f"| {kind} | {low:.3f} | {comp:.3f} | {low + comp:.2f} |")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
