"""Tests of the training-recipe settings of the examples: the flags of ``train.py`` and
``run_accuracy_table.py`` (refresh period, mask freeze, dense start, SR-STE, mask solver), the
mask schedule they give ``jaxnm.sparsify``, and the wiring into the optax chain."""

import dataclasses
import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import optax
import pytest
import run_accuracy_table
import train as train_script
from nmexamples import sparse, training

import jaxnm

RECIPE_FLAGS = [
    "--refresh-every",
    "7",
    "--freeze-masks",
    "0.6",
    "--sparse-start",
    "0.25",
    "--srste",
    "0.002",
    "--mask-method",
    "exhaustive",
]


def test_train_flags_reach_the_config():
    cfg = train_script.parse_args(["--sparsity", "2:4", "--transposable", *RECIPE_FLAGS])
    assert (cfg.refresh_every, cfg.freeze_masks, cfg.sparse_start) == (7, 0.6, 0.25)
    assert (cfg.srste, cfg.mask_method) == (0.002, "exhaustive")
    defaults = train_script.parse_args([])
    assert (defaults.srste, defaults.sparse_start) == (0.0, 0.0)
    with pytest.raises(SystemExit):
        train_script.parse_args(["--mask-method", "best"])


def test_accuracy_table_passes_one_recipe_to_every_config(monkeypatch, tmp_path, capsys):
    seen = []

    def fake_train(cfg):
        seen.append(cfg)
        return [{"test_acc": 0.5 + 0.1 * cfg.seed + 0.2 * (cfg.sparsity == "4:8")}]

    monkeypatch.setattr(run_accuracy_table, "train", fake_train)
    results = run_accuracy_table.main(
        ["--epochs", "3", "--seeds", "0", "1", "--out", str(tmp_path), *RECIPE_FLAGS]
    )
    assert len(seen) == 2 * len(run_accuracy_table.CONFIGS)
    for cfg in seen:
        assert (cfg.refresh_every, cfg.freeze_masks, cfg.sparse_start) == (7, 0.6, 0.25)
        assert (cfg.srste, cfg.mask_method, cfg.epochs) == (0.002, "exhaustive", 3)
    assert results["dense"] == [0.5, 0.6]
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["args"]["srste"] == 0.002 and saved["test_acc"]["dense"] == [0.5, 0.6]
    table = capsys.readouterr().out
    assert "| dense | 55.00 ± 7.07 | 50.00, 60.00 | — |" in table
    assert "| 2:4-T + MVUE 1:2 | 55.00 ± 7.07 | 50.00, 60.00 | +0.00 |" in table
    assert "| 4:8-T | 75.00 ± 7.07 | 70.00, 80.00 | +20.00 |" in table


def test_mask_schedule():
    cfg = training.TrainConfig()
    assert training.mask_schedule(cfg, 100) == (0, int(cfg.freeze_masks * 100))
    assert training.mask_schedule(
        dataclasses.replace(cfg, sparse_start=0.25, freeze_masks=0.5), 100
    ) == (25, 50)
    assert training.mask_schedule(dataclasses.replace(cfg, freeze_masks=1.0), 100) == (0, None)
    # a sparse phase of at least one step even when the fractions round to the same step
    assert training.mask_schedule(
        dataclasses.replace(cfg, sparse_start=0.5, freeze_masks=0.51), 10
    ) == (5, 6)
    for bad, name in [
        (dict(sparse_start=-0.1), "sparse_start"),
        (dict(sparse_start=1.0), "sparse_start"),
        (dict(freeze_masks=0.0), "freeze_masks"),
        (dict(freeze_masks=1.5), "freeze_masks"),
        (dict(sparse_start=0.5, freeze_masks=0.5), "below"),
    ]:
        with pytest.raises(ValueError, match=name):
            training.mask_schedule(dataclasses.replace(cfg, **bad), 100)


def _spec():
    return sparse.SparseSpec(n=2, m=4, transposable=True, grad_sparsity=None)


def test_chain_passes_srste():
    w = jnp.asarray(np.random.default_rng(0).normal(size=(8, 8)), jnp.float32)
    params = {"kernel": w}
    tx = sparse.chain(_spec(), optax.sgd(1.0), refresh_every=1, srste=0.5)
    state = tx.init(params)
    mask = jaxnm.current_masks(state)["kernel"]
    updates, _ = tx.update({"kernel": jnp.zeros_like(w)}, state, params)
    # sgd(1.0) negates the gradient 0.5 * (1 - mask) * w
    np.testing.assert_allclose(updates["kernel"], -0.5 * np.where(mask, 0.0, w), rtol=1e-6)
    assert int(mask.sum()) == 32
    plain = sparse.chain(_spec(), optax.sgd(1.0), refresh_every=1)
    updates, _ = plain.update({"kernel": jnp.zeros_like(w)}, plain.init(params), params)
    assert not np.any(updates["kernel"])


def test_chain_passes_start_step_and_method():
    w = jnp.asarray(np.random.default_rng(1).normal(size=(8, 8)), jnp.float32)
    params = {"kernel": w}
    tx = sparse.chain(_spec(), optax.sgd(0.0), refresh_every=1, start_step=2)
    state = tx.init(params)
    masks = []
    for _ in range(3):
        masks.append(np.asarray(jaxnm.current_masks(state)["kernel"]))
        _, state = tx.update({"kernel": jnp.zeros_like(w)}, state, params)
    assert masks[0].all() and masks[1].all() and masks[2].sum() == 32
    exhaustive = sparse.chain(_spec(), optax.sgd(0.0), refresh_every=1, method="exhaustive")
    np.testing.assert_array_equal(
        jaxnm.current_masks(exhaustive.init(params))["kernel"],
        jaxnm.transposable_mask(w, 2, 4, method="exhaustive"),
    )
    with pytest.raises(ValueError, match="method"):
        sparse.chain(_spec(), optax.sgd(0.0), refresh_every=1, method="best")


def test_resume_accepts_configs_saved_before_new_settings(tmp_path):
    cfg = training.TrainConfig(out=str(tmp_path), resume=True)
    old = dataclasses.asdict(cfg)
    del old["srste"], old["sparse_start"], old["mask_method"]
    (tmp_path / "config.json").write_text(json.dumps(old))
    training.check_config(tmp_path / "config.json", cfg)  # defaults: accepted
    (tmp_path / "config.json").write_text(json.dumps(old))
    with pytest.raises(ValueError, match="srste"):
        training.check_config(tmp_path / "config.json", dataclasses.replace(cfg, srste=1e-3))


def test_flags_are_derived_from_config_fields():
    import argparse

    from nmexamples import flags

    @dataclasses.dataclass(frozen=True)
    class Config:
        name: str = dataclasses.field(default="a", metadata={"choices": ("a", "b")})
        steps: int = 3
        rate: float | None = None
        fast: bool = True
        maybe: bool | None = None

    p = argparse.ArgumentParser()
    flags.add_arguments(p, Config())
    args = p.parse_args(["--name", "b", "--rate", "0.5", "--no-fast", "--maybe"])
    assert flags.config_from_args(args, Config()) == Config("b", 3, 0.5, False, True)
    assert flags.config_from_args(p.parse_args([]), Config(), steps=7) == Config(steps=7)
    with pytest.raises(SystemExit):
        p.parse_args(["--name", "c"])
    with pytest.raises(ValueError, match="not fields of Config"):
        flags.add_arguments(argparse.ArgumentParser(), Config(), ["nope"])
    # Every TrainConfig field is a flag of train.py; the run label names the default out.
    every = [f"--{f.name.replace('_', '-')}" for f in dataclasses.fields(training.TrainConfig)]
    help_text = " ".join(_train_parser().format_help().split())
    assert all(flag in help_text for flag in every)
    cfg = train_script.parse_args(
        ["--sparsity", "4:8", "--transposable", "--grad-sparsity", "mvue_1_2", "--seed", "2"]
    )
    assert cfg.out == str(Path("runs") / "resnet_digits_48t_mvue_1_2_seed2")
    assert training.run_label(cfg) == "resnet_digits_48t_mvue_1_2_seed2"


def _train_parser():
    import argparse

    p = argparse.ArgumentParser()
    training.add_recipe_arguments(p)
    return p
