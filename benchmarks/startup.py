"""Start-up time of sparse training: optimizer init and first-step compile, dense vs sparse.

For each model (Flax Linen, plain optax; same params, same batch, made once per model
with nothing compiled, see :func:`inputs`), in the same process:

* **init**: ``tx.init(params)`` until its arrays are ready; dense ``optax.adamw`` against
  ``optax.chain(jaxnm.sparsify(n, m, method=..., solve_on=...), optax.adamw)`` (the
  initial masks are the difference: solved by the NumPy twin of the solver with the
  default ``solve_on="auto"``, by the compiled solver with ``"device"``);
* **first step**: ``jax.jit(step).lower(...).compile()`` of one training step (forward with
  ``jaxnm.apply_masks``, backward, ``tx.update`` with its mask-refresh branch,
  ``optax.apply_updates``). Its refresh branch compiles the solver into the step with
  ``solve_on="device"``; with ``"auto"`` on the CPU it calls the solver compiled as an
  executable of its own (a ``jax.pure_callback``; the solver compiles at the first
  refresh), with ``"host"`` the NumPy twin;
* **first refreshing run**: the compiled step's first run on a state whose update
  refreshes the masks (the dense step: its first run), which pays the solver's compile with
  ``solve_on="auto"`` on the CPU. The last line per row sums init, first step and first
  refreshing run, so that no cost moved out of the first step goes unseen.

Every measurement starts cold (``jax.clear_caches()`` before it, and one warm-up compile
at start-up so that no measurement pays XLA's one-time set-up) and with the garbage of
the earlier ones collected (``gc.collect()``: without it, the same sparse step compiled
in the second and in the third slot of a round differed by 0.1-0.3x dense, with the
earlier rounds' garbage walked by the collector during the trace); ``--repeats`` cold rounds
alternate dense and sparse, medians are printed with the sparse/dense ratios and the
issue's goals (init <= 3x dense, first step <= 2x dense).

Models: ``cnn`` (the Flax MNIST tutorial CNN: two 3x3 convs, a 3136x256 and a 256x10
dense layer, 28x28x1 inputs), ``resnet`` (a ResNet-18-style network on 32x32x3 inputs:
many 3x3 kernels of few shapes), ``vit`` (a small ViT, patch 4 on 32x32x3, fused qkv).

  python benchmarks/startup.py [--models cnn resnet vit] [--repeats 3] [--n 4 --m 8]
      [--method greedy] [--solve-on auto device host] [--smoke]

Several ``--solve-on`` values measure one sparse row each, in the same run.

``--smoke`` runs every model at a tiny size, once, with 2:4 masks by the exhaustive solver
(cheap to compile; the test suite runs it).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import math
import os
import statistics
import time
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxnm


class CNN(nn.Module):
    """The Flax MNIST tutorial CNN (``width`` scales the channels and the hidden layer)."""

    width: int = 32

    @nn.compact
    def __call__(self, x):
        w = self.width
        x = nn.avg_pool(nn.relu(nn.Conv(w, (3, 3))(x)), (2, 2), (2, 2))
        x = nn.avg_pool(nn.relu(nn.Conv(2 * w, (3, 3))(x)), (2, 2), (2, 2))
        x = nn.relu(nn.Dense(8 * w)(x.reshape(x.shape[0], -1)))
        return nn.Dense(10)(x)


class ResBlock(nn.Module):
    features: int
    stride: int

    @nn.compact
    def __call__(self, x):
        s = (self.stride, self.stride)
        h = nn.relu(nn.GroupNorm(8)(nn.Conv(self.features, (3, 3), s, use_bias=False)(x)))
        h = nn.GroupNorm(8)(nn.Conv(self.features, (3, 3), use_bias=False)(h))
        if x.shape[-1] != self.features or self.stride != 1:
            x = nn.Conv(self.features, (1, 1), s, use_bias=False)(x)
        return nn.relu(x + h)


class ResNet(nn.Module):
    """ResNet-18 layout: 4 stages of 2 blocks, widths ``width * (1, 2, 4, 8)``."""

    width: int = 64

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(self.width, (3, 3), use_bias=False)(x))
        for stage in range(4):
            for block in range(2):
                stride = 2 if stage and not block else 1
                x = ResBlock(self.width * 2**stage, stride)(x)
        return nn.Dense(10)(x.mean(axis=(1, 2)))


class ViTBlock(nn.Module):
    dim: int
    heads: int

    @nn.compact
    def __call__(self, x):
        b, t, d = x.shape
        qkv = nn.Dense(3 * d)(nn.LayerNorm()(x)).reshape(b, t, 3, self.heads, d // self.heads)
        att = jax.nn.dot_product_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2])
        x = x + nn.Dense(d)(att.reshape(b, t, d))
        return x + nn.Dense(d)(nn.gelu(nn.Dense(4 * d)(nn.LayerNorm()(x))))


class ViT(nn.Module):
    """Patch 4 on 32x32x3 images (64 tokens), ``depth`` blocks of width ``dim``."""

    dim: int = 192
    depth: int = 6
    heads: int = 3

    @nn.compact
    def __call__(self, images):
        b = images.shape[0]
        patches = images.reshape(b, 8, 4, 8, 4, 3).transpose(0, 1, 3, 2, 4, 5).reshape(b, 64, 48)
        x = nn.Dense(self.dim)(patches)
        x = x + self.param("pos", nn.initializers.normal(0.02), (64, self.dim))
        for _ in range(self.depth):
            x = ViTBlock(self.dim, self.heads)(x)
        return nn.Dense(10)(nn.LayerNorm()(x).mean(axis=1))


def models(smoke: bool) -> dict[str, tuple[nn.Module, tuple[int, ...]]]:
    """Model and input shape (batch first) by name."""
    return {
        "cnn": (CNN(width=8 if smoke else 32), (8, 28, 28, 1)),
        "resnet": (ResNet(width=8 if smoke else 64), (8, 32, 32, 3)),
        "vit": (ViT(dim=32, depth=1, heads=2) if smoke else ViT(), (8, 32, 32, 3)),
    }


def make_step(model: nn.Module, tx: optax.GradientTransformation, sparse: bool) -> Callable:
    def step(params, opt_state, x, y):
        def loss_fn(p):
            if sparse:
                p = jaxnm.apply_masks(p, jaxnm.current_masks(opt_state))
            logits = model.apply({"params": p}, x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        grads = jax.grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    return step


def inputs(model: nn.Module, shape: tuple[int, ...]) -> tuple:
    """``(params, x, y)``: the model's params and one batch, made once per model and with
    nothing compiled: the param shapes come from ``jax.eval_shape(model.init, ...)``, the
    values are NumPy draws of Flax's default laws (kernels lecun-normal, untruncated;
    biases 0; norm scales 1; others N(0, 0.02²)). Compiling ``model.init`` itself (its
    truncated-normal initializers, one compile per kernel shape) took longer than
    everything measured in a smoke run, and no measurement times it."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    shapes = jax.eval_shape(model.init, jax.random.key(0), x)["params"]

    def draw(path, leaf) -> np.ndarray:
        name = getattr(path[-1], "key", None)
        if name == "kernel":
            fan_in = math.prod(leaf.shape[:-1])
            return (rng.standard_normal(leaf.shape) / math.sqrt(fan_in)).astype(leaf.dtype)
        if name in ("bias", "scale"):
            return np.full(leaf.shape, 0.0 if name == "bias" else 1.0, leaf.dtype)
        return (0.02 * rng.standard_normal(leaf.shape)).astype(leaf.dtype)

    params = jax.tree_util.tree_map_with_path(draw, shapes)
    y = np.zeros(shape[0], np.int32)
    return jax.block_until_ready(jax.device_put((params, x, y)))


REFRESH_EVERY = 40
"""The sparse rows' ``refresh_every`` (``jaxnm.sparsify``'s default)."""


def _cold() -> None:
    """Empties JAX's caches and collects Python's garbage before a measurement."""
    jax.clear_caches()
    gc.collect()


def measure_parts(model, data: tuple, tx, sparse: bool) -> tuple[float, ...]:
    """Cold seconds of one optimizer on ``data`` (:func:`inputs`): init, first-step lowering,
    first-step XLA compile, then the compiled step's first run on a state whose next update
    refreshes the masks (the dense step: any state)."""
    params, x, y = data
    _cold()
    start = time.perf_counter()
    opt_state = jax.block_until_ready(tx.init(params))
    init_s = time.perf_counter() - start
    _cold()
    start = time.perf_counter()
    lowered = jax.jit(make_step(model, tx, sparse)).lower(params, opt_state, x, y)
    lowered_at = time.perf_counter()
    compiled = lowered.compile()
    compiled_at = time.perf_counter()
    if sparse:
        opt_state = refreshing(opt_state)
    jax.block_until_ready(compiled(params, opt_state, x, y))
    return (
        init_s,
        lowered_at - start,
        compiled_at - lowered_at,
        time.perf_counter() - compiled_at,
    )


def refreshing(opt_state):
    """``opt_state`` (of ``optax.chain(jaxnm.sparsify(...), ...)``) with the sparsify
    state's count just before a refresh: its next update recomputes the masks."""
    state = opt_state[0]
    assert isinstance(state, jaxnm.SparsifyState), type(state)
    count = jnp.asarray(REFRESH_EVERY - 1, state.count.dtype)
    return (dataclasses.replace(state, count=count), *opt_state[1:])


def measure(model, data: tuple, tx, sparse: bool) -> tuple[float, float, float]:
    """Cold (init seconds, first-step compile seconds: lowering + XLA, first refreshing run
    seconds) of one optimizer on ``data`` (:func:`inputs`)."""
    init_s, lowering_s, compile_s, first_run_s = measure_parts(model, data, tx, sparse)
    return init_s, lowering_s + compile_s, first_run_s


def sparse_summary(model, shape, n: int, m: int) -> str:
    x = jnp.zeros(shape)
    params = jax.eval_shape(model.init, jax.random.key(0), x)["params"]
    leaves = jax.tree.leaves(params)
    state = jax.eval_shape(jaxnm.sparsify(n, m).init, params)
    sparse = [s for s in jax.tree.leaves(state.masks) if s is not None]
    weights = sum(x.size for x in leaves)
    return f"{weights / 1e6:.2f} M params, {len(sparse)} sparse kernels"


def row(model: str, kind: str, cells: list[str]) -> str:
    """One Markdown table row."""
    return f"| {model} | {kind} | " + " | ".join(cells) + " |"


def main(argv: list[str] | None = None) -> list[float]:
    """Runs the benchmark; returns the sparse/dense ratios (init, first step per model)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["cnn", "resnet", "vit"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--n", type=int, default=None, help="default 4 (2 with --smoke)")
    parser.add_argument("--m", type=int, default=None, help="default 8 (4 with --smoke)")
    parser.add_argument("--method", default=None, help="default greedy (exhaustive: --smoke)")
    parser.add_argument(
        "--solve-on",
        nargs="+",
        default=["auto"],
        choices=["auto", "device", "host"],
        help="jaxnm.sparsify's solve_on, one sparse row each (default auto)",
    )
    parser.add_argument(
        "--smoke", action="store_true", help="tiny models, one round, 2:4 exhaustive (CI)"
    )
    args = parser.parse_args(argv)
    smoke = dict(n=2, m=4, method="exhaustive") if args.smoke else dict(n=4, m=8, method="greedy")
    for name, value in smoke.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    repeats = 1 if args.smoke else args.repeats
    zoo = models(args.smoke)
    unknown = sorted(set(args.models) - set(zoo))
    if unknown:
        parser.error(f"unknown models {unknown}; choose from {sorted(zoo)}")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"jax {jax.__version__}, {jax.devices()[0].platform}, load average {load:.2f}")
    print(f"sparse: jaxnm.sparsify({args.n}, {args.m}, method={args.method!r}) + adamw")
    jax.jit(lambda a: a + 1)(jnp.zeros(3)).block_until_ready()  # XLA's one-time set-up

    dense_tx = optax.adamw(1e-3)
    sparse_txs = {
        f"sparse {where}": optax.chain(
            jaxnm.sparsify(
                args.n, args.m, method=args.method, refresh_every=REFRESH_EVERY, solve_on=where
            ),
            dense_tx,
        )
        for where in args.solve_on
    }
    header = "| model | | init s | first-step compile s | first refreshing run s |"
    rows = [header, "|---|---|---:|---:|---:|"]
    verdicts, ratios = [], []
    for name in args.models:
        model, shape = zoo[name]
        print(f"{name}: {sparse_summary(model, shape, args.n, args.m)}", flush=True)
        data = inputs(model, shape)
        times = {"dense": [], **{kind: [] for kind in sparse_txs}}
        for _ in range(repeats):
            times["dense"].append(measure(model, data, dense_tx, sparse=False))
            for kind, tx in sparse_txs.items():
                times[kind].append(measure(model, data, tx, sparse=True))
        med = {
            kind: [statistics.median(t[i] for t in runs) for i in range(3)]
            for kind, runs in times.items()
        }
        new_rows = [row(name, "dense", [f"{t:.2f}" for t in med["dense"]])]
        for kind in sparse_txs:
            ratio = [med[kind][i] / med["dense"][i] for i in range(2)]
            ratios += ratio
            new_rows.append(row(name, kind, [f"{t:.2f}" for t in med[kind]]))
            extra = med[kind][2] - med["dense"][2]
            new_rows.append(
                row(name, f"{kind} / dense", [f"{r:.2f}x" for r in ratio[:2]] + [f"+{extra:.2f} s"])
            )
            met = ["met" if r <= g else "missed" for r, g in zip(ratio, (3, 2), strict=True)]
            verdicts.append(
                f"{name} ({kind}): init {ratio[0]:.2f}x dense (goal <= 3: {met[0]}),"
                f" first step {ratio[1]:.2f}x (goal <= 2: {met[1]}); init + first step +"
                f" first refreshing run {sum(med[kind]):.2f} s against dense"
                f" {sum(med['dense']):.2f} s"
            )
        rows += new_rows
        print(*new_rows, sep="\n", flush=True)
    print(f"\nmedians of {repeats} cold round(s)")
    print("\n".join(rows))
    print("\n".join(verdicts))
    return ratios


if __name__ == "__main__":
    main()
