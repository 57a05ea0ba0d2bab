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
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from nmexamples import sparse, training  # noqa: E402
from nmexamples.lm_training import DTYPES, LMConfig, train  # noqa: E402


def parse_args(argv: list[str] | None = None, defaults: LMConfig | None = None) -> LMConfig:
    """Parses the command line into an :class:`LMConfig` (flags not given keep
    ``defaults``, by default ``LMConfig()``)."""
    d = LMConfig() if defaults is None else defaults
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--data",
        default=d.data,
        help="stdlib | pydoc-topics | a .txt/.jsonl file or a directory of text files",
    )
    p.add_argument("--text-field", default=d.text_field, help="text key of .jsonl records")
    p.add_argument("--sparsity", choices=list(sparse.SPARSITIES), default=d.sparsity)
    p.add_argument(
        "--transposable",
        action=argparse.BooleanOptionalAction,
        default=d.transposable,
        help="transposable N:M masks (N:M along both kernel axes; default, as jaxnm.sparsify)",
    )
    p.add_argument(
        "--grad-sparsity",
        choices=sparse.GRAD_SPARSITIES,
        default=d.grad_sparsity,
        help="MVUE pruning of the neural gradients of the sparse layers",
    )
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--context", type=int, default=d.context, help="bytes of context")
    p.add_argument("--dim", type=int, default=d.dim)
    p.add_argument("--depth", type=int, default=d.depth)
    p.add_argument("--heads", type=int, default=d.heads)
    p.add_argument("--mlp-ratio", type=int, default=d.mlp_ratio)
    p.add_argument("--dtype", choices=list(DTYPES), default=d.dtype, help="computation dtype")
    p.add_argument("--out", default=None, help="run directory (default: runs/lm_<data>_...)")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps)
    # the sparse-training recipe: the flags of train.py (same names, help and choices)
    recipe = {f: getattr(d, f) for f in training.RECIPE_FIELDS}
    training.add_recipe_arguments(p, training.TrainConfig(**recipe), training.RECIPE_FIELDS)
    p.add_argument("--eval-every", type=int, default=d.eval_every)
    p.add_argument("--eval-tokens", type=int, default=d.eval_tokens)
    p.add_argument("--sample-bytes", type=int, default=d.sample_bytes)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    return LMConfig(
        data=a.data,
        text_field=a.text_field,
        sparsity=a.sparsity,
        transposable=a.transposable,
        grad_sparsity=a.grad_sparsity,
        steps=a.steps,
        batch_size=a.batch_size,
        context=a.context,
        dim=a.dim,
        depth=a.depth,
        heads=a.heads,
        mlp_ratio=a.mlp_ratio,
        dtype=a.dtype,
        out=a.out or str(Path("runs") / _run_name(a)),
        resume=a.resume,
        seed=a.seed,
        warmup_steps=a.warmup_steps,
        **training.recipe_kwargs(a, training.RECIPE_FIELDS),
        eval_every=a.eval_every,
        eval_tokens=a.eval_tokens,
        sample_bytes=a.sample_bytes,
        progress=not a.no_progress,
    )


def _run_name(a: argparse.Namespace) -> str:
    name = f"lm_{Path(a.data).name}_{a.sparsity.replace(':', '')}"
    if a.transposable and a.sparsity != "dense":
        name += "t"
    if a.grad_sparsity != "none":
        name += f"_{a.grad_sparsity}"
    return f"{name}_seed{a.seed}"


def main(argv: list[str] | None = None) -> list[dict]:
    cfg = parse_args(argv)
    history = train(cfg)
    if history:
        print(json.dumps({"out": cfg.out, **history[-1]}))
    return history


if __name__ == "__main__":
    main()
