"""The README's main example runs end to end on a tiny layer."""

import importlib.util
from pathlib import Path

DEMO = Path(__file__).resolve().parents[2] / "examples" / "masks_demo.py"


def test_masks_demo_main_on_tiny_layer(capsys):
    spec = importlib.util.spec_from_file_location("masks_demo", DEMO)
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    records = demo.main(["--size", "64", "--repeats", "1"])
    out = capsys.readouterr().out
    assert "4:8 transposable" in out and "mask diversity" in out
    assert {(r["n"], r["m"]) for r in records} == {(2, 4), (4, 8)}
    assert all(r["valid"] for r in records)
    for r in records:
        assert 0.5 <= r["quality"] <= 1.0 + 1e-6, r
        if r["method"] in ("exact", "exhaustive"):
            assert abs(r["quality"] - 1.0) < 1e-6
    assert "exhaustive" in {r["method"] for r in records if r["m"] == 4}
    assert "exhaustive" not in {r["method"] for r in records if r["m"] == 8}
