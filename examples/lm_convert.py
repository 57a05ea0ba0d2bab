"""Convert a trained dense byte-level GPT to transposable N:M without retraining, then fine-tune.

Loads a dense run written by ``lm.py`` (``--run DIR``) and, for each requested sparsity,
reports the validation loss and bits per byte of

* the dense model,
* magnitude-only N:M (masks from |w|, nothing re-fitted: ``jaxnm.convert.magnitude_prune``),
* AdaPrune (``jaxnm.convert.adaprune``: magnitude masks, then the kept weights of each block
  ``nnx.Linear`` re-fitted by masked least squares on calibration windows from the training
  text, layer after layer),
* each of the two after a short sparse fine-tune (``--finetune-steps`` steps of the same
  train step with ``jaxnm.sparsify``; the masks are those of the converted model and stay
  fixed).

Writes ``convert.json`` to ``--out``. Example::

    python examples/lm_convert.py --run runs/lm_table/lm_stdlib_dense_seed0 --out runs/lm_convert
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

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402
from nmexamples import lm_training, text  # noqa: E402

from jaxnm import convert  # noqa: E402


def finetune(model, cfg: lm_training.LMConfig, corpus: text.Corpus, n: int, m: int, steps: int):
    """``steps`` sparse training steps from ``model``'s (already N:M) weights, masks fixed.

    Returns:
      a new model (in the N:M training ops, masks from the converted weights).
    """
    sparsity = f"{n}:{m}"
    ft = dataclasses.replace(
        cfg,
        sparsity=sparsity,
        transposable=True,
        grad_sparsity="none",
        steps=steps,
        warmup_steps=max(1, steps // 10),
        refresh_every=steps + 1,  # the masks are those of the converted weights
        freeze_masks=1.0,
        sparse_start=0.0,
        srste=0.0,
    )
    tuned, optimizer = lm_training.build(ft, nnx.state(model, nnx.Param))
    for step in range(steps):
        lm_training.train_step(tuned, optimizer, lm_training.batch(ft, corpus.train, step))
    return tuned


def convert_run(
    run_dir: str | Path,
    sparsities: list[tuple[int, int]],
    *,
    calib_windows: int = 64,
    finetune_steps: int = 100,
    finetune_lr: float = 1e-3,
    seed: int = 0,
) -> list[dict]:
    """Converts the dense LM in ``run_dir`` to each transposable ``(n, m)``; one record each."""
    cfg, model, _, corpus = lm_training.load_run(run_dir)
    if cfg.sparsity != "dense":
        raise ValueError(f"`--run` must be a dense run, got sparsity={cfg.sparsity!r}.")
    val = text.eval_windows(corpus.val, cfg.context + 1, cfg.eval_tokens)
    rng = np.random.default_rng(seed)
    calib = jnp.asarray(text.windows(corpus.train, calib_windows, cfg.context, rng))
    ft_cfg = dataclasses.replace(cfg, lr=finetune_lr, seed=seed)
    dense_loss = lm_training.evaluate(model, val)
    records = []
    for n, m in sparsities:
        magnitude = nnx.clone(model)
        convert.magnitude_prune(magnitude, n=n, m=m, transposable=True)
        rebuilt = nnx.clone(model)
        t0 = time.perf_counter()
        reports = convert.adaprune(rebuilt, [calib], n=n, m=m, transposable=True)
        seconds = time.perf_counter() - t0
        losses = {
            "dense": dense_loss,
            "magnitude": lm_training.evaluate(magnitude, val),
            "adaprune": lm_training.evaluate(rebuilt, val),
        }
        if finetune_steps:
            for name, start in (("magnitude", magnitude), ("adaprune", rebuilt)):
                tuned = finetune(start, ft_cfg, corpus, n, m, finetune_steps)
                losses[f"{name}_finetuned"] = lm_training.evaluate(tuned, val)
        records.append(
            {
                "sparsity": f"{n}:{m}-T",
                "val_loss": losses,
                "val_bpb": {k: v / math.log(2) for k, v in losses.items()},
                "finetune_steps": finetune_steps,
                "finetune_lr": finetune_lr,
                "calibration_windows": calib_windows,
                "adaprune_seconds": seconds,
                "layers": [r.as_record() for r in reports],
            }
        )
    return records


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="dense run directory written by lm.py")
    p.add_argument("--sparsity", nargs="+", choices=["2:4", "4:8"], default=["4:8", "2:4"])
    p.add_argument("--calib-windows", type=int, default=64, help="calibration windows")
    p.add_argument("--finetune-steps", type=int, default=100, help="0: no fine-tune")
    p.add_argument("--finetune-lr", type=float, default=1e-3, help="peak fine-tune rate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/lm_convert")
    a = p.parse_args(argv)
    records = convert_run(
        a.run,
        [tuple(int(v) for v in s.split(":")) for s in a.sparsity],
        calib_windows=a.calib_windows,
        finetune_steps=a.finetune_steps,
        finetune_lr=a.finetune_lr,
        seed=a.seed,
    )
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "convert.json").write_text(json.dumps(records, indent=2) + "\n")
    keys = list(records[0]["val_bpb"])
    print("| sparsity | " + " | ".join(keys) + " |")
    print("|---|" + "---|" * len(keys))
    for r in records:
        print(f"| {r['sparsity']} | " + " | ".join(f"{r['val_bpb'][k]:.4f}" for k in keys) + " |")
    return records


if __name__ == "__main__":
    main()
