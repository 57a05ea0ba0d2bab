"""The cuSPARSELt section of the prepared device check (``benchmarks/gpu_check.py``).

EXPERIMENTAL backend; this section has never run on a GPU in this project (none was lent).
On a CUDA GPU with the extension built (``pip install -e ".[cusparselt]"`` and
``python -m jaxnm.kernels.cusparselt.build``) it checks, then times:

1. correctness of every cuSPARSELt call against ``jnp.dot`` (bfloat16 tolerances): the three
   GEMM layouts (forward ``x·W``, input gradient ``dy·Wᵀ``, weight gradient ``xᵀ·dy`` with a
   2:4 ``dy``), ``nm_matmul(..., backend="cusparselt")``, the training op's forward and both
   gradients, and ``compressed_nbytes`` against ``cusparseLtSpMMACompressedSize2``;
2. speed against dense ``jnp.dot`` in the same run: 8192³ bfloat16 (forward GEMM, weight
   compressed once, algorithm searched), the ViT-B and GPT-2-small linear shapes at
   4096–16384 tokens (forward, and forward + both gradients of the training op vs a dense
   layer), the cost of compressing ``W`` (the ``weight_compression="step"`` overhead);
3. a whole train step of the GPT example (``examples/lm.py``'s model at GPT-2-small width,
   8192 tokens, bfloat16; ``sparsify`` with transposable 2:4 masks refreshed inside the step,
   ``sparsify_model(..., grad_sparsity=MVUE(2, 4), backend="cusparselt")``) against the same
   sparse step on XLA and the dense step.

Goals (issue 11): forward ≥ 1.2× dense at 8192³, ViT-B MLP fwd+bwd ≥ 1.1×, train step ≥ 1.05×.
Elsewhere (CPU, or the extension missing) the section reports why it was skipped.

``python benchmarks/gpu_check_cusparselt.py [--smoke]`` runs the section alone and prints JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import jaxnm
from jaxnm.kernels import cusparselt

sys.path.insert(0, str(Path(__file__).parent))
from kernels import time_pair  # noqa: E402  (the kernels benchmark's same-run timer)

DTYPE = jnp.bfloat16
TOL = 2e-2  # max |error| / max |reference| for bfloat16 operands, float32 accumulation
# (in, out) linear shapes: ViT-B MLP, GPT-2 small attention projections and MLP.
LINEAR_SHAPES = {
    "vit_b.mlp_in": (768, 3072),
    "vit_b.mlp_out": (3072, 768),
    "gpt2.qkv": (768, 2304),
    "gpt2.attn_out": (768, 768),
    "gpt2.mlp_in": (768, 3072),
    "gpt2.mlp_out": (3072, 768),
}
TOKENS = (4096, 8192, 16384)


def skip_reason() -> str | None:
    """Why the section cannot run here, or ``None``."""
    if jax.default_backend() != "gpu":
        return f"no CUDA GPU (jax.default_backend() is {jax.default_backend()!r})"
    try:
        cusparselt.load()
    except cusparselt.CusparseLtUnavailableError as error:
        return str(error)
    return None


def _rel_err(got, want) -> float:
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-6))


def _two_four(key, shape, axis):
    w = jax.random.normal(key, shape)
    return jnp.where(jaxnm.nm_mask(w, 2, 4, axis=axis), w, 0).astype(DTYPE)


def top2_of_4_tokens(g, key):
    """A deterministic 2:4 token pruner (keeps the 2 largest of every 4 tokens), so the
    weight gradient has an exact reference."""
    del key
    return jnp.where(jaxnm.nm_mask(g.astype(jnp.float32), 2, 4, axis=0), g, 0)


def layer_case(t: int, k: int, n: int, seed: int = 0):
    """``(x, w, mask, cot)`` of a training layer; the mask is transposable 2:4."""
    kx, kw, kg = jax.random.split(jax.random.key(seed), 3)
    w = jax.random.normal(kw, (k, n))
    mask = jaxnm.transposable_mask(w, 2, 4, method="greedy")
    return (
        jax.random.normal(kx, (t, k)).astype(DTYPE),
        w.astype(DTYPE),
        mask,
        jax.random.normal(kg, (t, n)).astype(DTYPE),
    )


def training_grads(x, w, mask, cot, prune=top2_of_4_tokens, backend="cusparselt"):
    """``(y, dx, dw)`` of one layer on cuSPARSELt, or of the dense reference layer."""

    def f(x, w):
        if backend == "cusparselt":
            return cusparselt.cusparselt_linear(x, w, mask, prune=prune, key=jax.random.key(0))
        return jnp.dot(x, jnp.where(mask, w, 0), preferred_element_type=jnp.float32).astype(x.dtype)

    y, vjp = jax.vjp(f, x, w)
    return (y, *vjp(cot))


def correctness(t: int = 1024, k: int = 2048, n: int = 1024) -> dict:
    """Every cuSPARSELt call against ``jnp.dot``; returns ``{name: relative error}``."""
    f32 = jnp.float32
    kx, kw, kg = jax.random.split(jax.random.key(1), 3)
    x = jax.random.normal(kx, (t, k)).astype(DTYPE)
    out = {}
    w_in = _two_four(kw, (k, n), axis=0)
    fwd = jax.jit(lambda w, x: cusparselt.matmul(cusparselt.compress(w.T), x, transpose_b=True))
    out["forward"] = _rel_err(fwd(w_in, x), x.astype(f32) @ w_in.astype(f32))
    w_out = _two_four(kw, (k, n), axis=1)
    dy = jax.random.normal(kg, (t, n)).astype(DTYPE)
    dx = jax.jit(lambda w, dy: cusparselt.matmul(cusparselt.compress(w), dy, transpose_b=True))
    out["input_grad"] = _rel_err(dx(w_out, dy), dy.astype(f32) @ w_out.astype(f32).T)
    dy24 = _two_four(kg, (t, n), axis=0)
    dw = jax.jit(lambda g, x: cusparselt.matmul(cusparselt.compress(g.T), x, transpose_b=False))
    out["weight_grad"] = _rel_err(dw(dy24, x), x.astype(f32).T @ dy24.astype(f32))
    c = jaxnm.compress(w_in, w_in != 0, 2, 4, axis=0)
    nm = jax.jit(lambda x: jaxnm.kernels.nm_matmul(x, c, backend="cusparselt"))
    out["nm_matmul"] = _rel_err(nm(x[:77]), x[:77].astype(f32) @ w_in.astype(f32))
    xl, wl, mask, cot = layer_case(t, k, n)
    got = jax.jit(training_grads)(xl, wl, mask, cot)
    pruned = top2_of_4_tokens(cot, None)
    w_eff = jnp.where(mask, wl, 0).astype(f32)
    want = (xl.astype(f32) @ w_eff, cot.astype(f32) @ w_eff.T, xl.astype(f32).T @ pruned)
    for name, g, r in zip(("train.y", "train.dx", "train.dw"), got, want, strict=True):
        out[name] = _rel_err(g, r)
    for rows, cols in ((k, n), (n, t)):
        library = cusparselt.library_compressed_nbytes(rows, cols, DTYPE)
        out[f"nbytes({rows}x{cols}) library/ours"] = (
            library,
            cusparselt.compressed_nbytes(rows, cols, DTYPE),
        )
    return out


def forward_speed(t: int, k: int, n: int, repeats: int, search: bool = True) -> dict:
    """Forward ``x (t, k) · W (k, n)``: cuSPARSELt (W compressed once) vs ``jnp.dot``."""
    x, w, mask, _ = layer_case(t, k, n)
    w_eff = jnp.where(mask, w, 0)
    a = jax.jit(cusparselt.compress)(w_eff.T)
    alg = cusparselt.search_algorithm(n, k, t, DTYPE, transpose_b=True) if search else -1
    ours = jax.jit(lambda a, x: cusparselt.matmul(a, x, transpose_b=True, alg_id=alg))
    dense = jax.jit(lambda x, w: jnp.dot(x, w))
    t_ours, t_dense = time_pair(ours, dense, (a, x), (x, w_eff), repeats, warmup=3)
    comp = jax.jit(lambda w: cusparselt.compress(w.T))
    t_comp, _ = time_pair(comp, dense, (w_eff,), (x, w_eff), repeats, warmup=2)
    return {
        "alg_id": alg,
        "cusparselt_ms": 1e3 * t_ours,
        "dense_ms": 1e3 * t_dense,
        "ratio": t_dense / t_ours,
        "compress_W_ms": 1e3 * t_comp,
    }


def layer_speed(t: int, k: int, n: int, repeats: int) -> dict:
    """Forward + both gradients of one training layer (MVUE 2:4) vs the dense layer."""
    x, w, mask, cot = layer_case(t, k, n)

    def mvue(g, key):
        return jaxnm.mvue(g, 2, 4, key, axis=0)

    ours = jax.jit(lambda x, w, c: training_grads(x, w, mask, c, prune=mvue))
    dense = jax.jit(lambda x, w, c: training_grads(x, w, mask, c, backend="dense"))
    t_ours, t_dense = time_pair(ours, dense, (x, w, cot), (x, w, cot), repeats, warmup=3)
    return {"cusparselt_ms": 1e3 * t_ours, "dense_ms": 1e3 * t_dense, "ratio": t_dense / t_ours}


# The train step's model: the byte-level GPT of examples/lm.py at GPT-2-small width (dim 768,
# 12 heads, 4 blocks), bfloat16 compute; 8 × 1024 = 8192 tokens a step. Smoke: a tiny one.
GPT_SHAPE = {"dim": 768, "depth": 4, "heads": 12, "context": 1024}
GPT_BATCH = 8
GPT_SMOKE_SHAPE = {"dim": 64, "depth": 1, "heads": 4, "context": 64}


def gpt_train_step(backend: str, shape: dict = GPT_SHAPE, batch: int = GPT_BATCH):
    """``(step, model, optimizer, data)`` of the GPT example's jitted train step.

    ``backend``: ``"cusparselt"`` (``sparsify`` with transposable 2:4 masks, greedy refresh
    every 40 steps inside the step, ``sparsify_model(..., grad_sparsity=MVUE(2, 4),
    backend="cusparselt")``: forward, input and weight gradient of every block's four
    ``nnx.Linear`` on cuSPARSELt), ``"xla"`` (the same sparse training on masked dense XLA
    GEMMs) or ``"dense"`` (plain ``nnx.Optimizer``, no jaxnm). Same model, optimizer (adamw)
    and data for all; bfloat16 compute, float32 parameters. ``data``: ``(inputs, labels)``
    int32 ``(batch, context)`` byte windows.
    """
    import train_step as ts  # benchmarks/train_step.py: the model builders and the step

    sparse = backend != "dense"
    model, optimizer = ts.make(
        sparse,
        40,
        jaxnm.MVUE(2, 4) if sparse else None,
        (2, 4),
        model_fn=ts.make_gpt,
        backend="xla" if backend == "dense" else backend,
        dtype=DTYPE,
        **shape,
    )
    tokens = jax.random.randint(jax.random.key(4), (batch, shape["context"] + 1), 0, 256)
    return ts.train_step, model, optimizer, (tokens[:, :-1], tokens[:, 1:])


def train_step_speed(repeats: int, smoke: bool = False) -> dict:
    """The GPT example's train step: cuSPARSELt vs the same sparse step on XLA vs dense
    (alternating timed runs of each, medians; first call = compile, not timed)."""
    shape, batch = (GPT_SMOKE_SHAPE, 2) if smoke else (GPT_SHAPE, GPT_BATCH)
    out = {"model": {**shape, "batch": batch, "tokens": batch * shape["context"]}}
    runs = {b: gpt_train_step(b, shape, batch) for b in ("cusparselt", "xla", "dense")}
    losses = {}
    for name, (step, model, optimizer, data) in runs.items():
        losses[name] = float(step(model, optimizer, *data))  # compile + one step
    times = {name: [] for name in runs}
    for _ in range(repeats):
        for name, (step, model, optimizer, data) in runs.items():
            start = time.perf_counter()
            step(model, optimizer, *data).block_until_ready()
            times[name].append(time.perf_counter() - start)
    for name in runs:
        out[f"{name}_ms"] = 1e3 * statistics.median(times[name])
    out["ratio_vs_dense"] = out["dense_ms"] / out["cusparselt_ms"]
    out["ratio_vs_xla_sparse"] = out["xla_ms"] / out["cusparselt_ms"]
    out["loss_finite"] = all(np.isfinite(v) for v in losses.values())
    return out


def section(smoke: bool = False) -> dict:
    """Runs the section: ``{"skipped": why}`` where it cannot run, else results and ``ok``."""
    why = skip_reason()
    if why is not None:
        print(f"cuSPARSELt section skipped: {why}")
        return {"skipped": why}
    cusparselt.check_compute_capability(jax.devices()[0])
    repeats = 3 if smoke else 20
    out = {"version": cusparselt.version()}
    errors = correctness(*((256, 512, 256) if smoke else (1024, 2048, 1024)))
    out["correctness"] = errors
    out["ok"] = all(v <= TOL for v in errors.values() if isinstance(v, float)) and all(
        lib <= ours for lib, ours in (v for v in errors.values() if isinstance(v, tuple))
    )
    big = 1024 if smoke else 8192
    out["forward_8192^3"] = forward_speed(big, big, big, repeats)
    shapes = {}
    for name, (k, n) in LINEAR_SHAPES.items():
        for t in TOKENS[:1] if smoke else TOKENS:
            shapes[f"{name} T={t}"] = {
                "forward": forward_speed(t, k, n, repeats, search=not smoke),
                "fwd+bwd": layer_speed(t, k, n, repeats),
            }
        if smoke:
            break
    out["linear_shapes"] = shapes
    out["train_step"] = train_step_speed(repeats, smoke=smoke)
    out["ok"] = out["ok"] and out["train_step"]["loss_finite"]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description="cuSPARSELt section of the device check")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, few repeats")
    args = parser.parse_args()
    out = section(smoke=args.smoke)
    print(json.dumps(out, indent=1, default=str))
    return 0 if out.get("ok", True) else 1


if __name__ == "__main__":
    sys.exit(main())
