"""Dry-run estimates: one timing per distinct setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.sweep.fakes import write_spec
from toolkit.config import Config
from toolkit.sweep import (
    estimate_sweep,
    expand_sweep,
    format_estimates,
    load_sweep_spec,
)


def test_estimates_measure_each_setting_once(tmp_path: Path) -> None:
    plan = expand_sweep(load_sweep_spec(write_spec(tmp_path)), tmp_path / "out")
    timed: list[Config] = []

    def timer(cfg: Config, steps: int) -> float:
        timed.append(cfg)
        return 0.5 if cfg.mask.variant == "s3d" else 0.25

    estimates = estimate_sweep(plan, measure_steps=2, step_timer=timer)
    # pretraining dense, pretraining s3d, fine-tuning (dense proxy at the fine-tuning batch)
    assert len(timed) == 2 + 1
    by_name = {e.run.name: e for e in estimates}
    pt = by_name["pt_mask.ratio=0.6_mask.variant=s3d"]
    cfg = pt.run.config
    val = -(-cfg.pretrain.steps // cfg.pretrain.val_every) * cfg.pretrain.val_batches * 0.5 / 3
    assert pt.estimated_s == pytest.approx(7 * 0.5 + val)
    ft = by_name["ft_d1_pt_mask.ratio=0.6_mask.variant=s3d_finetune.schedule=sawtooth_seed0"]
    assert ft.estimated_s == pytest.approx(5 * 0.25) and ft.state == "pending"
    text = format_estimates(estimates, measure_steps=2)
    assert "24 runs (4 pretraining, 20 fine-tuning), 24 to do" in text
    assert "from 2 timed steps" in text
    none = estimate_sweep(plan, measure_steps=0)
    assert all(e.estimated_s is None for e in none)
    assert "no time estimate" in format_estimates(none, measure_steps=0)
