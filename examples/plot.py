"""Plots of example runs (matplotlib, PNG).

* ``accuracy.png``: train and test accuracy per epoch of every run given (dense vs sparse).
* ``mask_tiles.png``: one layer's mask of the first sparse run, a corner of it with the
  ``m x m`` tile grid drawn, kept weights shaded by ``|w|``.
* ``retained.png``: per sparsified layer, the fraction of ``|w|`` the mask keeps, for each
  sparse run.
* ``val_loss.png`` (language-model runs of ``lm.py`` / ``run_lm_table.py``): validation bits
  per byte against steps, one colour per configuration (thin: each seed, thick: the mean),
  with a zoom on the last 40% of the steps.

Example::

    python examples/plot.py runs/resnet_digits_dense_seed0 runs/resnet_digits_48t_seed0 \\
        --out plots
    python examples/plot.py runs/lm_table/* --out plots/lm
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import jax  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402
from nmexamples import lm_training, sparse, training  # noqa: E402

import jaxnm  # noqa: E402
from jaxnm import format_path, key_path_names  # noqa: E402


def lm_row(cfg) -> str:
    """The table row of an ``LMConfig``: ``"dense"``, ``"4:8-T + mvue_1_2"``, ``"2:4"``."""
    label = cfg.sparsity
    if cfg.transposable and cfg.sparsity != "dense":
        label += "-T"
    if cfg.grad_sparsity != "none":
        label += f" + {cfg.grad_sparsity}"
    return label


def plot_lm_loss(run_dirs: list[Path], path: Path, zoom: float = 0.4) -> None:
    """Validation bits per byte of language-model runs; runs differing only in seed share a
    colour (thin lines: seeds, thick: their mean at the steps all of them reached)."""
    groups: dict[str, list[list[dict]]] = {}
    for run in run_dirs:
        cfg = lm_training.LMConfig(**_read_config(run))
        groups.setdefault(lm_row(cfg), []).append(training.read_metrics(run / "metrics.jsonl"))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    last = max(r["step"] for runs in groups.values() for records in runs for r in records)
    for i, (label, runs) in enumerate(groups.items()):
        color = f"C{i % 10}"
        for records in runs:
            for ax in axes:
                ax.plot(
                    [r["step"] for r in records],
                    [r["val_bpb"] for r in records],
                    color=color,
                    alpha=0.35,
                    linewidth=0.8,
                )
        common = sorted(set.intersection(*({r["step"] for r in rs} for rs in runs)))
        mean = [
            np.mean([r["val_bpb"] for rs in runs for r in rs if r["step"] == s]) for s in common
        ]
        seeds = f"{len(runs)} seed{'s' * (len(runs) > 1)}"
        for ax in axes:
            ax.plot(common, mean, color=color, linewidth=2, label=f"{label} ({seeds})")
    lo = (1.0 - zoom) * last
    tail = [r["val_bpb"] for runs in groups.values() for rs in runs for r in rs if r["step"] >= lo]
    axes[1].set_xlim(lo, last * 1.01)
    if tail:
        pad = 0.05 * (max(tail) - min(tail) + 1e-3)
        axes[1].set_ylim(min(tail) - pad, max(tail) + pad)
    axes[0].set_title("validation bits per byte")
    axes[1].set_title(f"last {zoom:.0%} of the steps")
    for ax in axes:
        ax.set_xlabel("step")
        ax.set_ylabel("validation bits per byte")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def layer_masks(run_dir: str | Path) -> tuple[training.TrainConfig, dict[str, tuple]]:
    """``{layer path: (kernel, mask)}`` of a sparse run's latest checkpoint (NumPy arrays)."""
    cfg, model, optimizer, _ = training.load_run(run_dir)
    masks = jaxnm.current_masks(optimizer.opt_state)
    flat_masks = {
        format_path(key_path_names(p)): np.asarray(x)
        for p, x in jax.tree_util.tree_flatten_with_path(masks)[0]
    }
    out = {}
    for p, w in jax.tree_util.tree_flatten_with_path(nnx.state(model, nnx.Param))[0]:
        name = format_path(key_path_names(p))
        if name in flat_masks:
            out[name] = (np.asarray(w, np.float32), flat_masks[name].astype(bool))
    return cfg, out


def plot_accuracy(run_dirs: list[Path], path: Path) -> None:
    """Train (dashed) and test (solid) accuracy per epoch of each run."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, run in enumerate(run_dirs):
        cfg = training.TrainConfig(**_read_config(run))
        records = training.read_metrics(run / "metrics.jsonl")
        epochs = [r["epoch"] + 1 for r in records]
        color = f"C{i % 10}"
        ax.plot(
            epochs, [r["test_acc"] for r in records], color=color, label=training.run_label(cfg)
        )
        ax.plot(epochs, [r["train_acc"] for r in records], color=color, linestyle="--", alpha=0.6)
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy (solid: test, dashed: train)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_mask_tiles(
    name: str, kernel: np.ndarray, mask: np.ndarray, m: int, path: Path, crop: int = 32
) -> None:
    """The top-left ``crop x crop`` corner of a layer's ``(in, out)`` mask with its tile grid.

    Conv kernels ``(kh, kw, in, out)`` show their centre tap.
    """
    while kernel.ndim > 2:
        kernel, mask = kernel[kernel.shape[0] // 2], mask[mask.shape[0] // 2]
    rows, cols = min(crop, kernel.shape[0]), min(crop, kernel.shape[1])
    shown = np.where(mask[:rows, :cols], np.abs(kernel[:rows, :cols]), np.nan)
    fig, ax = plt.subplots(figsize=(6, 6 * rows / cols + 0.5))
    ax.imshow(np.zeros_like(shown), cmap="Greys", vmin=0, vmax=1)
    im = ax.imshow(shown, cmap="viridis", interpolation="nearest")
    for k in range(0, rows + 1, m):
        ax.axhline(k - 0.5, color="red", linewidth=0.8)
    for k in range(0, cols + 1, m):
        ax.axvline(k - 0.5, color="red", linewidth=0.8)
    ax.set_xlabel("out")
    ax.set_ylabel("in")
    ax.set_title(f"{name}: kept |w| ({m}x{m} tiles in red, pruned in white)", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_retained(runs: list[tuple[str, dict[str, tuple]]], path: Path) -> None:
    """Bars of ``sum |w ⊙ mask| / sum |w|`` per sparsified layer, one series per run."""
    names = list(runs[0][1])
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(names) + 2), 4.5))
    width = 0.8 / len(runs)
    for i, (label, layers) in enumerate(runs):
        fractions = [
            np.abs(w * mk).sum() / max(np.abs(w).sum(), 1e-30)
            for w, mk in (layers[k] for k in names if k in layers)
        ]
        ax.bar(np.arange(len(fractions)) + i * width, fractions, width, label=label)
    ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2)
    ax.set_xticklabels([n.removesuffix("/kernel") for n in names], rotation=60, ha="right")
    ax.set_ylabel("retained |w| fraction")
    ax.set_ylim(0, 1)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> list[Path]:
    p = argparse.ArgumentParser(description="Plot example runs.")
    p.add_argument("runs", nargs="+", help="run directories written by train.py")
    p.add_argument("--out", default="plots", help="directory for the PNG files")
    p.add_argument("--layer", default=None, help="layer of the mask picture (default: largest)")
    p.add_argument("--crop", type=int, default=32, help="rows/cols of the mask picture")
    a = p.parse_args(argv)
    run_dirs = [Path(r) for r in a.runs]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if all("context" in _read_config(run) for run in run_dirs):  # lm.py runs
        written = [out / "val_loss.png"]
        plot_lm_loss(run_dirs, written[0])
        print(written[0])
        return written
    written = [out / "accuracy.png"]
    plot_accuracy(run_dirs, written[0])

    sparse_runs = []
    for run in run_dirs:
        config = training.TrainConfig(**_read_config(run))
        spec = sparse.spec_from_config(config)
        if spec is not None:
            cfg, layers = layer_masks(run)
            sparse_runs.append((training.run_label(cfg), layers, spec))
    if sparse_runs:
        _, layers, spec = sparse_runs[0]
        name = a.layer or max(layers, key=lambda k: layers[k][0].size)
        if name not in layers:
            raise ValueError(
                f"`--layer` (={name!r}) is not a sparse layer; choose from {list(layers)}."
            )
        written.append(out / "mask_tiles.png")
        plot_mask_tiles(name, *layers[name], spec.m, written[-1], crop=a.crop)
        written.append(out / "retained.png")
        plot_retained([(label, layers) for label, layers, _ in sparse_runs], written[-1])
    for path in written:
        print(path)
    return written


def _read_config(run: Path) -> dict:
    import json

    return json.loads((run / "config.json").read_text())


if __name__ == "__main__":
    main()
