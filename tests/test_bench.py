"""Benchmarks: FLOP counting against hand counts, tiny CPU bench and estimate, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from toolkit.bench import (
    bench_pretrain,
    count_conv_flops,
    count_pretrain_flops,
    estimate_run,
    measure_loader,
    synthetic_source,
)
from toolkit.cli import app
from toolkit.config import load_config

TINY = {"runtime.device": "cpu", "data.patch_size": [16, 16, 16], "pretrain.batch_size": 1}


def test_conv_flops_match_hand_counts() -> None:
    conv = nn.Conv3d(2, 3, 3, padding=1)
    assert count_conv_flops(conv, torch.zeros(1, 2, 4, 4, 4)) == 2 * 2 * 3 * 27 * 64
    grouped = nn.Conv3d(4, 4, 3, padding=1, groups=2)
    assert count_conv_flops(grouped, torch.zeros(2, 4, 4, 4, 4)) == 2 * 4 * 4 * 27 * 64 * 2 // 2
    # transposed: every input voxel is scattered into k^3 outputs
    up = nn.ConvTranspose3d(4, 2, 2, stride=2)
    assert count_conv_flops(up, torch.zeros(1, 4, 2, 2, 2)) == 2 * 4 * 2 * 8 * 8
    net = nn.Sequential(conv, nn.ReLU(), nn.Conv3d(3, 1, 1))
    assert count_conv_flops(net, torch.zeros(1, 2, 4, 4, 4)) == 2 * 2 * 3 * 27 * 64 + 2 * 3 * 64


def test_resenc_l_at_160_costs_about_8_4_tflop_per_sample() -> None:
    """RECIPE.md: ~8.4 TFLOP forward+backward per 160^3 sample (counted on the meta device)."""
    cfg = load_config("paper", {"mask.variant": "dense"})
    train_flops = 3 * count_pretrain_flops(cfg)
    assert train_flops == pytest.approx(8.4e12, rel=0.01)


def test_bench_and_estimate_run_at_tiny_size() -> None:
    cfg = load_config("tiny", TINY)
    report = bench_pretrain(cfg, steps=1, warmup=1, loader_batches=2)
    assert report.sec_per_step > 0 and report.steps_per_s == pytest.approx(1 / report.sec_per_step)
    assert report.voxels_per_s == pytest.approx(16**3 / report.sec_per_step)
    assert report.train_flops_per_step == 3 * report.forward_flops_per_sample > 0
    assert report.peak_memory_bytes > 0 and report.parameters > 0 and report.extra_parameters > 0
    assert report.loader_patches_per_s is not None and report.loader_patches_per_s > 0
    assert any(line.startswith("loader") for line in report.lines())

    est = estimate_run(cfg.replace({"pretrain.steps": 1000, "pretrain.val_every": 250}), steps=1)
    assert est.validation_passes == 4 and est.total_steps == 1000
    assert est.train_hours == pytest.approx(est.sec_per_step * 1000 / 3600)
    assert est.total_hours > est.train_hours


def test_loader_rate_from_in_memory_volumes() -> None:
    source = synthetic_source((8, 8, 8), num_cases=2)
    rate, startup = measure_loader(source, (8, 8, 8), batch_size=2, num_batches=3, num_workers=0)
    assert rate > 0 and startup >= 0


def test_cli_bench_pretrain_json() -> None:
    result = CliRunner().invoke(
        app,
        [
            "bench",
            "pretrain",
            "runtime.device=cpu",
            "--config",
            "tiny",
            "--patch",
            "16",
            "--batch",
            "1",
            "--steps",
            "1",
            "--warmup",
            "0",
            "--loader-batches",
            "1",
            "--variant",
            "dense",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    assert report["variant"] == "dense" and report["patch_size"] == [16, 16, 16]
    assert report["extra_parameters"] == 0 and report["tflops_per_s"] > 0


def test_cli_estimate_and_pretrain_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = CliRunner().invoke(
        app,
        [
            "estimate",
            "tiny",
            "runtime.device=cpu",
            "data.patch_size=[16,16,16]",
            "pretrain.batch_size=1",
            "--steps",
            "1",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output.strip().splitlines()[-1])["total_steps"] == 40

    from toolkit.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["pretrain", "tiny", "runtime.device=cpu", "--out", str(tmp_path / "run")])
    assert exit_info.value.code == 2
    assert "error: data.cache_dir" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
