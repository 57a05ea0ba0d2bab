"""Train a byte-level GPT (Flax NNX) with N:M (transposable) sparse weights on real text.

Runs offline: the default corpus is the running interpreter's own standard library sources
(``--data stdlib``); ``--data pydoc-topics`` is English prose from ``pydoc_data``; any
``.txt``/``.jsonl`` file or directory of text files works too (``--data PATH``). Writes
``config.json``, ``run_info.json`` (corpus hash, Python version, sparse shares),
``metrics.jsonl`` (train loss, validation loss and bits per byte, tokens/s), orbax
checkpoints and ``sample.txt`` to ``--out``; ``--resume`` continues bit-identically.

Example (4:8 transposable weights, MVUE 1:2 neural gradients)::

    python examples/lm.py --sparsity 4:8 --transposable --grad-sparsity mvue_1_2 \\
        --steps 1500 --out runs/lm_48t_mvue12
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from nmexamples import flags, training  # noqa: E402
from nmexamples.lm_training import LMConfig, train  # noqa: E402


def run_label(cfg: LMConfig) -> str:
    """The run's name, e.g. ``"lm_stdlib_48t_mvue_1_2_seed0"`` (``training.run_label``)."""
    return training.run_label(cfg, model="lm", data=Path(cfg.data).name)


def parse_args(argv: list[str] | None = None, defaults: LMConfig | None = None) -> LMConfig:
    """Parses the command line into an :class:`LMConfig`: one flag per field (see
    :mod:`nmexamples.flags`; the recipe fields with the help and choices of ``train.py``'s
    flags); flags not given keep ``defaults`` (by default ``LMConfig()``), and ``--out``
    defaults to ``runs/<run label>``."""
    d = LMConfig() if defaults is None else defaults
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    own = [f.name for f in dataclasses.fields(LMConfig) if f.name not in training.RECIPE_FIELDS]
    flags.add_arguments(p, d, [f for f in own if f != "out"])
    p.add_argument("--out", default=None, help="run directory (default: runs/<run label>)")
    recipe = {f: getattr(d, f) for f in training.RECIPE_FIELDS}
    training.add_recipe_arguments(p, training.TrainConfig(**recipe), training.RECIPE_FIELDS)
    a = p.parse_args(argv)
    cfg = flags.config_from_args(a, d, [f for f in own if f != "out"])
    cfg = dataclasses.replace(cfg, **training.recipe_kwargs(a, training.RECIPE_FIELDS))
    return dataclasses.replace(cfg, out=a.out or str(Path("runs") / run_label(cfg)))


def main(argv: list[str] | None = None) -> list[dict]:
    cfg = parse_args(argv)
    history = train(cfg)
    if history:
        print(json.dumps({"out": cfg.out, **history[-1]}))
    return history


if __name__ == "__main__":
    main()
