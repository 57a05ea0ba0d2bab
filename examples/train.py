"""Train a small ResNet or ViT with N:M (transposable) sparse weights and pruned gradients.

Runs offline on scikit-learn's bundled digits by default; CIFAR-10 from its Python pickle
batches with ``--data cifar10 --data-dir DIR``. Writes ``config.json``, ``metrics.jsonl``
(one line per epoch) and orbax checkpoints (one per epoch) to ``--out``; ``--resume``
continues from the latest checkpoint.

Example (4:8 transposable weights, MVUE 1:2 neural gradients)::

    python examples/train.py --model resnet --sparsity 4:8 --transposable \\
        --grad-sparsity mvue_1_2 --epochs 20 --out runs/resnet_48t
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from nmexamples import sparse  # noqa: E402
from nmexamples.training import TrainConfig, train  # noqa: E402

import jaxnm  # noqa: E402


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    """Parses the command line into a :class:`TrainConfig`."""
    defaults = TrainConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=["resnet", "vit"], default=defaults.model)
    p.add_argument("--sparsity", choices=["dense", "2:4", "4:8"], default=defaults.sparsity)
    p.add_argument(
        "--transposable",
        action=argparse.BooleanOptionalAction,
        default=defaults.transposable,
        help="transposable N:M masks (N:M along both kernel axes; default, as jaxnm.sparsify)",
    )
    p.add_argument(
        "--grad-sparsity",
        choices=sparse.GRAD_SPARSITIES,
        default=defaults.grad_sparsity,
        help="MVUE pruning of the neural gradients of the sparse layers",
    )
    p.add_argument("--epochs", type=int, default=defaults.epochs)
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--data", choices=["digits", "cifar10"], default=defaults.data)
    p.add_argument("--data-dir", default=None, help="directory of the CIFAR-10 pickle batches")
    p.add_argument("--out", default=None, help="run directory (default: runs/<model>_<sparsity>)")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--lr", type=float, default=defaults.lr, help="peak AdamW learning rate")
    p.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    p.add_argument(
        "--refresh-every",
        type=int,
        default=defaults.refresh_every,
        help="steps between mask refreshes (sparse runs)",
    )
    p.add_argument(
        "--freeze-masks",
        type=float,
        default=defaults.freeze_masks,
        help="fraction of training after which masks stop changing (1.0: never)",
    )
    p.add_argument(
        "--sparse-start",
        type=float,
        default=defaults.sparse_start,
        help="fraction of training run dense before the masks apply (0.0: sparse from step 0)",
    )
    p.add_argument(
        "--srste",
        type=float,
        default=defaults.srste,
        metavar="LAMBDA",
        help="SR-STE weight: adds LAMBDA * (1 - mask) * w to the gradients of sparse kernels",
    )
    p.add_argument(
        "--mask-method",
        choices=sorted(jaxnm.masks.SOLVERS),
        default=defaults.mask_method,
        help="transposable mask solver (exhaustive: optimal, cheap for 2:4)",
    )
    p.add_argument("--train-limit", type=int, default=None, help="use the first N train images")
    p.add_argument("--test-limit", type=int, default=None, help="use the first N test images")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    out = a.out or str(Path("runs") / _run_name(a))
    return TrainConfig(
        model=a.model,
        sparsity=a.sparsity,
        transposable=a.transposable,
        grad_sparsity=a.grad_sparsity,
        epochs=a.epochs,
        batch_size=a.batch_size,
        data=a.data,
        data_dir=a.data_dir,
        out=out,
        resume=a.resume,
        seed=a.seed,
        lr=a.lr,
        weight_decay=a.weight_decay,
        refresh_every=a.refresh_every,
        freeze_masks=a.freeze_masks,
        sparse_start=a.sparse_start,
        srste=a.srste,
        mask_method=a.mask_method,
        train_limit=a.train_limit,
        test_limit=a.test_limit,
        progress=not a.no_progress,
    )


def _run_name(a: argparse.Namespace) -> str:
    name = f"{a.model}_{a.data}_{a.sparsity.replace(':', '')}"
    if a.transposable and a.sparsity != "dense":
        name += "t"
    if a.grad_sparsity != "none":
        name += f"_{a.grad_sparsity}"
    return f"{name}_seed{a.seed}"


def main(argv: list[str] | None = None) -> list[dict]:
    cfg = parse_args(argv)
    history = train(cfg)
    if history:
        last = history[-1]
        print(f"final test accuracy {100 * last['test_acc']:.2f}% (results in {cfg.out})")
        print(json.dumps({"out": cfg.out, **last}))
    return history


if __name__ == "__main__":
    main()
