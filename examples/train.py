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
import dataclasses
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from nmexamples.training import (  # noqa: E402
    TrainConfig,
    add_recipe_arguments,
    recipe_kwargs,
    run_label,
    train,
)


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    """Parses the command line into a :class:`TrainConfig` (one flag per field)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_recipe_arguments(p, dataclasses.replace(TrainConfig(), out=None))
    cfg = TrainConfig(**recipe_kwargs(p.parse_args(argv)))
    if cfg.out is None:
        cfg = dataclasses.replace(cfg, out=str(Path("runs") / run_label(cfg)))
    return cfg


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
