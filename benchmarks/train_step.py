"""Train-step time of a small NNX ViT or byte-level GPT: dense versus N:M sparse training,
same run.

Sparse: ``optax.chain(jaxnm.sparsify(2, 4, transposable=True, refresh_every=40),
optax.adamw)`` (``--sparsity 4:8``: 4:8) with every tileable ``nnx.Linear`` routed through
the N:M op by ``jaxnm.nnx.sparsify_model(..., grad_sparsity="mvue_2_4")``. Dense: the same
model and ``optax.adamw``. Both are timed in alternating rounds of ``refresh_every`` steps (one
step in every ``refresh_every`` sparse steps), so load drift on a shared machine hits both
alike. Printed: medians of dense steps, sparse non-refresh steps and sparse refresh steps
(the mask refresh runs inside the jitted step at every ``refresh_every``-th step), and the
sparse/dense ratio averaged over one refresh period,
``((refresh_every - 1) * non_refresh + refresh) / (refresh_every * dense)``.

  python benchmarks/train_step.py [--rounds 12] [--steps-per-round 10] [--batch 16]
      [--solve-on auto|device|host]

``--model gpt``: the language model of ``examples/lm.py`` (``nmexamples.gpt.GPT``, tied
byte embeddings, causal blocks) on random ``(batch, context + 1)`` byte windows, next-byte
loss; defaults are the perplexity table's shape (dim 64, depth 4, 4 heads, context 128).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import jax
import optax
from flax import nnx

import jaxnm
import jaxnm.nnx


class Block(nnx.Module):
    def __init__(self, dim: int, heads: int, mlp: int, rngs: nnx.Rngs):
        self.heads = heads
        self.norm1 = nnx.LayerNorm(dim, rngs=rngs)
        self.q = nnx.Linear(dim, dim, rngs=rngs)
        self.k = nnx.Linear(dim, dim, rngs=rngs)
        self.v = nnx.Linear(dim, dim, rngs=rngs)
        self.o = nnx.Linear(dim, dim, rngs=rngs)
        self.norm2 = nnx.LayerNorm(dim, rngs=rngs)
        self.fc1 = nnx.Linear(dim, mlp, rngs=rngs)
        self.fc2 = nnx.Linear(mlp, dim, rngs=rngs)

    def __call__(self, x):
        b, t, d = x.shape
        h = self.norm1(x)
        q, k, v = (
            f(h).reshape(b, t, self.heads, d // self.heads) for f in (self.q, self.k, self.v)
        )
        att = jax.nn.dot_product_attention(q, k, v)
        x = x + self.o(att.reshape(b, t, d))
        return x + self.fc2(jax.nn.gelu(self.fc1(self.norm2(x))))


class ViT(nnx.Module):
    """Patch 4 on 32x32x3 images: 64 tokens of 48 values."""

    def __init__(self, *, dim=128, depth=4, heads=4, mlp=512, classes=10, rngs: nnx.Rngs):
        self.embed = nnx.Linear(48, dim, rngs=rngs)
        self.pos = nnx.Param(0.02 * jax.random.normal(rngs.params(), (64, dim)))
        self.blocks = nnx.List([Block(dim, heads, mlp, rngs) for _ in range(depth)])
        self.norm = nnx.LayerNorm(dim, rngs=rngs)
        self.head = nnx.Linear(dim, classes, rngs=rngs)  # 10 outputs: stays dense

    def __call__(self, images):
        b = images.shape[0]
        patches = images.reshape(b, 8, 4, 8, 4, 3).transpose(0, 1, 3, 2, 4, 5).reshape(b, 64, 48)
        x = self.embed(patches) + self.pos[...]
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x).mean(axis=1))


def make_gpt(*, dim, depth, heads, context, dtype=None, rngs: nnx.Rngs):
    """The byte-level GPT of ``examples/lm.py``; ``dtype``: its compute dtype (params float32)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    from nmexamples.gpt import GPT

    return GPT(context=context, dim=dim, depth=depth, heads=heads, dtype=dtype, rngs=rngs)


def make(
    sparse: bool,
    refresh_every: int,
    grad_sparsity: jaxnm.MVUE | None = None,
    nm: tuple[int, int] = (2, 4),
    model_fn=ViT,
    backend: str = "xla",
    solve_on: str = "auto",
    **shape,
):
    """``(model, optimizer)``: dense, or sparse with ``sparsify_model(..., backend=backend)``."""
    model = model_fn(**shape, rngs=nnx.Rngs(0))
    opt = optax.adamw(1e-3)
    if sparse:
        # greedy (not the default "auto") keeps the figures comparable with BENCHMARKS.md
        sparsify = jaxnm.sparsify(
            *nm, refresh_every=refresh_every, method="greedy", solve_on=solve_on
        )
        opt = optax.chain(sparsify, opt)
    optimizer = (jaxnm.nnx.Optimizer if sparse else nnx.Optimizer)(model, opt, wrt=nnx.Param)
    if sparse:
        jaxnm.nnx.sparsify_model(
            model, optimizer, grad_sparsity=grad_sparsity, rngs=nnx.Rngs(1), backend=backend
        )
    return model, optimizer


@nnx.jit
def train_step(model, optimizer, images, labels):
    """One step; ``images`` may be GPT byte windows ``(B, T)`` with next bytes ``labels``."""

    def loss_fn(model):
        logits = model(images)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss


def timed_steps(model, optimizer, batch, steps):
    """Wall time of each step; with the sparse state's step count before each step."""
    times, counts = [], []
    for _ in range(steps):
        counts.append(_count(optimizer))
        start = time.perf_counter()
        train_step(model, optimizer, *batch).block_until_ready()
        times.append(time.perf_counter() - start)
    return times, counts


def _count(optimizer):
    try:
        return int(jaxnm.find_state(optimizer.opt_state).count[...])
    except ValueError:
        return None


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--steps-per-round", type=int, default=10)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--refresh-every", type=int, default=40)
    parser.add_argument("--model", choices=["vit", "gpt"], default="vit")
    parser.add_argument("--dim", type=int, default=None, help="default: vit 384, gpt 64")
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--heads", type=int, default=None, help="default: vit 6, gpt 4")
    parser.add_argument("--context", type=int, default=128, help="gpt: bytes of context")
    parser.add_argument("--sparsity", choices=["2:4", "4:8"], default="2:4")
    parser.add_argument("--grad-sparsity", default="mvue_2_4", help='"none" for a dense dW')
    parser.add_argument(
        "--solve-on",
        choices=["auto", "device", "host"],
        default="auto",
        help="jaxnm.sparsify's solve_on (auto: on the CPU the refresh calls the solver apart)",
    )
    args = parser.parse_args()
    gs = jaxnm.MVUE.parse(args.grad_sparsity)
    nm = tuple(int(v) for v in args.sparsity.split(":"))
    n, k = args.refresh_every, args.steps_per_round
    kx, ky = jax.random.split(jax.random.key(0))
    if args.model == "vit":
        dim, heads = args.dim or 384, args.heads or 6
        shape = dict(dim=dim, depth=args.depth, heads=heads, mlp=4 * dim, model_fn=ViT)
        batch = (
            jax.random.normal(kx, (args.batch, 32, 32, 3)),
            jax.random.randint(ky, (args.batch,), 0, 10),
        )
    else:
        dim, heads = args.dim or 64, args.heads or 4
        shape = dict(dim=dim, depth=args.depth, heads=heads, context=args.context)
        shape["model_fn"] = make_gpt
        tokens = jax.random.randint(kx, (args.batch, args.context + 1), 0, 256)
        batch = (tokens[:, :-1], tokens[:, 1:])
    dense = make(False, n, **shape)
    sparse = make(True, n, gs, nm, solve_on=args.solve_on, **shape)
    shown = {k: v for k, v in shape.items() if k != "model_fn"}
    print(
        f"devices: {jax.devices()}  {args.model} {shown}, batch {args.batch}, "
        f"{args.sparsity}-T, refresh every {n}, grad_sparsity {gs}, solve_on {args.solve_on}"
    )
    for name, state in (("dense", dense), ("sparse", sparse)):
        start = time.perf_counter()
        timed_steps(*state, batch, 2)
        print(f"warm-up {name} (2 steps incl. compile): {time.perf_counter() - start:.1f} s")
    dense_t, plain_t, refresh_t, ratios = [], [], [], []
    for r in range(args.rounds):
        d, _ = timed_steps(*dense, batch, k)
        s, counts = timed_steps(*sparse, batch, k)
        dense_t += d
        for t, c in zip(s, counts, strict=True):
            (refresh_t if (c + 1) % n == 0 else plain_t).append(t)
        ratios.append(statistics.median(s) / statistics.median(d))
        print(
            f"round {r}: dense {1e3 * statistics.median(d):7.1f} ms, sparse "
            f"{1e3 * statistics.median(s):7.1f} ms (median of {k}), ratio {ratios[-1]:.3f}"
        )
    dense_med = statistics.median(dense_t)
    plain_med = statistics.median(plain_t)
    print(f"dense step median:              {1e3 * dense_med:8.1f} ms  ({len(dense_t)} steps)")
    print(f"sparse non-refresh median:      {1e3 * plain_med:8.1f} ms  ({len(plain_t)} steps)")
    print(f"non-refresh sparse / dense:     {plain_med / dense_med:8.3f}")
    if refresh_t:
        refresh_med = statistics.median(refresh_t)
        print(f"sparse refresh step median:     {1e3 * refresh_med:8.1f} ms  ({len(refresh_t)})")
        print(f"refresh step / dense step:      {refresh_med / dense_med:8.3f}")
        mean_ratio = ((n - 1) * plain_med + refresh_med) / (n * dense_med)
        print(
            f"sparse/dense averaged over a {n}-step refresh period "
            f"((n-1)*non-refresh + refresh) / (n*dense): {mean_ratio:.3f}  (target <= 1.15)"
        )


if __name__ == "__main__":
    main()
