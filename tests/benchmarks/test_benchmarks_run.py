"""Every benchmark script runs to the end at tiny sizes and prints its same-run comparison
(slow: each compiles its own solvers and steps). ``startup.py --smoke`` and
``gpu_check.py --smoke`` have their own, fast, tests; ``greedy_versions.py`` needs a git
checkout of an older commit and is left out."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

TINY = {
    "convert": (["--patches", "64", "--repeats", "1"], "speed-up"),
    "device_solvers": (["--size", "64", "--nm", "2:4", "--reps", "1"], "time / greedy+repair"),
    "kernels": (
        ["--backend", "xla", "--tokens", "8", "--sizes", "256", "--repeats", "1", "--warmup", "1"],
        "weight bytes: compressed / dense",
    ),
    "layer_masks": (["--sizes", "64", "--reps", "1"], "compact_min_tiles"),
    "loop_condition": (["1"], "/ jaxnm's |"),
    "ops": (["--tokens", "64", "--d-in", "64", "--d-out", "128", "--rounds", "1"], "ratio"),
    "solvers": (["--sizes", "64", "--nm", "2:4", "--repeats", "1", "--nx-tiles", "4"], "certified"),
    "startup_parts": (["1"], "| sparse device |"),
    "train_step": (
        ["--rounds", "1", "--steps-per-round", "2", "--batch", "2", "--dim", "32", "--depth", "1"]
        + ["--heads", "2", "--refresh-every", "2"],
        "sparse/dense averaged over",
    ),
    "train_step_gpt": (
        ["--model", "gpt", "--rounds", "1", "--steps-per-round", "2", "--batch", "2"]
        + ["--dim", "32", "--depth", "1", "--heads", "2", "--context", "16"]
        + ["--refresh-every", "2"],
        "sparse/dense averaged over",
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TINY))
def test_benchmark_runs(name):
    args, expected = TINY[name]
    script = ROOT / "benchmarks" / f"{name.removesuffix('_gpt')}.py"
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    result = subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        timeout=1800,
        env=env,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert expected in result.stdout.lower(), result.stdout[-3000:]
