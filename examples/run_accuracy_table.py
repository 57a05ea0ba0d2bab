"""Example accuracy table: dense vs transposable N:M runs on digits, several seeds.

Runs every configuration for every seed in one process (each configuration compiles once),
writes ``runs/accuracy_table/results.json`` and prints a Markdown table of the final test
accuracy, mean ± standard deviation over seeds (``numpy.std`` with ``ddof=1``).

    python examples/run_accuracy_table.py --epochs 60 --seeds 0 1 2 3 4 5

Every configuration runs with one recipe (``--lr`` ... ``--mask-method``, defaults in
``RECIPE``), so dense and sparse runs stay comparable.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from nmexamples.training import (  # noqa: E402
    RECIPE_FIELDS,
    TrainConfig,
    add_recipe_arguments,
    recipe_kwargs,
    run_label,
    train,
)

CONFIGS = {
    "dense": dict(sparsity="dense"),
    "2:4-T + MVUE 1:2": dict(sparsity="2:4", transposable=True, grad_sparsity="mvue_1_2"),
    "4:8-T": dict(sparsity="4:8", transposable=True),
    "4:8-T + MVUE 1:2": dict(sparsity="4:8", transposable=True, grad_sparsity="mvue_1_2"),
}

# The table's recipe (the same for every configuration; the mask settings do not affect dense):
# 60 epochs, dense for the first 30% of steps, SR-STE 2e-3, optimal 2:4-T masks ("auto":
# exhaustive for 2:4, greedy for 4:8). Screened on 2:4-T + MVUE 1:2 (BENCHMARKS.md).
RECIPE = dataclasses.replace(
    TrainConfig(), epochs=60, sparse_start=0.3, srste=2e-3, mask_method="auto"
)


# TrainConfig fields with a flag here: model, epochs, the recipe, and the smoke-test limits.
RUN_FIELDS = ("model", "epochs", *RECIPE_FIELDS, "train_limit", "test_limit")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_recipe_arguments(p, RECIPE, RUN_FIELDS[:2])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    p.add_argument("--out", default="runs/accuracy_table")
    # the recipe: the same for every configuration (the mask settings do not affect dense)
    add_recipe_arguments(p, RECIPE, RUN_FIELDS[2:])
    a = p.parse_args(argv)
    out = Path(a.out)
    results = {}
    t_start = time.perf_counter()
    for name in a.configs:
        accs = []
        for seed in a.seeds:
            cfg = dataclasses.replace(
                RECIPE,
                **recipe_kwargs(a, RUN_FIELDS),
                **CONFIGS[name],
                seed=seed,
                resume=True,
                progress=False,
            )
            cfg = dataclasses.replace(cfg, out=str(out / run_label(cfg)))
            t0 = time.perf_counter()
            history = train(cfg)
            accs.append(history[-1]["test_acc"])
            print(f"{name} seed {seed}: test_acc {accs[-1]:.4f} ({time.perf_counter() - t0:.0f} s)")
        results[name] = accs
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"args": vars(a), "test_acc": results}, indent=2))
    print(f"\nwall {time.perf_counter() - t_start:.0f} s; recipe {json.dumps(_recipe(a))}")
    print(
        f"\n| {a.model}, digits, {a.epochs} epochs | test accuracy (%) | per seed | gap to dense |"
    )
    print("|---|---|---|---|")
    dense = 100 * np.mean(results["dense"]) if "dense" in results else None
    for name, accs in results.items():
        pct = 100 * np.asarray(accs)
        std = pct.std(ddof=1) if len(pct) > 1 else 0.0
        seeds = ", ".join(f"{x:.2f}" for x in pct)
        gap = "—"
        if dense is not None and name != "dense":
            gap = f"{round(pct.mean() - dense, 2) + 0.0:+.2f}"  # + 0.0: no "-0.00"
        print(f"| {name} | {pct.mean():.2f} ± {std:.2f} | {seeds} | {gap} |")
    return results


def _recipe(a: argparse.Namespace) -> dict:
    return recipe_kwargs(a, RECIPE_FIELDS)


if __name__ == "__main__":
    main()
