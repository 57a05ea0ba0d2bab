"""Tests of the language-model example: training on a tiny corpus the test writes (loss
falls), bit-identical resume, the masks of every block kernel, conversion and the loss plot,
the table runner and the GPT's sparse shares. The text loader is tested in test_lm_text.py."""

import json

import jax
import lm as lm_script
import lm_convert
import numpy as np
import plot as plot_script
import pytest
import run_lm_table
from flax import nnx
from nmexamples import gpt, lm_training

import jaxnm

TINY_MODEL = ["--dim", "16", "--depth", "1", "--heads", "2", "--context", "16"]
TINY_RUN = ["--batch-size", "8", "--eval-tokens", "256", "--warmup-steps", "2", "--no-progress"]


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    """A directory of small text files: a repetitive, learnable byte pattern."""
    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    words = [b"alpha ", b"beta ", b"gamma ", b"delta ", b"\n"]
    for i in range(12):
        doc = b"".join(words[k] for k in rng.integers(0, len(words), size=300))
        (root / f"doc{i:02d}.txt").write_bytes(doc)
    return root


def _args(corpus_dir, out, *extra):
    return ["--data", str(corpus_dir), *TINY_MODEL, *TINY_RUN, "--out", str(out), *extra]


def _state_leaves(run_dir):
    cfg, model, optimizer, _ = lm_training.load_run(run_dir)
    leaves = jax.tree.leaves(nnx.state((model, optimizer)))
    return [
        np.asarray(
            jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x
        )
        for x in leaves
    ]


@pytest.fixture(scope="module")
def dense_run(corpus_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "dense"
    history = lm_script.main(
        _args(corpus_dir, out, "--steps", "30", "--eval-every", "15", "--lr", "1e-2")
    )
    return out, history


def test_dense_lm_learns_and_writes_its_run(dense_run):
    out, history = dense_run
    assert [r["step"] for r in history] == [15, 30]
    assert history[-1]["val_loss"] < 0.75 * np.log(256)  # well below a uniform guess
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    r = history[-1]
    assert np.isclose(r["val_bpb"], r["val_loss"] / np.log(2))
    assert r["tokens_per_s"] > 0 and len(r["corpus_sha256"]) == 64
    info = json.loads((out / "run_info.json").read_text())
    assert info["corpus"]["documents"] == 12 and info["sparse"]["sparse_params"] == 0
    assert (out / "sample.txt").read_text(errors="replace")
    checkpoints = sorted(p.name for p in (out / "checkpoints").iterdir() if p.name.isdigit())
    assert checkpoints == ["15", "30"]


@pytest.mark.slow  # compile-heavy (CI budget); run with -m slow
def test_lm_convert_and_plot(dense_run, tmp_path):
    out, history = dense_run
    records = lm_convert.main(
        [
            "--run",
            str(out),
            "--sparsity",
            "4:8",
            "--calib-windows",
            "16",
            "--finetune-steps",
            "3",
            "--out",
            str(tmp_path),
        ]
    )
    (r,) = records
    loss = r["val_loss"]
    assert np.isclose(loss["dense"], history[-1]["val_loss"])
    assert set(loss) == {
        "dense",
        "magnitude",
        "adaprune",
        "magnitude_finetuned",
        "adaprune_finetuned",
    }
    assert all(np.isfinite(v) for v in loss.values())
    assert all(x["reconstructed_error"] <= x["magnitude_error"] + 1e-6 for x in r["layers"])
    assert len(r["layers"]) == 4  # qkv, proj, fc1, fc2 of the one block
    assert json.loads((tmp_path / "convert.json").read_text())[0]["sparsity"] == "4:8-T"
    (written,) = plot_script.main([str(out), "--out", str(tmp_path / "plots")])
    assert written.name == "val_loss.png" and written.stat().st_size > 0


def test_sparse_resume_is_bit_identical(corpus_dir, tmp_path):
    flags = [
        "--sparsity",
        "2:4",
        "--transposable",
        "--grad-sparsity",
        "mvue_1_2",
        "--refresh-every",
        "3",
        "--steps",
        "8",
        "--eval-every",
        "4",
        "--sample-bytes",
        "0",
    ]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    lm_script.main(_args(corpus_dir, whole, *flags))
    cfg = lm_script.parse_args(_args(corpus_dir, parts, *flags))
    first = lm_training.train(cfg, stop_after=3)  # stops between evaluations
    assert [r["step"] for r in first] == [3]
    resumed = lm_script.main(_args(corpus_dir, parts, *flags, "--resume"))
    assert [r["step"] for r in resumed] == [3, 4, 8]
    for a, b in zip(_state_leaves(whole), _state_leaves(parts), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="lr"):
        lm_script.main(_args(corpus_dir, parts, *flags, "--resume", "--lr", "0.5"))


@pytest.mark.parametrize(
    "nm",
    [pytest.param("4:8", marks=pytest.mark.slow), "2:4"],  # 4:8: a greedy compile (CI budget)
)
def test_every_block_kernel_gets_a_transposable_mask(nm):
    n, m = map(int, nm.split(":"))
    cfg = lm_training.LMConfig(sparsity=nm, transposable=True, dim=32, depth=2, heads=2, context=16)
    model, optimizer = lm_training.build(cfg)
    paths = lm_training.sparse_paths(optimizer)
    expected = {
        ("blocks", b, *layer, "kernel")
        for b in range(2)
        for layer in (("attn", "qkv"), ("attn", "proj"), ("fc1",), ("fc2",))
    }
    assert paths == expected  # embedding (= tied head), positions, norms stay dense
    masks = jaxnm.current_masks(optimizer.opt_state)
    for path in paths:
        node = masks
        for key in path:
            node = node[key]
        assert jaxnm.is_transposable_nm(np.asarray(node), n, m)
    shares = gpt.sparse_fractions(model, paths)
    kernels = 2 * (32 * 96 + 32 * 32 + 32 * 128 + 128 * 32)  # two blocks
    assert shares["sparse_params"] == kernels
    assert shares["sparse_flops_per_token"] == 2 * kernels
    assert shares["matmul_flops_per_token"] == 2 * kernels + 2 * 256 * 32 + 2 * 4 * 16 * 32
    assert 0.5 < shares["param_fraction"] < 1 and 0.5 < shares["flop_fraction"] < 1


@pytest.mark.slow  # compile-heavy (CI budget); run with -m slow
def test_bfloat16_compute_runs(corpus_dir, tmp_path):
    cfg = lm_script.parse_args(
        _args(
            corpus_dir,
            tmp_path,
            "--dtype",
            "bfloat16",
            "--sparsity",
            "4:8",
            "--transposable",
            "--steps",
            "2",
            "--eval-every",
            "2",
            "--sample-bytes",
            "0",
        )
    )
    model, optimizer = lm_training.build(cfg)
    windows = np.zeros((2, 17), np.int32)
    assert model(windows[:, :-1]).dtype == np.float32
    assert model.blocks[0].fc1(np.zeros((1, 16), np.float32)).dtype == jax.numpy.bfloat16
    history = lm_training.train(cfg)
    assert np.isfinite(history[-1]["val_loss"])


def test_bad_lm_flags(tmp_path):
    with pytest.raises(FileNotFoundError, match="no_such_corpus"):
        lm_script.main(["--data", str(tmp_path / "no_such_corpus"), "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        lm_script.parse_args(["--dtype", "float16"])
    with pytest.raises(ValueError, match="grad_sparsity"):
        lm_training.build(lm_training.LMConfig(grad_sparsity="mvue_1_2"))
    with pytest.raises(ValueError, match="context"):
        gpt.GPT(context=8, dim=16, depth=1, heads=2, rngs=nnx.Rngs(0))(np.zeros((1, 9), int))


def test_lm_table_passes_one_recipe_and_prints_gaps(monkeypatch, tmp_path, capsys):
    seen = []

    def fake_train(cfg):
        seen.append(cfg)
        loss = 1.0 + 0.01 * cfg.seed + 0.02 * (cfg.sparsity == "2:4")
        return [{"step": cfg.steps, "val_loss": loss, "val_bpb": loss / np.log(2)}]

    monkeypatch.setattr(run_lm_table, "train", fake_train)
    results = run_lm_table.main(
        ["--seeds", "0", "1", "--out", str(tmp_path), "--steps", "7", "--srste", "0.001"]
    )
    assert len(seen) == 2 * len(run_lm_table.CONFIGS)
    assert all(c.steps == 7 and c.srste == 0.001 and c.sparse_start == 0.3 for c in seen)
    assert {c.out for c in seen} == {str(tmp_path / lm_script.run_label(c)) for c in seen}
    assert str(tmp_path / "lm_stdlib_48t_mvue_1_2_seed1") in {c.out for c in seen}
    assert {(c.sparsity, c.transposable, c.grad_sparsity) for c in seen} == {
        ("dense", False, "none"),
        ("4:8", True, "none"),
        ("4:8", True, "mvue_1_2"),
        ("2:4", True, "mvue_1_2"),
        ("2:4", False, "none"),
    }
    assert [r["seed"] for r in results["dense"]] == [0, 1]
    out = capsys.readouterr().out
    assert "| dense | 1.4499 ± 0.0102 | 1.4427, 1.4571 | — | — |" in out
    assert "| 4:8-T | 1.4499 ± 0.0102 | 1.4427, 1.4571 | +0.0000 | +0.00% |" in out
    assert "| 2:4-T + MVUE 1:2 | 1.4788 ± 0.0102 | 1.4715, 1.4860 | +0.0289 | +2.02% |" in out
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["recipe"]["srste"] == 0.001
    with pytest.raises(SystemExit):
        run_lm_table.main(["--seed", "3"])
