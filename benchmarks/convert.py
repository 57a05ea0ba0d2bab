"""AdaPrune layer re-fit: jaxnm's masked least squares vs the reference's 1,000 Adam steps.

One conv layer of the example ResNet shape (3x3, 64 -> 64 channels: K = 576 rows, 64 output
columns) with a 4:8 transposable magnitude mask, on correlated inputs (P patches). Both
minimise ``‖X(w ⊙ mask) − X w_dense‖²`` over the kept weights; reported: median wall time
after warm-up (compile apart) and the relative output error reached.

    python benchmarks/convert.py [--patches 4096] [--repeats 5]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxnm import convert, transposable_mask


def adam_refit(x, w, mask, steps=1000, lr=1e-3):
    """The reference recipe: Adam on the kept weights, full batch."""
    target = x @ w
    tx = optax.adam(lr)

    def loss(v):
        return jnp.mean((x @ (v * mask) - target) ** 2)

    def body(_, carry):
        v, state = carry
        g = jax.grad(loss)(v)
        updates, state = tx.update(g, state)
        return optax.apply_updates(v, updates), state

    v0 = w * mask
    v, _ = jax.lax.fori_loop(0, steps, body, (v0, tx.init(v0)))
    return v * mask


def timed(fn, *args, repeats):
    jax.block_until_ready(fn(*args))  # compile + warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--patches", type=int, default=4096)
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args()
    k, out = 576, 64
    kx, kw, km = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (a.patches, k)) @ (jax.random.normal(km, (k, k)) / np.sqrt(k))
    w = jax.random.normal(kw, (k, out)) / np.sqrt(k)
    mask = transposable_mask(w.reshape(9, 64, 64), 4, 8).reshape(k, out)

    ours = jax.jit(lambda x, w, mask: convert.masked_least_squares(convert.dense_gram(x), w, mask))
    adam = jax.jit(adam_refit)
    t_ours, v_ours = timed(ours, x, w, mask, repeats=a.repeats)
    t_adam, v_adam = timed(adam, x, w, mask, repeats=max(1, a.repeats // 2))
    gram = convert.dense_gram(x)
    err = {
        "magnitude": float(convert.reconstruction_error(gram, w, w * mask)),
        "lstsq": float(convert.reconstruction_error(gram, w, v_ours)),
        "adam1000": float(convert.reconstruction_error(gram, w, v_adam)),
    }
    print(f"layer K={k} out={out}, P={a.patches} patches, 4:8-T mask")
    rows = [
        ("masked least squares (Gram + Cholesky)", t_ours, err["lstsq"]),
        ("Adam, 1000 steps (reference recipe)", t_adam, err["adam1000"]),
    ]
    for name, t, e in rows:
        print(f"{name:40s} {t * 1e3:9.1f} ms   relative output error {e:.4f}")
    print(f"{'magnitude only':40s} {'':12s}   relative output error {err['magnitude']:.4f}")
    print(f"speed-up {t_adam / t_ours:.1f}x")


if __name__ == "__main__":
    main()
