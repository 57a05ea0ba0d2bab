"""Smoke tests of the example scripts on tiny data: train (ResNet/ViT, dense/sparse), resume,
convert and plot. Each run is a couple of optimizer steps on 64 digits. The sparse ViT run
and the conversion script are marked slow (compile-heavy); jaxnm.convert itself is tested in
tests/convert."""

import inspect
import json

import convert as convert_script
import jax
import numpy as np
import plot as plot_script
import pytest
import train as train_script
from flax import nnx
from nmexamples import checkpoint, training

import jaxnm

TINY = ["--epochs", "2", "--batch-size", "32", "--train-limit", "64", "--test-limit", "32"]


def _checkpoint_leaves(run_dir, template):
    """The arrays of a run's latest checkpoint, restored into ``template``'s structure."""
    mngr = checkpoint.manager(run_dir / "checkpoints")
    _, state = checkpoint.restore(mngr, template)
    mngr.close()
    leaves = jax.tree.leaves(state)
    is_key = [jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) for x in leaves]
    return [
        np.asarray(jax.random.key_data(x) if k else x) for x, k in zip(leaves, is_key, strict=True)
    ]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    dense = root / "dense"
    sparse = root / "sparse"
    # The dense run is the ViT, the sparse one the ResNet: both models train in CI, each
    # compiled once (CI budget).
    train_script.main([*TINY, "--model", "vit", "--out", str(dense), "--no-progress"])
    # The sparse run also carries the recipe flags (dense start, SR-STE, refresh every step,
    # the exhaustive solver): one compiled sparse ResNet run serves both (CI budget).
    sparse_args = ["--sparsity", "2:4", "--transposable", "--grad-sparsity", "mvue_1_2"]
    sparse_args += ["--refresh-every", "1", "--sparse-start", "0.5", "--srste", "0.01"]
    sparse_args += ["--mask-method", "exhaustive"]
    train_script.main([*TINY, *sparse_args, "--model", "resnet", "--out", str(sparse)])
    return {"dense": dense, "sparse": sparse, "sparse_args": sparse_args}


def _check_run(run_dir, epochs=2):
    records = training.read_metrics(run_dir / "metrics.jsonl")
    assert [r["epoch"] for r in records] == list(range(epochs))
    assert records[-1]["step"] == 2 * epochs
    assert all(np.isfinite(r["train_loss"]) and 0 <= r["test_acc"] <= 1 for r in records)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit()) == [
        str(e) for e in range(max(0, epochs - 2), epochs)
    ]
    return records


def test_dense_vit_run(runs):
    _check_run(runs["dense"])
    cfg = json.loads((runs["dense"] / "config.json").read_text())
    assert cfg["model"] == "vit" and cfg["sparsity"] == "dense"


def test_sparse_resnet_masks_are_transposable(runs):
    _check_run(runs["sparse"])
    _, model, optimizer, _ = training.load_run(runs["sparse"])
    masks = jaxnm.current_masks(optimizer.opt_state)
    flat = {jaxnm.key_path_names(p): x for p, x in jax.tree_util.tree_flatten_with_path(masks)[0]}
    # every hidden conv is sparse; the 1-channel stem and the 10-way head stay dense
    assert len(flat) == 8 and all(p[0] == "blocks" and p[-1] == "kernel" for p in flat)
    for mask in flat.values():
        assert bool(jaxnm.is_transposable_nm(mask, 2, 4))
    exported = jaxnm.nnx.export_dense(model)
    for path, mask in flat.items():
        node = exported
        for name in path[:-1]:
            node = node[name] if isinstance(name, int) else getattr(node, name)
        assert bool(np.all(np.where(mask, True, np.asarray(node.kernel[...]) == 0)))


def test_recipe_flags_are_saved_with_the_run(runs):
    saved = json.loads((runs["sparse"] / "config.json").read_text())
    assert (saved["sparse_start"], saved["srste"], saved["mask_method"]) == (
        0.5,
        0.01,
        "exhaustive",
    )
    assert saved["refresh_every"] == 1 and saved["transposable"] is True


def test_resume_continues_bit_identically(runs, tmp_path):
    args = [*TINY, *runs["sparse_args"], "--model", "resnet", "--out", str(tmp_path)]
    cfg = train_script.parse_args(args + ["--no-progress"])
    first = training.train(cfg, stop_after=1)
    assert len(first) == 1 and len(training.read_metrics(tmp_path / "metrics.jsonl")) == 1
    train_script.main(args + ["--resume", "--no-progress"])
    resumed = _check_run(tmp_path)
    full = training.read_metrics(runs["sparse"] / "metrics.jsonl")
    for a, b in zip(resumed, full, strict=True):
        a.pop("epoch_time_s"), b.pop("epoch_time_s")
        assert a == b
    _, model, optimizer, _ = training.load_run(tmp_path)
    template = nnx.state((model, optimizer))
    resumed_state = _checkpoint_leaves(tmp_path, template)
    full_state = _checkpoint_leaves(runs["sparse"], template)
    for a, b in zip(resumed_state, full_state, strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="lr"):
        train_script.main(args + ["--resume", "--lr", "0.5", "--no-progress"])


@pytest.mark.slow  # the dense ViT run: the `runs` fixture
def test_sparse_vit_run(tmp_path):
    extra = ["--sparsity", "4:8", "--transposable", "--grad-sparsity", "mvue_2_4"]
    history = train_script.main([*TINY, "--model", "vit", "--out", str(tmp_path), *extra])
    assert len(history) == 2
    _check_run(tmp_path)


def test_bad_flags(tmp_path):
    with pytest.raises(ValueError, match="sparse run"):
        train_script.main([*TINY, "--grad-sparsity", "mvue_1_2", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        train_script.parse_args(["--sparsity", "3:4"])


@pytest.mark.slow
def test_convert_script(runs, tmp_path):
    dense_resnet = tmp_path / "dense_resnet"
    train_script.main([*TINY, "--model", "resnet", "--out", str(dense_resnet), "--no-progress"])
    records = convert_script.main(
        [
            "--run",
            str(dense_resnet),
            "--sparsity",
            "2:4",
            "--calib-size",
            "32",
            "--calib-batch",
            "16",
            "--out",
            str(tmp_path),
        ]
    )
    (rec,) = records
    assert rec["sparsity"] == "2:4-T"
    for key in ("dense_acc", "magnitude_acc", "magnitude_bn_acc", "adaprune_bn_acc"):
        assert 0.0 <= rec[key] <= 1.0
    assert len(rec["layers"]) == 8
    assert all(r["reconstructed_error"] < r["magnitude_error"] for r in rec["layers"])
    assert json.loads((tmp_path / "convert.json").read_text()) == records
    with pytest.raises(ValueError, match="dense run"):
        convert_script.main(["--run", str(runs["sparse"]), "--out", str(tmp_path)])


def test_plot_script(runs, tmp_path):
    written = plot_script.main([str(runs["dense"]), str(runs["sparse"]), "--out", str(tmp_path)])
    assert sorted(p.name for p in written) == ["accuracy.png", "mask_tiles.png", "retained.png"]
    for path in written:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
    with pytest.raises(ValueError, match="--layer"):
        plot_script.main([str(runs["sparse"]), "--out", str(tmp_path), "--layer", "nope"])


def test_transposable_default_is_sparsify_default():
    default = inspect.signature(jaxnm.sparsify).parameters["transposable"].default
    assert train_script.parse_args(["--sparsity", "4:8"]).transposable is default is True
    assert not train_script.parse_args(["--sparsity", "4:8", "--no-transposable"]).transposable
