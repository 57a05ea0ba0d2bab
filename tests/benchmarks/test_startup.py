"""The start-up benchmark's --smoke run (benchmarks/startup.py): dense and sparse, same run."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_smoke(models: list[str]) -> str:
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "startup.py"), "--smoke", "--models", *models],
        capture_output=True,
        text=True,
        timeout=1800,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    for model in models:
        assert f"| {model} | sparse auto / dense |" in out, out
        assert f"{model} (sparse auto): init " in out and "first step" in out, out
    kernels = [int(k) for k in re.findall(r"(\d+) sparse kernels", out)]
    assert len(kernels) == len(models) and min(kernels) > 0, out
    return out


def test_startup_benchmark_smoke_cnn():
    run_smoke(["cnn"])


@pytest.mark.slow
def test_startup_benchmark_smoke_all_models():
    run_smoke(["cnn", "resnet", "vit"])
