"""N:M matmul (`jaxnm.kernels.nm_matmul`) versus dense `jnp.dot`, measured in the same run.

For every (tokens, K = N) it times ``y = x · W`` with ``W`` stored compressed N:M (our path,
the backend chosen by ``--backend``) and the dense ``jnp.dot`` of the same masked weight, both
jitted, alternating the two calls so that machine noise hits both alike. Prints the median
time, effective GB/s (bytes each path must move: activations + weight (compressed: values +
indices) + output), TFLOP/s (dense-equivalent ``2·T·K·N`` for both) and the ratio
dense_time / our_time (> 1: ours is faster).

GPU (the issue's setting; needs a GPU)::

    python benchmarks/kernels.py

CPU, XLA decompress + dot versus dense (smaller sizes)::

    python benchmarks/kernels.py --backend xla --sizes 1024 2048 --tokens 1 8 16 128 1024
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import jaxnm
from jaxnm.kernels import nm_matmul, select_backend


def time_pair(ours, base, args_ours, args_base, repeats: int, warmup: int):
    for _ in range(warmup):
        jax.block_until_ready(ours(*args_ours))
        jax.block_until_ready(base(*args_base))
    t_ours, t_base = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(ours(*args_ours))
        t1 = time.perf_counter()
        jax.block_until_ready(base(*args_base))
        t2 = time.perf_counter()
        t_ours.append(t1 - t0)
        t_base.append(t2 - t1)
    return statistics.median(t_ours), statistics.median(t_base)


def _compile_seconds(fn, *args) -> float:
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - t0


def run(tokens, sizes, n: int, m: int, dtype, backend: str | None, repeats: int, warmup: int):
    device = jax.devices()[0]
    print(f"device: {device.platform} / {device.device_kind}; jax {jax.__version__}")
    print(f"pattern {n}:{m}, dtype {jnp.dtype(dtype).name}, repeats {repeats} (median)")
    header = (
        f"{'T':>5} {'K=N':>5} {'path':>5} {'ours ms':>9} {'dense ms':>9} {'ours GB/s':>10} "
        f"{'dense GB/s':>10} {'ours TF/s':>9} {'dense TF/s':>10} {'ratio':>6} {'max|err|':>9}"
    )
    print(header)
    rows = []
    for size in sizes:
        rng = np.random.default_rng(size)
        w = jnp.asarray(rng.standard_normal((size, size)), dtype)
        mask = jaxnm.nm_mask(w, n, m)
        c = jaxnm.compress(w, mask, n, m)
        w_dense = jnp.where(mask, w, 0).astype(dtype)
        for t in tokens:
            x = jnp.asarray(rng.standard_normal((t, size)), dtype)
            path = select_backend(x, c, backend, platform=jax.default_backend())
            ours = jax.jit(lambda x, c, path=path: nm_matmul(x, c, backend=path))
            base = jax.jit(
                lambda x, w: jnp.dot(x, w, preferred_element_type=jnp.float32).astype(x.dtype)
            )
            compile_ours = _compile_seconds(ours, x, c)
            compile_base = _compile_seconds(base, x, w_dense)
            err = float(
                jnp.max(
                    jnp.abs(ours(x, c).astype(jnp.float32) - base(x, w_dense).astype(jnp.float32))
                )
            )
            t_ours, t_base = time_pair(ours, base, (x, c), (x, w_dense), repeats, warmup)
            itemsize = jnp.dtype(dtype).itemsize
            io_bytes = (t * size + t * size) * itemsize  # x in, y out
            bytes_ours = io_bytes + c.nbytes
            bytes_base = io_bytes + c.dense_nbytes
            flops = 2.0 * t * size * size
            row = dict(
                tokens=t,
                size=size,
                path=path,
                ours_ms=1e3 * t_ours,
                dense_ms=1e3 * t_base,
                ours_gbs=bytes_ours / t_ours / 1e9,
                dense_gbs=bytes_base / t_base / 1e9,
                ours_tflops=flops / t_ours / 1e12,
                dense_tflops=flops / t_base / 1e12,
                ratio=t_base / t_ours,
                err=err,
                compile_s=(compile_ours, compile_base),
            )
            rows.append(row)
            print(
                f"{t:>5} {size:>5} {path:>5} {row['ours_ms']:>9.3f} {row['dense_ms']:>9.3f} "
                f"{row['ours_gbs']:>10.2f} {row['dense_gbs']:>10.2f} {row['ours_tflops']:>9.3f} "
                f"{row['dense_tflops']:>10.3f} {row['ratio']:>6.2f} {err:>9.2e}",
                flush=True,
            )
    print(
        f"weight bytes: compressed / dense = {c.nbytes / c.dense_nbytes:.4f} "
        f"(byte-limit speedup {c.dense_nbytes / c.nbytes:.2f}x for weight-bound shapes)"
    )
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", choices=["auto", "xla", "gpu", "tpu"], default="auto")
    parser.add_argument("--tokens", type=int, nargs="+", default=[1, 8, 16, 128, 4096])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 8192], help="K = N")
    parser.add_argument("--nm", default="2:4", help="pattern n:m")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    n, m = (int(v) for v in args.nm.split(":"))
    backend = None if args.backend == "auto" else args.backend
    run(args.tokens, args.sizes, n, m, jnp.dtype(args.dtype), backend, args.repeats, args.warmup)


if __name__ == "__main__":
    main()
