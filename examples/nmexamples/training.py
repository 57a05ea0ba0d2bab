"""The example training loop: jitted steps, per-epoch evaluation, JSONL metrics, checkpoints.

Run directory layout (``--out DIR``)::

    DIR/config.json     the TrainConfig of the run
    DIR/metrics.jsonl   one JSON object per finished epoch
    DIR/checkpoints/    orbax checkpoints, one per epoch (the last two are kept)

``resume=True`` restores the latest checkpoint and continues with the next epoch; batches are
shuffled with a seed derived from ``(seed, epoch)`` and every random key lives in the saved
state, so a resumed run repeats the uninterrupted one.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import time
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm import tqdm

import jaxnm
import jaxnm.nnx
from nmexamples import checkpoint, data, flags, models, sparse


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Settings of one training run (the flags of ``examples/train.py``).

    Attributes:
      model: ``"resnet"`` or ``"vit"``.
      sparsity: ``"dense"``, ``"2:4"`` or ``"4:8"`` (keep n of every m weights).
      transposable: transposable N:M masks (N:M along both kernel axes).
      grad_sparsity: ``"none"``, ``"mvue_1_2"``, ``"mvue_2_4"`` or ``"mvue_2_4_approx"``
        pruning of the neural gradients of sparsified layers (``jaxnm.MVUE.parse`` form).
      epochs: epochs to train in total (a resumed run stops at the same epoch).
      batch_size: training batch size.
      data: ``"digits"`` (bundled with scikit-learn) or ``"cifar10"``.
      data_dir: directory of the CIFAR-10 pickle batches.
      out: run directory.
      resume: continue from the latest checkpoint in ``out``.
      seed: seed of the initialisation, shuffling and gradient sampling.
      lr: peak learning rate of AdamW (linear warm-up for one epoch, cosine decay).
      weight_decay: AdamW weight decay.
      refresh_every: steps between mask refreshes of sparse runs.
      freeze_masks: fraction of the training steps after which the masks stop changing
        (``jaxnm.sparsify(end_step=...)``), so the last epochs fine-tune fixed masks; ``1.0``
        refreshes until the end.
      sparse_start: fraction of the training steps trained dense before the masks first
        apply (``jaxnm.sparsify(start_step=...)``); ``0.0`` is sparse from the first step.
        Must be below ``freeze_masks``. The final model is N:M sparse either way; MVUE
        gradient pruning (``grad_sparsity``) stays on during the dense phase.
      srste: SR-STE weight ``λ`` (``jaxnm.sparsify(srste=...)``): adds ``λ · (1 − mask) ⊙ w``
        to the gradient of every sparsified kernel, before AdamW normalises it.
      mask_method: solver of transposable masks (``jaxnm.sparsify(method=...)``), a name
        in ``jaxnm.masks.SOLVERS``: ``"auto"`` (exhaustive, i.e. optimal, for 2:4; greedy
        for 4:8), ``"greedy"``, ``"exhaustive"``, ``"exact"`` or ``"exact_device"``.
        ``refresh_every``, ``freeze_masks``, ``sparse_start``, ``srste`` and ``mask_method``
        do not affect dense runs.
      augment: random shifts (and flips on CIFAR-10) of training images; ``None`` turns them
        on for the ResNet and off for the ViT (whose 2x2 patches on 8x8 digits do not
        tolerate 1-pixel shifts).
      train_limit: use only the first ``train_limit`` training examples (smoke tests).
      test_limit: use only the first ``test_limit`` test examples.
      progress: show a tqdm progress bar per epoch.
    """

    model: str = flags.field("resnet", choices=models.MODELS)
    sparsity: str = flags.field("dense", choices=sparse.SPARSITIES)
    transposable: bool = flags.field(
        True, "transposable N:M masks (N:M along both kernel axes; default, as jaxnm.sparsify)"
    )
    grad_sparsity: str = flags.field(
        "none", "MVUE pruning of the neural gradients of the sparse layers", sparse.GRAD_SPARSITIES
    )
    epochs: int = 30
    batch_size: int = 64
    data: str = flags.field("digits", choices=data.DATASETS)
    data_dir: str | None = flags.field(None, "directory of the CIFAR-10 pickle batches")
    out: str = flags.field("runs/example", "run directory")
    resume: bool = flags.field(False, "continue from the latest checkpoint")
    seed: int = 0
    lr: float = flags.field(3e-3, "peak AdamW learning rate")
    weight_decay: float = 5e-4
    refresh_every: int = flags.field(40, "steps between mask refreshes (sparse runs)")
    freeze_masks: float = flags.field(
        0.8, "fraction of training after which masks stop changing (1.0: never)"
    )
    sparse_start: float = flags.field(
        0.0, "fraction of training run dense before the masks apply (0.0: sparse from step 0)"
    )
    srste: float = flags.field(
        0.0, "SR-STE weight: adds SRSTE * (1 - mask) * w to the gradients of sparse kernels"
    )
    mask_method: str = flags.field(
        "auto", "transposable mask solver (auto: optimal for 2:4)", sorted(jaxnm.masks.SOLVERS)
    )
    augment: bool | None = flags.field(
        None, "random shifts/flips (default: on for the ResNet only)"
    )
    train_limit: int | None = flags.field(None, "use the first N training examples")
    test_limit: int | None = flags.field(None, "use the first N test examples")
    progress: bool = flags.field(True, "show a progress bar per epoch")


#: The training recipe: the :class:`TrainConfig` fields that
#: ``examples/run_accuracy_table.py`` applies to every configuration of its table.
RECIPE_FIELDS = (
    "lr",
    "weight_decay",
    "refresh_every",
    "freeze_masks",
    "sparse_start",
    "srste",
    "mask_method",
)


def add_recipe_arguments(
    parser: argparse.ArgumentParser,
    defaults: TrainConfig | None = None,
    fields: Sequence[str] | None = None,
) -> None:
    """Adds the flags of :class:`TrainConfig` ``fields`` (default: all) to ``parser``.

    The defaults are ``defaults``' values (default ``TrainConfig()``); see
    :mod:`nmexamples.flags`. :func:`recipe_kwargs` reads them back.
    """
    flags.add_arguments(parser, defaults or TrainConfig(), fields)


def recipe_kwargs(
    args: argparse.Namespace, fields: Sequence[str] | None = None
) -> dict[str, object]:
    """``{field: value}`` of the flags :func:`add_recipe_arguments` added for ``fields``."""
    return flags.config_kwargs(args, TrainConfig(), fields)


def run_label(cfg, *, model: str | None = None, data: str | None = None) -> str:
    """The run's name: ``"resnet_digits_48t_mvue_1_2_seed0"`` (model, data, sparsity with
    ``t`` for transposable, gradient pruning, seed); the default run directory of
    ``examples/train.py`` and ``examples/lm.py`` is ``runs/<label>``.

    Args:
      cfg: a config with ``sparsity``, ``transposable``, ``grad_sparsity`` and ``seed`` (a
        :class:`TrainConfig` or an ``LMConfig``).
      model, data: the first two parts; default ``cfg.model`` and ``cfg.data``.
    """
    model = cfg.model if model is None else model
    data = cfg.data if data is None else data
    name = f"{model}_{data}_{cfg.sparsity.replace(':', '')}"
    if cfg.transposable and cfg.sparsity != "dense":
        name += "t"
    if cfg.grad_sparsity != "none":
        name += f"_{cfg.grad_sparsity}"
    return f"{name}_seed{cfg.seed}"


def load_data(cfg: TrainConfig) -> data.Dataset:
    """The data set of ``cfg``, cut to ``train_limit`` / ``test_limit`` examples."""
    ds = data.load(cfg.data, cfg.data_dir)
    return ds._replace(
        x_train=ds.x_train[: cfg.train_limit],
        y_train=ds.y_train[: cfg.train_limit],
        x_test=ds.x_test[: cfg.test_limit],
        y_test=ds.y_test[: cfg.test_limit],
    )


def steps_per_epoch(cfg: TrainConfig, n_train: int) -> int:
    """Optimizer steps in one epoch (the last incomplete batch is dropped)."""
    return max(1, data.num_batches(n_train, min(cfg.batch_size, n_train), drop_last=True))


def build(cfg: TrainConfig, ds: data.Dataset) -> tuple[nnx.Module, nnx.Optimizer]:
    """The model and ``nnx.Optimizer`` of ``cfg``.

    Sparse runs chain ``jaxnm.sparsify`` first and link the model's layers to its masks
    with ``jaxnm.nnx.sparsify_model`` (see :mod:`nmexamples.sparse`).
    """
    model = models.build(cfg.model, ds.x_train.shape[1:], ds.num_classes, seed=cfg.seed)
    spe = steps_per_epoch(cfg, len(ds.x_train))
    return model, sparse_optimizer(model, cfg, cfg.epochs * spe, spe)


def sparse_optimizer(model: nnx.Module, cfg, total_steps: int, warmup_steps: int) -> nnx.Optimizer:
    """The ``nnx.Optimizer`` of a run's recipe, linked to ``model``'s sparsified layers.

    Args:
      model: the NNX model (its tileable kernels become N:M in sparse runs).
      cfg: a config with the recipe fields of :class:`TrainConfig` (``sparsity``,
        ``transposable``, ``grad_sparsity``, ``lr``, ``weight_decay``, ``refresh_every``,
        ``freeze_masks``, ``sparse_start``, ``srste``, ``mask_method``, ``seed``), e.g. a
        ``TrainConfig`` or the language model's ``LMConfig``.
      total_steps: optimizer steps of the whole run (schedule and mask phases).
      warmup_steps: linear learning-rate warm-up steps.
    """
    spec = sparse.spec_from_config(cfg)
    start_step, end_step = mask_schedule(cfg, total_steps)
    tx = make_tx(
        spec,
        cfg.lr,
        cfg.weight_decay,
        total_steps,
        warmup_steps,
        cfg.refresh_every,
        start_step,
        end_step,
        cfg.srste,
        cfg.mask_method,
    )
    # jaxnm.nnx.Optimizer also writes the refreshed masks into the sparse layers.
    optimizer_cls = nnx.Optimizer if spec is None else jaxnm.nnx.Optimizer
    optimizer = optimizer_cls(model, tx, wrt=nnx.Param)
    sparse.attach(model, optimizer, spec, seed=cfg.seed)
    return optimizer


def mask_schedule(cfg: TrainConfig, total_steps: int) -> tuple[int, int | None]:
    """``(start_step, end_step)`` of ``jaxnm.sparsify`` for ``cfg``'s ``sparse_start`` and
    ``freeze_masks`` fractions of ``total_steps`` (``end_step`` None: refresh to the end)."""
    if not 0.0 <= cfg.sparse_start < 1.0:
        raise ValueError(f"`sparse_start` (={cfg.sparse_start}) must lie in [0, 1).")
    if not 0.0 < cfg.freeze_masks <= 1.0:
        raise ValueError(f"`freeze_masks` (={cfg.freeze_masks}) must lie in (0, 1].")
    if cfg.sparse_start >= cfg.freeze_masks:
        raise ValueError(
            f"`sparse_start` (={cfg.sparse_start}) must be below `freeze_masks` "
            f"(={cfg.freeze_masks})."
        )
    start_step = int(cfg.sparse_start * total_steps)
    if cfg.freeze_masks == 1.0:
        return start_step, None
    return start_step, max(start_step + 1, int(cfg.freeze_masks * total_steps))


@functools.lru_cache(maxsize=16)
def make_tx(
    spec: sparse.SparseSpec | None,
    lr: float,
    weight_decay: float,
    total_steps: int,
    warmup_steps: int,
    refresh_every: int,
    start_step: int,
    end_step: int | None,
    srste: float,
    mask_method: str,
) -> optax.GradientTransformation:
    """The optimizer: ``[jaxnm.sparsify(...)] + adamw`` with warm-up and cosine decay to zero.

    Cached: runs with equal settings (e.g. other seeds, a resumed run) get the same
    transformation object, which ``nnx.Optimizer`` keeps as static graph data, so the jitted
    train step is reused instead of compiled again.
    """
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, lr, warmup_steps=min(warmup_steps, total_steps - 1), decay_steps=total_steps
    )
    adamw = optax.adamw(schedule, weight_decay=weight_decay)
    return sparse.chain(
        spec,
        adamw,
        refresh_every=refresh_every,
        start_step=start_step,
        end_step=end_step,
        srste=srste,
        method=mask_method,
    )


@nnx.jit
def train_step(model: nnx.Module, optimizer: nnx.Optimizer, x: jax.Array, y: jax.Array):
    """One optimizer step on ``(x, y)`` (``(B, H, W, C)`` float32, ``(B,)`` int32).

    Returns:
      ``(loss, correct)``: float32 mean cross-entropy and int32 number of correct predictions.
    """

    def loss_fn(model):
        logits = model(x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), logits

    (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    optimizer.update(model, grads)
    return loss, jnp.sum(jnp.argmax(logits, -1) == y)


@nnx.jit
def eval_step(model: nnx.Module, x: jax.Array, y: jax.Array):
    """Summed cross-entropy and number of correct predictions of ``model`` (eval mode)."""
    logits = model(x)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).sum()
    return loss, jnp.sum(jnp.argmax(logits, -1) == y)


def eval_view(model: nnx.Module) -> nnx.Module:
    """``model`` in inference mode (batch norm uses running statistics), sharing its state."""
    return nnx.view(model, use_running_average=True, deterministic=True, raise_if_not_found=False)


def evaluate(model: nnx.Module, x: np.ndarray, y: np.ndarray, batch_size: int = 256):
    """Mean loss and accuracy of ``model`` (in eval mode, see :func:`eval_view`) on ``(x, y)``."""
    loss, correct = 0.0, 0
    for xb, yb in data.batches(x, y, batch_size, seed=None, drop_last=False):
        batch_loss, batch_correct = eval_step(model, xb, yb)
        loss += float(batch_loss)
        correct += int(batch_correct)
    return loss / len(x), correct / len(x)


def train(cfg: TrainConfig, *, stop_after: int | None = None) -> list[dict]:
    """Trains (or resumes) the run ``cfg``; returns the metrics of every finished epoch.

    Args:
      cfg: the run.
      stop_after: return after this many epochs of this call, as an interrupted run would
        (the learning-rate schedule still spans ``cfg.epochs``); ``None`` runs to the end.
    """
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    check_config(out / "config.json", cfg, frozenset({"epochs", "data_dir"}))
    ds = load_data(cfg)
    spe = steps_per_epoch(cfg, len(ds.x_train))
    batch_size = min(cfg.batch_size, len(ds.x_train))
    model, optimizer = build(cfg, ds)
    if cfg.progress and isinstance(optimizer, jaxnm.nnx.Optimizer):
        print(jaxnm.nnx.sparsity_summary(model))  # what is sparse, what stays dense and why
    evaluated = eval_view(model)

    augment = cfg.model == "resnet" if cfg.augment is None else cfg.augment
    mngr = checkpoint.manager(out / "checkpoints")
    metrics_path = out / "metrics.jsonl"
    history: list[dict] = []
    start_epoch = 0
    if cfg.resume:
        epoch, state = checkpoint.restore(mngr, nnx.state((model, optimizer)))
        if epoch is not None:
            nnx.update((model, optimizer), state)
            start_epoch = epoch + 1
            history = [r for r in read_metrics(metrics_path) if r["epoch"] <= epoch]
    write_metrics(metrics_path, history)

    end_epoch = cfg.epochs if stop_after is None else min(cfg.epochs, start_epoch + stop_after)
    if cfg.progress:
        print(f"results: {out} (config.json, metrics.jsonl, checkpoints/)", flush=True)
        if start_epoch < end_epoch:
            print("compiling the train step (the first step waits for it)...", flush=True)
    for epoch in range(start_epoch, end_epoch):
        t0 = time.perf_counter()
        loss_sum, correct = 0.0, 0
        shuffled = data.batches(
            ds.x_train, ds.y_train, batch_size, seed=_epoch_seed(cfg.seed, epoch), drop_last=True
        )
        bar = tqdm(
            shuffled,
            total=spe,
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            disable=not cfg.progress,
            leave=False,
        )
        aug_rng = np.random.default_rng(_epoch_seed(cfg.seed + 1, epoch))
        for xb, yb in bar:
            if augment:
                xb = data.augment(xb, aug_rng, **data.augmentation(cfg.data))
            loss, batch_correct = train_step(model, optimizer, xb, yb)
            loss_sum += float(loss)
            correct += int(batch_correct)
            bar.set_postfix(loss=f"{float(loss):.4f}")
        test_loss, test_acc = evaluate(evaluated, ds.x_test, ds.y_test)
        record = {
            "epoch": epoch,
            "step": int(optimizer.step[...]),
            "train_loss": loss_sum / spe,
            "train_acc": correct / (spe * batch_size),
            "test_loss": test_loss,
            "test_acc": test_acc,
            "epoch_time_s": time.perf_counter() - t0,
        }
        history.append(record)
        checkpoint.save(mngr, epoch, nnx.state((model, optimizer)))
        with open(metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if cfg.progress:
            tqdm.write(
                f"epoch {epoch + 1}/{cfg.epochs}: train_loss {record['train_loss']:.4f} "
                f"train accuracy {100 * record['train_acc']:.2f}% "
                f"test accuracy {100 * test_acc:.2f}%"
            )
    mngr.close()
    return history


def load_run(run_dir: str | Path, step: int | None = None):
    """Rebuilds a run from its directory and latest (or ``step``) checkpoint.

    Returns:
      ``(cfg, model, optimizer, dataset)``: the config, the model in eval mode (for sparse
      runs its layers apply the optimizer's masks), the ``nnx.Optimizer`` (whose state holds
      the masks, ``jaxnm.current_masks(optimizer.opt_state)``) and the data set.
    """
    run_dir = Path(run_dir)
    cfg = TrainConfig(**json.loads((run_dir / "config.json").read_text()))
    ds = load_data(cfg)
    model, optimizer = build(cfg, ds)
    mngr = checkpoint.manager(run_dir / "checkpoints")
    restored_step, state = checkpoint.restore(mngr, nnx.state((model, optimizer)), step)
    mngr.close()
    if restored_step is None:
        raise FileNotFoundError(f"no checkpoint in {str(run_dir / 'checkpoints')!r}.")
    nnx.update((model, optimizer), state)
    return cfg, eval_view(model), optimizer, ds


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a ``metrics.jsonl`` file (empty if it does not exist)."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_metrics(path: Path, records: list[dict]) -> None:
    """(Re)writes a ``metrics.jsonl`` file with ``records``, one JSON object per line."""
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def check_config(path: Path, cfg, ignore: frozenset[str] = frozenset()) -> None:
    """Writes ``config.json`` of the dataclass ``cfg``; on resume, refuses a config that
    changes the run (fields in ``ignore``, ``resume``, ``progress`` and ``out`` may change)."""
    current = dataclasses.asdict(cfg)
    if cfg.resume and path.exists():
        # settings added after a run was saved count as their defaults
        saved = {**dataclasses.asdict(type(cfg)()), **json.loads(path.read_text())}
        ignore = {"resume", "progress", "out", *ignore}
        changed = {k for k in current if k not in ignore and saved.get(k) != current[k]}
        if changed:
            raise ValueError(
                f"--resume with settings that differ from {str(path)!r}: "
                + ", ".join(f"{k}={current[k]!r} (saved {saved.get(k)!r})" for k in sorted(changed))
            )
    path.write_text(json.dumps(current, indent=2) + "\n")


def _epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])
