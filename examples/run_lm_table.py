"""Perplexity table: a byte-level GPT trained dense and with (transposable) N:M, several seeds.

Runs every configuration for every seed in one process (each configuration compiles once;
seeds outermost, so an interrupted table holds every row for the seeds it finished),
writes ``runs/lm_table/results.json`` and prints a Markdown table of the final validation
bits per byte (mean ± standard deviation over seeds, ``numpy.std`` with ``ddof=1``), the
gap to dense in bits per byte and the ratio of validation perplexities.

    python examples/run_lm_table.py --seeds 0 1 2

Every flag of ``examples/lm.py`` except the sparsity ones (set per configuration), ``--seed``
and ``--out`` may follow and applies to every configuration (model size, steps, data and the
sparse recipe), so all rows share one recipe; the defaults are ``RECIPE``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import lm  # noqa: E402
import numpy as np  # noqa: E402
from nmexamples.lm_training import LMConfig, train  # noqa: E402

CONFIGS = {
    "dense": dict(sparsity="dense", transposable=False),
    "4:8-T": dict(sparsity="4:8", transposable=True),
    "4:8-T + MVUE 1:2": dict(sparsity="4:8", transposable=True, grad_sparsity="mvue_1_2"),
    "2:4-T + MVUE 1:2": dict(sparsity="2:4", transposable=True, grad_sparsity="mvue_1_2"),
    "2:4": dict(sparsity="2:4", transposable=False),
}

# The table's recipe, the same for every row (the mask settings do not affect dense): the
# digits table's recipe (dense for the first 30% of steps, SR-STE 2e-3, optimal 2:4-T masks,
# refresh every 40 steps, masks frozen for the last 20%) on LMConfig's model, 1000 steps
# (50 warm-up), validated every 100.
RECIPE = dataclasses.replace(
    LMConfig(),
    steps=1000,
    warmup_steps=50,
    eval_every=100,
    sparse_start=0.3,
    srste=2e-3,
    mask_method="auto",
)
_PER_CONFIG = ("--sparsity", "--transposable", "--grad-sparsity", "--seed", "--out", "--resume")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Other flags are those of examples/lm.py and apply to every configuration.",
        allow_abbrev=False,  # "--seed" must not pass for "--seeds"
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    p.add_argument("--out", default="runs/lm_table")
    a, rest = p.parse_known_args(argv)
    clash = [f for f in rest if f.split("=")[0] in _PER_CONFIG]
    if clash:
        p.error(f"{clash} are set per configuration by the table; drop them.")
    base = lm.parse_args([*rest, "--no-progress"], defaults=RECIPE)
    out = Path(a.out)
    results: dict[str, list[dict]] = {name: [] for name in a.configs}
    t_start = time.perf_counter()
    # seeds outermost: an interrupted table has every row for the seeds it finished
    for seed in a.seeds:
        for name in a.configs:
            cfg = dataclasses.replace(base, **CONFIGS[name], seed=seed, resume=True)
            cfg = dataclasses.replace(cfg, out=str(out / lm.run_label(cfg)), progress=False)
            t0 = time.perf_counter()
            last = train(cfg)[-1]
            seconds = time.perf_counter() - t0
            results[name].append({"seed": seed, "seconds": seconds, **last})
            print(
                f"{name} seed {seed}: val_bpb {last['val_bpb']:.4f} ({seconds:.0f} s)", flush=True
            )
    out.mkdir(parents=True, exist_ok=True)
    recipe = {k: v for k, v in dataclasses.asdict(base).items() if k not in ("out", "progress")}
    (out / "results.json").write_text(
        json.dumps({"args": vars(a), "recipe": recipe, "runs": results}, indent=2) + "\n"
    )
    print(f"\nwall {time.perf_counter() - t_start:.0f} s; recipe {json.dumps(recipe)}")
    print(table(results, base))
    return results


def table(results: dict[str, list[dict]], cfg: LMConfig) -> str:
    """The Markdown table of ``results`` (``{row: [final metrics record per seed]}``)."""
    lines = [
        f"| {cfg.data}, {cfg.steps} steps | val bits/byte | per seed | gap to dense (bpb) "
        "| val ppl / dense ppl |",
        "|---|---|---|---|---|",
    ]
    dense = np.mean([r["val_loss"] for r in results["dense"]]) if "dense" in results else None
    for name, runs in results.items():
        bpb = np.asarray([r["val_bpb"] for r in runs])
        std = f"{bpb.std(ddof=1):.4f}" if len(bpb) > 1 else "— (1 seed)"
        seeds = ", ".join(f"{x:.4f}" for x in bpb)
        gap = ratio = "—"
        if dense is not None and name != "dense":
            loss = np.mean([r["val_loss"] for r in runs])
            gap = f"{round((loss - dense) / math.log(2), 4) + 0.0:+.4f}"  # + 0.0: no "-0.0000"
            ratio = f"{100 * (math.exp(loss - dense) - 1) + 0.0:+.2f}%"
        lines.append(f"| {name} | {bpb.mean():.4f} ± {std} | {seeds} | {gap} | {ratio} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
