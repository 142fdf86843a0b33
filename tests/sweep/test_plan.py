"""Sweep expansion: runs, names, configs and dependencies."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.sweep.fakes import EXAMPLE, spec_dict, write_spec
from toolkit.errors import ConfigError
from toolkit.sweep import (
    expand_sweep,
    load_sweep_spec,
    parse_sweep_spec,
)


def test_expansion_counts_names_and_configs(tmp_path: Path) -> None:
    spec = load_sweep_spec(write_spec(tmp_path))
    assert spec.pretrain_fields == ["mask.ratio", "mask.variant"]
    assert spec.finetune_fields == ["finetune.schedule"]
    plan = expand_sweep(spec, tmp_path / "out")
    # Pretraining once per pretraining config, not per fine-tuning schedule.
    assert len(plan.pretrain_runs) == 4
    pretrained = [r for r in plan.finetune_runs if r.arm == "pretrained"]
    scratch = [r for r in plan.finetune_runs if r.arm == "scratch"]
    assert len(pretrained) == 4 * 2 * 2  # pretraining configs x schedules x datasets
    assert len(scratch) == 2 * 2  # schedules x datasets (mask axes do not apply)
    names = [r.name for r in plan.runs]
    assert names[:4] == [
        "pt_mask.ratio=0.6_mask.variant=dense",
        "pt_mask.ratio=0.6_mask.variant=s3d",
        "pt_mask.ratio=0.75_mask.variant=dense",
        "pt_mask.ratio=0.75_mask.variant=s3d",
    ]
    assert "ft_d1_scratch_finetune.schedule=sawtooth_seed0" in names
    run = plan.run("ft_d2_pt_mask.ratio=0.75_mask.variant=s3d_finetune.schedule=warmup_poly_seed0")
    assert run.pretrain_run == "pt_mask.ratio=0.75_mask.variant=s3d"
    assert run.config.mask.ratio == 0.75 and run.config.finetune.schedule == "warmup_poly"
    assert run.config.data.finetune_manifest == str((tmp_path / "d2.yaml").resolve())
    assert run.config.data.pretrain_manifest == str((tmp_path / "pre.yaml").resolve())
    assert run.config.finetune.steps == 5 and run.config_label == (
        "mask.ratio=0.75 mask.variant=s3d finetune.schedule=warmup_poly"
    )
    assert plan.run(run.pretrain_run).config.pretrain.steps == 7
    # Expansion is deterministic.
    assert [r.name for r in expand_sweep(spec, tmp_path / "out").runs] == names
    # Pretraining first, then fine-tuning with the scratch baselines of each dataset first.
    kinds = [r.kind for r in plan.runs]
    assert kinds == sorted(kinds, key=lambda k: k != "pretrain")
    assert plan.finetune_runs[0].arm == "scratch"


def test_seeds_and_scratch_per_architecture(tmp_path: Path) -> None:
    data = spec_dict(tmp_path)
    data["axes"] = {"model.name": ["resenc_tiny", "resenc_l"], "mask.ratio": [0.3, 0.9]}
    data["seeds"] = [0, 1, 2]
    data["datasets"] = ["d1.yaml"]
    plan = expand_sweep(parse_sweep_spec(data, source=tmp_path / "s.yaml"), tmp_path / "out")
    assert len(plan.pretrain_runs) == 4
    scratch = [r for r in plan.finetune_runs if r.arm == "scratch"]
    # Scratch varies over the architecture (it matters without pretraining), not the mask ratio.
    assert len(scratch) == 2 * 3
    assert {r.values["model.name"] for r in scratch} == {"resenc_tiny", "resenc_l"}
    assert all("mask.ratio" not in r.values for r in scratch)
    assert {r.config.runtime.seed for r in plan.finetune_runs} == {0, 1, 2}
    assert all(r.config.runtime.seed == 0 for r in plan.pretrain_runs)
    assert len(plan.finetune_runs) == 6 + 4 * 3


def test_each_stage_optimiser_is_its_own_axis(tmp_path: Path) -> None:
    data = spec_dict(tmp_path)
    data["axes"] = {"pretrain.optim.lr": [0.01, 0.03], "finetune.optim.lr": [0.001, 0.003]}
    data["datasets"] = ["d1.yaml"]
    plan = expand_sweep(parse_sweep_spec(data, source=tmp_path / "s.yaml"), tmp_path / "out")
    # The pretraining lr makes pretraining runs; the fine-tuning lr shares them.
    assert sorted(r.config.pretrain.optim.lr for r in plan.pretrain_runs) == [0.01, 0.03]
    assert {r.config.finetune.optim.lr for r in plan.pretrain_runs} == {1e-3}
    pretrained = [r for r in plan.finetune_runs if r.arm != "scratch"]
    assert sorted((r.config.pretrain.optim.lr, r.config.finetune.optim.lr) for r in pretrained) == [
        (0.01, 0.001),
        (0.01, 0.003),
        (0.03, 0.001),
        (0.03, 0.003),
    ]
    # Scratch ignores the pretraining optimiser: one baseline per fine-tuning lr.
    scratch = [r for r in plan.finetune_runs if r.arm == "scratch"]
    assert sorted(r.config.finetune.optim.lr for r in scratch) == [0.001, 0.003]
    data["axes"] = {"optim.lr": [0.01, 0.03]}
    with pytest.raises(ConfigError, match="set pretrain.optim.lr and/or finetune.optim.lr"):
        expand_sweep(parse_sweep_spec(data, source=tmp_path / "s.yaml"), tmp_path / "out")


def test_no_axes_gives_one_config(tmp_path: Path) -> None:
    data = spec_dict(tmp_path)
    del data["axes"]
    data["scratch"] = False
    plan = expand_sweep(parse_sweep_spec(data, source=tmp_path / "s.yaml"), tmp_path / "out")
    assert [r.name for r in plan.runs] == ["pt_base", "ft_d1_pt_base_seed0", "ft_d2_pt_base_seed0"]
    assert plan.finetune_runs[0].config_label == "pretrained"


def test_cross_field_values_are_checked_per_combination(tmp_path: Path) -> None:
    data = spec_dict(tmp_path)
    # input_mask_token only exists for dense: valid with dense, an error with s3d.
    data["axes"] = {"mask.variant": ["dense"], "mask.input_mask_token": [True, False]}
    source = tmp_path / "spec.yaml"
    plan = expand_sweep(parse_sweep_spec(data, source=source), tmp_path / "out")
    assert len(plan.pretrain_runs) == 2
    data["axes"]["mask.variant"] = ["dense", "s3d"]
    with pytest.raises(ConfigError, match="mask.variant=s3d mask.input_mask_token=true"):
        expand_sweep(parse_sweep_spec(data, source=source), tmp_path / "out")


def test_example_spec_expands() -> None:
    spec = load_sweep_spec(EXAMPLE)
    assert spec.axes["mask.ratio"] == (0.3, 0.6, 0.75, 0.9)
    assert spec.axes["mask.variant"] == ("dense", "s3d")
    assert spec.base.preset == "tiny" and spec.scratch
    plan = expand_sweep(spec, "/tmp/example")
    assert len(plan.pretrain_runs) == 8
    n_sets = len(spec.datasets) * len(spec.seeds)
    assert len(plan.finetune_runs) == 9 * n_sets


def test_pretrained_checkpoint_choice(tmp_path: Path) -> None:
    plan = expand_sweep(load_sweep_spec(write_spec(tmp_path)), tmp_path / "out")
    run = plan.finetune_runs[-1]
    ckpts = plan.run_dir(run.pretrain_run or "") / "checkpoints"
    assert plan.pretrained_checkpoint(run) == ckpts / "final.pt"
    assert plan.pretrained_checkpoint(plan.finetune_runs[0]) is None  # scratch
    best = expand_sweep(
        load_sweep_spec(write_spec(tmp_path, pretrained_checkpoint="best")), tmp_path / "out"
    )
    assert best.pretrained_checkpoint(run) == ckpts / "final.pt"  # no best.pt: final
    ckpts.mkdir(parents=True)
    (ckpts / "best.pt").touch()
    assert best.pretrained_checkpoint(run) == ckpts / "best.pt"
