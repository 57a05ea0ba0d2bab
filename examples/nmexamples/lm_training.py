"""The language-model training loop: random byte windows, periodic validation, checkpoints.

Run directory layout (``--out DIR``)::

    DIR/config.json     the LMConfig of the run
    DIR/run_info.json   corpus (name, SHA-256, Python version, sizes) and sparse shares
    DIR/metrics.jsonl   one JSON object per evaluation (every ``eval_every`` steps and at
                        the end): train loss, validation loss, bits per byte, tokens/s
    DIR/checkpoints/    orbax checkpoints at every evaluation (the last two are kept)
    DIR/sample.txt      text sampled from the final model

The batch of step ``s`` is drawn from ``numpy.random.default_rng([seed, s])`` and every
random key lives in the saved state; evaluation and sampling run on a merged copy of the
model, so they never advance its state. A run resumed from a checkpoint therefore repeats
the uninterrupted run bit for bit.

The recipe (``sparsity`` ... ``mask_method``, ``lr``, ``weight_decay``) has the names and
meaning of :class:`nmexamples.training.TrainConfig`, and the optimizer comes from the same
:func:`nmexamples.training.sparse_optimizer`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm import tqdm

import jaxnm
from jaxnm import key_path_names
from nmexamples import checkpoint, flags, gpt, sparse, text, training

DTYPES = {"float32": None, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class LMConfig:
    """Settings of one language-model run (the flags of ``examples/lm.py``).

    Attributes:
      data: a built-in corpus (``"stdlib"``, ``"pydoc-topics"``) or a path, see
        :func:`nmexamples.text.load`.
      text_field: the text key of ``.jsonl`` records / ``datasets`` columns.
      sparsity: ``"dense"``, ``"2:4"`` or ``"4:8"``.
      transposable: transposable N:M masks.
      grad_sparsity: ``"none"``, ``"mvue_1_2"`` or ``"mvue_2_4"`` pruning of the neural
        gradients of sparsified layers.
      steps: optimizer steps of the whole run.
      batch_size: windows per step.
      context: bytes of context (each window holds ``context + 1`` bytes).
      dim, depth, heads, mlp_ratio: the GPT's width, blocks, attention heads, MLP width
        factor.
      dtype: computation dtype, ``"float32"`` or ``"bfloat16"`` (params and optimizer state
        stay float32, the loss is computed in float32).
      out: run directory.
      resume: continue from the latest checkpoint in ``out``.
      seed: seed of the initialisation, the batches and the gradient sampling.
      lr: peak AdamW learning rate (linear warm-up over ``warmup_steps``, cosine decay to 0).
      weight_decay: AdamW weight decay.
      warmup_steps: learning-rate warm-up steps (at most ``steps - 1`` are used).
      refresh_every, freeze_masks, sparse_start, srste, mask_method: the sparse recipe, as in
        :class:`nmexamples.training.TrainConfig` (fractions are of ``steps``).
      eval_every: steps between validations (and checkpoints).
      eval_tokens: validation bytes scored at every evaluation (non-overlapping windows from
        the start of the validation text).
      sample_bytes: bytes sampled at the end (0: no sample).
      progress: show a tqdm progress bar.
    """

    data: str = flags.field(
        "stdlib", "stdlib | pydoc-topics | a .txt/.jsonl file or a directory of text files"
    )
    text_field: str = flags.field("text", "text key of .jsonl records")
    sparsity: str = flags.field("dense", choices=sparse.SPARSITIES)
    transposable: bool = flags.field(
        True, "transposable N:M masks (N:M along both kernel axes; default, as jaxnm.sparsify)"
    )
    grad_sparsity: str = flags.field(
        "none", "MVUE pruning of the neural gradients of the sparse layers", sparse.GRAD_SPARSITIES
    )
    steps: int = 250
    batch_size: int = 16
    context: int = flags.field(128, "bytes of context")
    dim: int = 64
    depth: int = 4
    heads: int = 4
    mlp_ratio: int = 4
    dtype: str = flags.field("float32", "computation dtype", DTYPES)
    out: str = flags.field("runs/lm", "run directory (default: runs/<run label>)")
    resume: bool = flags.field(False, "continue from the latest checkpoint")
    seed: int = 0
    lr: float = 5e-3
    weight_decay: float = 0.01
    warmup_steps: int = 25
    refresh_every: int = 40
    freeze_masks: float = 0.8
    sparse_start: float = 0.0
    srste: float = 0.0
    mask_method: str = "auto"
    eval_every: int = 50
    eval_tokens: int = 16384
    sample_bytes: int = 256
    progress: bool = flags.field(True, "show a progress bar")


# Settings that may change on --resume without changing the trained model.
_RESUME_IGNORED = frozenset({"sample_bytes"})


def check(cfg: LMConfig) -> None:
    """Validates the settings that :func:`build` and :func:`train` do not check themselves."""
    if cfg.dtype not in DTYPES:
        raise ValueError(f"`dtype` (={cfg.dtype!r}) must be one of {list(DTYPES)}.")
    for name in ("steps", "batch_size", "context", "eval_every", "eval_tokens"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"`{name}` (={getattr(cfg, name)}) must be positive.")
    if cfg.warmup_steps < 0:
        raise ValueError(f"`warmup_steps` (={cfg.warmup_steps}) must be >= 0.")


def build(cfg: LMConfig, params: nnx.State | None = None) -> tuple[gpt.GPT, nnx.Optimizer]:
    """The GPT and its ``nnx.Optimizer`` (sparse runs: ``jaxnm.sparsify`` chained first and
    the blocks' ``nnx.Linear`` layers linked to its masks).

    Args:
      cfg: the run.
      params: ``nnx.State`` of ``nnx.Param`` values to start from instead of the seeded
        initialisation (e.g. a converted model); the initial masks are computed from them.
    """
    check(cfg)
    model = gpt.GPT(
        context=cfg.context,
        dim=cfg.dim,
        depth=cfg.depth,
        heads=cfg.heads,
        mlp_ratio=cfg.mlp_ratio,
        dtype=DTYPES[cfg.dtype],
        rngs=nnx.Rngs(params=cfg.seed),
    )
    if params is not None:
        nnx.update(model, params)
    optimizer = training.sparse_optimizer(model, cfg, cfg.steps, cfg.warmup_steps)
    return model, optimizer


def sparse_paths(optimizer: nnx.Optimizer) -> set[tuple]:
    """Paths of the parameters the optimizer sparsifies (empty for a dense run)."""
    try:
        masks = jaxnm.current_masks(optimizer.opt_state)
    except ValueError:
        return set()
    flat = jax.tree_util.tree_flatten_with_path(masks)[0]
    return {key_path_names(p) for p, _ in flat}


def batch(cfg: LMConfig, tokens: np.ndarray, step: int) -> np.ndarray:
    """The training windows of ``step``: int32 ``(batch_size, context + 1)``."""
    rng = np.random.default_rng([cfg.seed, step])
    return text.windows(tokens, cfg.batch_size, cfg.context + 1, rng)


def next_byte_loss(model: nnx.Module, windows: jax.Array) -> jax.Array:
    """float32 ``(B, T)`` cross-entropy of predicting ``windows[:, 1:]`` from the bytes before."""
    logits = model(windows[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, windows[:, 1:])


@nnx.jit
def train_step(model: nnx.Module, optimizer: nnx.Optimizer, windows: jax.Array) -> jax.Array:
    """One optimizer step on int32 ``(B, T + 1)`` windows; returns the float32 mean loss."""
    loss, grads = nnx.value_and_grad(lambda mdl: next_byte_loss(mdl, windows).mean())(model)
    optimizer.update(model, grads)
    return loss


@functools.partial(jax.jit, static_argnums=0)
def _summed_loss(graphdef, state, windows):
    return next_byte_loss(nnx.merge(graphdef, state), windows).sum()


def evaluate(model: nnx.Module, windows: np.ndarray, batch_size: int = 64) -> float:
    """Mean next-byte cross-entropy (nats) of ``model`` on int32 ``(K, T + 1)`` windows.

    Runs on a merged copy (``nnx.split`` / ``nnx.merge``), so the model's state (e.g. the
    MVUE key counters) does not change.
    """
    graphdef, state = nnx.split(model)
    total = 0.0
    for start in range(0, len(windows), batch_size):
        total += float(_summed_loss(graphdef, state, windows[start : start + batch_size]))
    return total / (windows.shape[0] * (windows.shape[1] - 1))


def generate(
    model: gpt.GPT, prompt: bytes, length: int, *, temperature: float = 0.8, seed: int = 0
) -> bytes:
    """Samples ``length`` bytes after ``prompt`` (at most ``context`` bytes of it are used).

    Runs on a merged copy of the model (its state does not change). Sampling uses
    ``numpy.random.default_rng(seed)`` with softmax temperature ``temperature``.
    """
    if not prompt:
        raise ValueError("`prompt` must hold at least one byte.")
    graphdef, state = nnx.split(model)
    ctx = model.context

    @jax.jit
    def logits_at(state, window, pos):
        return nnx.merge(graphdef, state)(window)[0, pos]

    rng = np.random.default_rng(seed)
    seq = list(prompt[-ctx:])
    for _ in range(length):
        window = np.zeros((1, ctx), np.int32)
        recent = seq[-ctx:]
        window[0, : len(recent)] = recent
        logits = np.asarray(logits_at(state, window, len(recent) - 1), np.float64) / temperature
        p = np.exp(logits - logits.max())
        seq.append(int(rng.choice(len(p), p=p / p.sum())))
    return bytes(seq[len(prompt[-ctx:]) :])


def train(cfg: LMConfig, *, stop_after: int | None = None) -> list[dict]:
    """Trains (or resumes) the run ``cfg``; returns the metrics of every evaluation.

    Args:
      cfg: the run.
      stop_after: return after this many steps of this call (with a checkpoint), as an
        interrupted run would; ``None`` runs to ``cfg.steps`` and prints a text sample.
    """
    check(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    training.check_config(out / "config.json", cfg, _RESUME_IGNORED)
    corpus = text.load(cfg.data, text_field=cfg.text_field)
    model, optimizer = build(cfg)
    val = text.eval_windows(corpus.val, cfg.context + 1, cfg.eval_tokens)
    info = run_info(cfg, corpus, model, optimizer)
    (out / "run_info.json").write_text(json.dumps(info, indent=2) + "\n")

    mngr = checkpoint.manager(out / "checkpoints")
    metrics_path = out / "metrics.jsonl"
    history: list[dict] = []
    start = 0
    if cfg.resume:
        step, state = checkpoint.restore(mngr, nnx.state((model, optimizer)))
        if step is not None:
            nnx.update((model, optimizer), state)
            start = step
            history = [r for r in training.read_metrics(metrics_path) if r["step"] <= step]
    training.write_metrics(metrics_path, history)

    end = cfg.steps if stop_after is None else min(cfg.steps, start + stop_after)
    tokens_per_step = cfg.batch_size * cfg.context
    loss_sum, loss_count, timed, timed_steps = 0.0, 0, 0.0, 0
    bar = tqdm(
        range(start, end), total=end - start, initial=0, disable=not cfg.progress, desc="train"
    )
    for step in bar:
        windows = batch(cfg, corpus.train, step)
        t0 = time.perf_counter()
        loss = float(train_step(model, optimizer, windows))
        if step > start:  # the first step of a process compiles
            timed += time.perf_counter() - t0
            timed_steps += 1
        loss_sum, loss_count = loss_sum + loss, loss_count + 1
        bar.set_postfix(loss=f"{loss:.3f}")
        done = step + 1
        if done % cfg.eval_every and done != end:
            continue
        val_loss = evaluate(model, val)
        record = {
            "step": done,
            "train_loss": loss_sum / loss_count,
            "val_loss": val_loss,
            "val_bpb": val_loss / math.log(2),
            "val_ppl": math.exp(val_loss),
            "tokens_per_s": tokens_per_step * timed_steps / timed if timed_steps else None,
            "corpus_sha256": corpus.sha256,
            "python": info["corpus"].get("python"),
        }
        history.append(record)
        checkpoint.save(mngr, done, nnx.state((model, optimizer)))
        with open(metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if cfg.progress:
            tqdm.write(
                f"step {done}/{cfg.steps}: train_loss {record['train_loss']:.4f} "
                f"val_loss {val_loss:.4f} val_bpb {record['val_bpb']:.4f}"
            )
        loss_sum, loss_count, timed, timed_steps = 0.0, 0, 0.0, 0
    mngr.close()
    if stop_after is None and cfg.sample_bytes:
        prompt = bytes(corpus.val[:64])
        sample = generate(model, prompt, cfg.sample_bytes, seed=cfg.seed)
        shown = (prompt + sample).decode("utf-8", errors="replace")
        (out / "sample.txt").write_text(shown)
        if cfg.progress:
            tqdm.write(f"--- sample (prompt: the first 64 validation bytes) ---\n{shown}\n---")
    return history


def run_info(cfg: LMConfig, corpus: text.Corpus, model: gpt.GPT, optimizer) -> dict:
    """Facts of a run: the corpus and what the sparsity covers."""
    return {
        "corpus": {
            "name": corpus.name,
            "sha256": corpus.sha256,
            "train_bytes": int(corpus.train.size),
            "val_bytes": int(corpus.val.size),
            **corpus.info,
        },
        "sparse": gpt.sparse_fractions(model, sparse_paths(optimizer)),
        "sparse_layers": sorted("/".join(map(str, p)) for p in sparse_paths(optimizer)),
        "tokens_per_step": cfg.batch_size * cfg.context,
    }


def load_run(run_dir: str | Path, step: int | None = None):
    """Rebuilds a run from its directory and latest (or ``step``) checkpoint.

    Returns:
      ``(cfg, model, optimizer, corpus)``.
    """
    run_dir = Path(run_dir)
    cfg = LMConfig(**json.loads((run_dir / "config.json").read_text()))
    model, optimizer = build(cfg)
    mngr = checkpoint.manager(run_dir / "checkpoints")
    restored, state = checkpoint.restore(mngr, nnx.state((model, optimizer)), step)
    mngr.close()
    if restored is None:
        raise FileNotFoundError(f"no checkpoint in {str(run_dir / 'checkpoints')!r}.")
    nnx.update((model, optimizer), state)
    return cfg, model, optimizer, text.load(cfg.data, text_field=cfg.text_field)
