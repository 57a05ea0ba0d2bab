"""Convert a trained dense model to N:M (AdaPrune) and compare accuracies.

Loads a dense run written by ``train.py`` (``--run DIR``) or trains one first, then for each
requested sparsity reports the test accuracy of

* the dense model,
* magnitude-only N:M (masks from |w|, nothing re-fitted),
* magnitude-only N:M with re-estimated batch-norm statistics,
* N:M with per-layer least-squares reconstruction on a calibration batch
  (``jaxnm.convert.adaprune``) and re-estimated batch-norm statistics.

Example::

    python examples/convert.py --model resnet --epochs 20 --sparsity 2:4 4:8 --out runs/convert
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402
from nmexamples import training  # noqa: E402

from jaxnm import convert  # noqa: E402


def accuracy(model: nnx.Module, x: np.ndarray, y: np.ndarray, batch_size: int = 512) -> float:
    """Top-1 accuracy of ``model`` (in eval mode) on ``(x, y)``."""
    forward = nnx.jit(lambda mdl, xb: jnp.argmax(mdl(xb), -1))
    correct = 0
    for start in range(0, len(x), batch_size):
        pred = forward(model, jnp.asarray(x[start : start + batch_size]))
        correct += int(np.sum(np.asarray(pred) == y[start : start + batch_size]))
    return correct / len(x)


def convert_run(
    run_dir: str | Path,
    sparsities: list[tuple[int, int]],
    *,
    transposable: bool = True,
    calib_size: int = 256,
    calib_batch: int = 128,
    seed: int = 0,
) -> list[dict]:
    """Converts the dense run in ``run_dir`` to each ``(n, m)``; returns one record per sparsity."""
    cfg, model, _, ds = training.load_run(run_dir)
    if cfg.sparsity != "dense":
        raise ValueError(f"`--run` must be a dense run, got sparsity={cfg.sparsity!r}.")
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(ds.x_train), size=min(calib_size, len(ds.x_train)), replace=False)
    calib = [
        jnp.asarray(ds.x_train[idx[i : i + calib_batch]]) for i in range(0, len(idx), calib_batch)
    ]
    dense_acc = accuracy(model, ds.x_test, ds.y_test)
    records = []
    for n, m in sparsities:
        magnitude = nnx.clone(model)
        convert.magnitude_prune(magnitude, n=n, m=m, transposable=transposable)
        magnitude_acc = accuracy(magnitude, ds.x_test, ds.y_test)
        convert.recalibrate_batch_norm(magnitude, calib)
        magnitude_bn_acc = accuracy(magnitude, ds.x_test, ds.y_test)

        rebuilt = nnx.clone(model)
        t0 = time.perf_counter()
        reports = convert.adaprune(rebuilt, calib, n=n, m=m, transposable=transposable)
        convert.recalibrate_batch_norm(rebuilt, calib)
        seconds = time.perf_counter() - t0
        records.append(
            {
                "sparsity": f"{n}:{m}{'-T' if transposable else ''}",
                "dense_acc": dense_acc,
                "magnitude_acc": magnitude_acc,
                "magnitude_bn_acc": magnitude_bn_acc,
                "adaprune_bn_acc": accuracy(rebuilt, ds.x_test, ds.y_test),
                "convert_seconds": seconds,
                "layers": [r.as_record() for r in reports],
            }
        )
    return records


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description="AdaPrune conversion of a dense example model.")
    p.add_argument("--run", default=None, help="dense run directory from train.py")
    p.add_argument("--model", choices=["resnet", "vit"], default="resnet")
    p.add_argument("--epochs", type=int, default=20, help="epochs of the dense run to train")
    p.add_argument("--data", choices=["digits", "cifar10"], default="digits")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--sparsity", nargs="+", choices=["2:4", "4:8"], default=["2:4", "4:8"])
    p.add_argument("--no-transposable", action="store_true", help="plain N:M masks")
    p.add_argument("--calib-size", type=int, default=256, help="calibration images")
    p.add_argument("--calib-batch", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/convert")
    p.add_argument("--train-limit", type=int, default=None)
    p.add_argument("--test-limit", type=int, default=None)
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    out = Path(a.out)
    run = a.run
    if run is None:
        run = str(out / "dense")
        cfg = training.TrainConfig(
            model=a.model,
            epochs=a.epochs,
            data=a.data,
            data_dir=a.data_dir,
            out=run,
            resume=True,
            seed=a.seed,
            train_limit=a.train_limit,
            test_limit=a.test_limit,
            progress=not a.no_progress,
        )
        training.train(cfg)
    sparsities = [tuple(int(v) for v in s.split(":")) for s in a.sparsity]
    records = convert_run(
        run,
        sparsities,
        transposable=not a.no_transposable,
        calib_size=a.calib_size,
        calib_batch=a.calib_batch,
        seed=a.seed,
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "convert.json").write_text(json.dumps(records, indent=2) + "\n")
    print(f"{'sparsity':>8} {'dense':>7} {'magnitude':>10} {'mag+BN':>7} {'AdaPrune+BN':>12}")
    for r in records:
        print(
            f"{r['sparsity']:>8} {r['dense_acc']:7.4f} {r['magnitude_acc']:10.4f} "
            f"{r['magnitude_bn_acc']:7.4f} {r['adaprune_bn_acc']:12.4f}"
        )
    return records


if __name__ == "__main__":
    main()
