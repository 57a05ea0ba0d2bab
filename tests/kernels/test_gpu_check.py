"""``benchmarks/gpu_check.py --smoke`` runs on CPU (kernels in interpret mode) and fails on a
wrong result, so the prepared device check cannot rot."""

import importlib
import json
import sys
from pathlib import Path

import jax.numpy as jnp
import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def gpu_check():
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    return importlib.import_module("gpu_check")


@pytest.mark.slow
def test_smoke_command_passes(gpu_check, tmp_path):
    out = tmp_path / "check.json"
    assert gpu_check.main(["--smoke", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report["sections"]) == {s.__name__ for s in gpu_check.SECTIONS}
    solvers = report["sections"]["solvers"]
    assert len(solvers["rows"]) == 2 * len(gpu_check.SMOKE.solver_nms)
    assert "| method | nm |" in gpu_check.markdown("solvers", solvers)


def test_smoke_sections_pass(gpu_check):
    # The subprocess benchmarks (ops, train_step) and the solvers section (two solver
    # compiles, ~30 s on CPU; the solvers' own tests are in tests/masks) run in the slow
    # test above.
    sections = [s for s in gpu_check.SECTIONS if s.__name__ not in ("ops", "train_step", "solvers")]
    report = gpu_check.run(True, sections)
    assert report["ok"], json.dumps(report, default=str)[:3000]
    names = {s.__name__ for s in sections}
    assert set(report["sections"]) == names
    rows = report["sections"]["correctness"]["rows"]
    assert {r["backend"] for r in rows} == set(gpu_check.GPU_BACKENDS)
    assert all(r["ok"] is True for r in rows if r["backend"] == "gpu")
    assert len(gpu_check.FULL.solver_nms) == 3  # 2:4, 4:8 and 8:16 on the device


def test_a_wrong_result_fails_the_check(gpu_check, monkeypatch, tmp_path):
    def wrong(x, c, **kwargs):
        return jnp.zeros((x.shape[0], c.shape[1]), x.dtype)

    monkeypatch.setattr(gpu_check, "nm_matmul", wrong)
    monkeypatch.setattr(gpu_check, "SECTIONS", [gpu_check.correctness])
    # the required backend only: the experimental one's interpret mode is slow (CI budget)
    monkeypatch.setattr(gpu_check, "GPU_BACKENDS", {"gpu": True})
    monkeypatch.setattr(gpu_check, "_on_gpu", lambda: True)  # the full mode's entry check
    monkeypatch.setattr(gpu_check, "FULL", gpu_check.SMOKE)
    out = tmp_path / "check.json"
    assert gpu_check.main(["--out", str(out)]) == 1
    report = json.loads(out.read_text())
    assert report["ok"] is False
    assert not any(r["ok"] is True for r in report["sections"]["correctness"]["rows"])
