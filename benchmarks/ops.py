"""Forward+backward cost of ``jaxnm.ops.nm_linear`` versus a plain dense ``x @ w``.

Each variant computes ``y, dx, dw`` (forward and both gradients, via ``jax.vjp``) under
``jax.jit``. Runs of all variants are interleaved round by round, so machine noise hits them
alike; the script prints median times and the median of the per-round ratios to the dense
baseline measured in the same round. Nothing is accelerated on CPU: this measures the cost
jaxnm adds (masking, MVUE sampling, custom_vjp plumbing).

With ``--batch B`` the activations are ``(B, tokens // B, d_in)`` (as in a transformer
layer, e.g. ``nnx.Linear`` on ``(batch, seq, dim)``) instead of ``(tokens, d_in)``; XLA lays
out the weight-gradient GEMM differently for the two (see BENCHMARKS.md).

Usage:
  python benchmarks/ops.py [--tokens 4096] [--d-in 768] [--d-out 3072] [--rounds 15]
                           [--batch 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp

import jaxnm
from jaxnm.ops import nm_linear


def _fwd_bwd(fn):
    """``(x, w, dy, key) -> (y, dx, dw)`` for ``y = fn(x, w, key)``, jitted."""

    def run(x, w, dy, key):
        y, pullback = jax.vjp(lambda a, b: fn(a, b, key), x, w)
        return (y, *pullback(dy))

    return jax.jit(run)


def variants(mask):
    dense = _fwd_bwd(lambda x, w, key: x @ w)
    out = {"dense x @ w": dense}
    for name, grad_sparsity in [
        ("nm_linear, dense grad", None),
        ("nm_linear, mvue_1_2", jaxnm.MVUE(1, 2)),
        ("nm_linear, mvue_2_4", jaxnm.MVUE(2, 4)),
        ("nm_linear, mvue_2_4_approx", jaxnm.MVUE(2, 4, approx=True)),
    ]:
        out[name] = _fwd_bwd(
            lambda x, w, key, g=grad_sparsity: nm_linear(
                x, w, mask, grad_sparsity=g, key=key if g else None
            )
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--d-in", type=int, default=768)
    parser.add_argument("--d-out", type=int, default=3072)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--batch", type=int, default=1, help="split tokens into (batch, seq)")
    args = parser.parse_args()
    if args.batch < 1 or args.tokens % args.batch:
        parser.error(f"--batch (={args.batch}) must be >= 1 and divide --tokens ({args.tokens})")
    lead = (args.tokens,) if args.batch == 1 else (args.batch, args.tokens // args.batch)

    kx, kw, kg, kk = jax.random.split(jax.random.key(0), 4)
    x = jax.random.normal(kx, (*lead, args.d_in), jnp.float32)
    w = jax.random.normal(kw, (args.d_in, args.d_out), jnp.float32) * 0.02
    dy = jax.random.normal(kg, (*lead, args.d_out), jnp.float32)
    mask = jaxnm.nm_mask(w, 2, 4)
    fns = variants(mask)

    compile_s = {}
    for name, fn in fns.items():
        t0 = time.perf_counter()
        jax.block_until_ready(fn(x, w, dy, kk))
        compile_s[name] = time.perf_counter() - t0

    times = {name: [] for name in fns}
    names = list(fns)
    for r in range(args.rounds):
        key = jax.random.fold_in(kk, r)
        # Rotate the order every round so no variant always runs right after another.
        for name in names[r % len(names) :] + names[: r % len(names)]:
            fn = fns[name]
            t0 = time.perf_counter()
            jax.block_until_ready(fn(x, w, dy, key))
            times[name].append(time.perf_counter() - t0)

    base = times["dense x @ w"]
    print(
        f"fwd+bwd, x {x.shape} @ w ({args.d_in}, {args.d_out}), float32, "
        f"{jax.devices()[0].platform}, {args.rounds} interleaved rounds"
    )
    print(f"{'variant':30s} {'median ms':>10s} {'ratio':>7s} {'first call s':>13s}")
    for name, ts in times.items():
        ratio = statistics.median(t / b for t, b in zip(ts, base, strict=True))
        print(
            f"{name:30s} {1e3 * statistics.median(ts):10.1f} {ratio:7.3f} {compile_s[name]:13.2f}"
        )


if __name__ == "__main__":
    main()
