"""The prepared device check: one command on one H100/H200; exits non-zero on any wrong result.

    python benchmarks/gpu_check.py [--out gpu_check.json]      # on the GPU, planned <= 5 min
    python benchmarks/gpu_check.py --smoke                     # tiny shapes; CPU: interpret mode

Sections (``SECTIONS``: a list of functions ``section(smoke: bool) -> dict``; a section returns
``{"rows": [dict, ...], "ok": bool}``, or ``{"skipped": why}``, or its own dict with ``ok``):

* ``correctness``: every GPU backend of ``nm_matmul`` (``"gpu"``: Triton; ``"mosaic_gpu"``:
  EXPERIMENTAL, reported but not required: it compiles for H100/H200 but has never run) against
  ``nm_matmul_reference`` at HIGHEST precision, bf16/fp16/fp32 x T in {1, 16, 128, 4096} x
  K = N in {4096, 8192}, plus the custom_vjp input gradient through ``c_t``;
* ``kernels``: ``benchmarks/kernels.py``'s table (T in {1, 8, 16, 128, 4096}, K = N in
  {4096, 8192}, bf16: time, GB/s, TFLOP/s, ratio to dense ``jnp.dot``);
* ``ops`` and ``train_step``: ``benchmarks/ops.py`` and ``benchmarks/train_step.py`` in
  subprocesses (their printed summaries are kept);
* ``solvers``: ``greedy`` and ``exact_device`` transposable masks at 4096² for 2:4/4:8/8:16
  (median time after compilation; masks checked transposable);
* ``cusparselt``: ``benchmarks/gpu_check_cusparselt.section`` (skips without its extension).

Writes one JSON file and prints one markdown table per section (to paste into BENCHMARKS.md).
No GPU was lent to this project when it was written: it has run only with ``--smoke`` on CPU,
where kernels run in Pallas interpret mode; the ≤ 5 min budget on a GPU is unmeasured.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import gpu_check_cusparselt  # noqa: E402
import kernels as kernels_bench  # noqa: E402

import jaxnm  # noqa: E402
from jaxnm import compressed as cz  # noqa: E402
from jaxnm.kernels import nm_matmul, nm_matmul_reference  # noqa: E402

Section = Callable[[bool], dict]
TOL = {"float32": 1e-5, "float16": 2e-3, "bfloat16": 1e-2}  # relative to max |reference|
# backend -> required (a wrong or failing required backend fails the check).
GPU_BACKENDS = {"gpu": True, "mosaic_gpu": False}


@dataclasses.dataclass(frozen=True)
class Shapes:
    """The sizes one run uses (full on a GPU, tiny for ``--smoke``)."""

    dtypes: tuple[str, ...]
    tokens: tuple[int, ...]
    sizes: tuple[int, ...]
    table_tokens: tuple[int, ...]
    solver_size: int
    repeats: int
    solver_nms: tuple[tuple[int, int], ...] = ((2, 4), (4, 8), (8, 16))


FULL = Shapes(
    ("bfloat16", "float16", "float32"),
    (1, 16, 128, 4096),
    (4096, 8192),
    (1, 8, 16, 128, 4096),
    4096,
    20,
)
# smoke: one n:m per solver (each solver compile costs seconds on a CPU; CI budget)
SMOKE = Shapes(("bfloat16", "float32"), (1, 16), (64,), (1, 8), 64, 2, ((2, 4),))


def _on_gpu() -> bool:
    return jax.default_backend() == "gpu"


def _case(tokens: int, size: int, dtype, seed: int):
    rng = np.random.default_rng(seed)
    w = jnp.asarray(rng.standard_normal((size, size)), dtype)
    x = jnp.asarray(rng.standard_normal((tokens, size)), dtype)
    mask = jaxnm.transposable_mask(jnp.abs(w).astype(jnp.float32), 2, 4)  # "auto"
    return x, jaxnm.compress(w, mask, 2, 4)


def _rel_err(y, ref) -> float:
    y, ref = np.asarray(y, np.float64), np.asarray(ref, np.float64)
    if y.shape != ref.shape or not np.isfinite(y).all():
        return float("inf")
    return float(np.abs(y - ref).max() / max(1.0, np.abs(ref).max()))


def correctness(smoke: bool) -> dict:
    """Every GPU backend against the reference, forward and the ``c_t`` input gradient."""
    shapes = SMOKE if smoke else FULL
    interpret = not _on_gpu()
    rows, ok = [], True
    for backend, required in GPU_BACKENDS.items():
        for dtype_name in shapes.dtypes:
            dtype = jnp.dtype(dtype_name)
            for size in shapes.sizes:
                for tokens in shapes.tokens:
                    if smoke and not required and (dtype_name, tokens) != ("bfloat16", 16):
                        continue  # interpret mode of the experimental kernel is slow
                    row = dict(backend=backend, dtype=dtype_name, T=tokens, K=size, N=size)
                    row.update(_check_one(backend, tokens, size, dtype, interpret))
                    row["ok"] = row["fwd_err"] <= TOL[dtype_name] >= row["dx_err"]
                    if not row["ok"] and not required:
                        row["ok"] = "not required (EXPERIMENTAL)"
                    elif not row["ok"]:
                        ok = False
                    rows.append(row)
                    print(f"  {row}", flush=True)
    return {"rows": rows, "ok": ok}


def _check_one(backend: str, tokens: int, size: int, dtype, interpret: bool) -> dict:
    x, c = _case(tokens, size, dtype, seed=tokens + size)
    c_t = cz.transpose(c)
    try:
        y = jax.jit(lambda x, c: nm_matmul(x, c, backend=backend, interpret=interpret))(x, c)
        ref = nm_matmul_reference(x, c, precision=lax.Precision.HIGHEST)

        def loss(x, fn):
            return jnp.sum(jnp.sin(fn(x).astype(jnp.float32)))

        # c and c_t are jit arguments (nm_matmul's eager c_t check skips traced operands).
        dx = jax.jit(
            jax.grad(
                lambda x, c, c_t: loss(
                    x, lambda v: nm_matmul(v, c, c_t=c_t, backend=backend, interpret=interpret)
                )
            )
        )(x, c, c_t)
        dx_ref = jax.grad(
            lambda x: loss(x, lambda v: nm_matmul_reference(v, c, precision="highest"))
        )(x)
        return {"fwd_err": _rel_err(y, ref), "dx_err": _rel_err(dx, dx_ref)}
    except Exception as error:  # noqa: BLE001 - recorded as a failed row
        return {"fwd_err": float("inf"), "dx_err": float("inf"), "error": repr(error)[:300]}


def kernels(smoke: bool) -> dict:
    """``benchmarks/kernels.py``'s table (bf16, 2:4), the backend chosen per platform."""
    shapes = SMOKE if smoke else FULL
    rows = kernels_bench.run(
        shapes.table_tokens, shapes.sizes, 2, 4, jnp.bfloat16, None, shapes.repeats, 1
    )
    for row in rows:
        row["compile_s"] = list(row["compile_s"])
    # Correctness is the `correctness` section's job; here every result must be finite.
    return {"rows": rows, "ok": all(np.isfinite(row["err"]) for row in rows)}


def _script(name: str, args: list[str], timeout: int) -> dict:
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, str(HERE / name), *args], capture_output=True, text=True, timeout=timeout
    )
    summary = [line for line in done.stdout.splitlines() if line.strip()][-8:]
    row = dict(script=name, args=" ".join(args), exit=done.returncode)
    row["seconds"] = round(time.perf_counter() - start, 1)
    row["summary"] = " | ".join(summary)
    if done.returncode:
        row["stderr"] = done.stderr[-1000:]
    return {"rows": [row], "ok": done.returncode == 0}


def ops(smoke: bool) -> dict:
    small = ["--tokens", "64", "--d-in", "64", "--d-out", "64", "--rounds", "2"]
    return _script("ops.py", small if smoke else ["--rounds", "10"], 600)


def train_step(smoke: bool) -> dict:
    small = ["--rounds", "1", "--steps-per-round", "2", "--dim", "32", "--depth", "1"]
    small += ["--heads", "2", "--refresh-every", "2", "--batch", "2"]
    return _script("train_step.py", small if smoke else ["--rounds", "6"], 600)


def solvers(smoke: bool) -> dict:
    """Transposable-mask solvers: median seconds per layer after compilation."""
    shapes = SMOKE if smoke else FULL
    size = shapes.solver_size
    w = jnp.abs(jax.random.normal(jax.random.key(0), (size, size)))
    rows, ok = [], True
    for method in ("greedy", "exact_device"):
        for n, m in shapes.solver_nms:
            fn = jax.jit(
                lambda w, n=n, m=m, method=method: jaxnm.transposable_mask(w, n, m, method=method)
            )
            mask = jax.block_until_ready(fn(w))
            times = []
            for _ in range(max(2, shapes.repeats // 4)):
                start = time.perf_counter()
                jax.block_until_ready(fn(w))
                times.append(time.perf_counter() - start)
            valid = bool(jaxnm.is_transposable_nm(mask, n, m))
            kept = float(jnp.sum(w * mask) / jnp.sum(w))
            ok = ok and valid
            rows.append(
                dict(
                    method=method,
                    nm=f"{n}:{m}",
                    size=size,
                    ms=1e3 * statistics.median(times),
                    transposable=valid,
                    kept_score=round(kept, 4),
                )
            )
            print(f"  {rows[-1]}", flush=True)
    return {"rows": rows, "ok": ok}


def cusparselt(smoke: bool) -> dict:
    return gpu_check_cusparselt.section(smoke=smoke)


SECTIONS: list[Section] = [correctness, kernels, ops, train_step, solvers, cusparselt]


def markdown(name: str, result: dict) -> str:
    """One markdown table of a section's rows (or its skip reason / raw result)."""
    if "skipped" in result:
        return f"### {name}\n\nskipped: {result['skipped']}\n"
    rows = result.get("rows")
    if not rows:
        return f"### {name}\n\n```text\n{json.dumps(result, indent=1, default=str)}\n```\n"
    cols = list(dict.fromkeys(k for row in rows for k in row))
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = [f"### {name}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(row.get(c, "")) for c in cols) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def run(smoke: bool, sections: list[Section] | None = None) -> dict:
    device = jax.devices()[0]
    report = {
        "device": f"{device.platform} / {device.device_kind}",
        "jax": jax.__version__,
        "smoke": smoke,
        "sections": {},
    }
    for section in SECTIONS if sections is None else sections:
        start = time.perf_counter()
        print(f"== {section.__name__}", flush=True)
        try:
            result = section(smoke)
        except Exception:  # noqa: BLE001 - a crashing section fails the check, the rest runs
            result = {"ok": False, "error": traceback.format_exc()[-2000:]}
        result["seconds"] = round(time.perf_counter() - start, 1)
        report["sections"][section.__name__] = result
    report["ok"] = all(r.get("ok", True) is not False for r in report["sections"].values())
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny shapes (runs on CPU)")
    parser.add_argument("--out", default="gpu_check.json", help="JSON file to write")
    args = parser.parse_args(argv)
    if not args.smoke and not _on_gpu():
        print("no GPU here: use --smoke (CPU, interpret mode)")
        return 2
    report = run(args.smoke)
    Path(args.out).write_text(json.dumps(report, indent=1, default=str))
    print(f"\ndevice: {report['device']}; jax {report['jax']}; smoke={args.smoke}\n")
    for name, result in report["sections"].items():
        print(markdown(name, result))
    print(f"wrote {args.out}; {'OK' if report['ok'] else 'FAILED'}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
