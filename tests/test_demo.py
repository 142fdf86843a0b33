"""The end-to-end demo (slow) and its table and report pieces (fast)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from toolkit.demo import (
    QUICK,
    DemoSettings,
    dice_table,
    format_dice_table,
    probe_finding,
    run_demo,
)
from toolkit.report import MarkdownReport, plot_segmentation_overlay


def test_dice_table_compares_arms_per_dataset_and_label() -> None:
    rows = []
    for seed, offset in ((0, 0.0), (1, 0.1)):
        for dataset, cases in (("synthetic", ("a", "b")), ("mni152", ("m",))):
            for case in cases:
                for label in ("csf", "wm"):
                    common = {"dataset": dataset, "case": case, "label_name": label, "seed": seed}
                    scratch = (0.6 if case != "b" else 0.4) + offset
                    rows.append({**common, "arm": "pretrained", "dice": 0.8})
                    rows.append({**common, "arm": "scratch", "dice": scratch})
    table = dice_table(pd.DataFrame(rows))
    assert list(table.columns) == [
        "dataset",
        "label",
        "pretrained",
        "pretrained_sd",
        "scratch",
        "scratch_sd",
        "difference",
    ]
    csf = table[(table["dataset"] == "synthetic") & (table["label"] == "csf")].iloc[0]
    # per-seed case means 0.5 and 0.6 -> mean 0.55, sd 0.0707
    assert csf["scratch"] == pytest.approx(0.55) and csf["difference"] == pytest.approx(0.25)
    assert csf["scratch_sd"] == pytest.approx(0.1 / np.sqrt(2)) and csf["pretrained_sd"] == 0.0
    means = table[table["label"] == "mean"].set_index("dataset")
    assert means.loc["mni152", "difference"] == pytest.approx(0.15)
    assert "| synthetic | csf | 0.800 ± 0.000 | 0.550 ± 0.071 | +0.250 |" in format_dice_table(
        table
    )


def test_markdown_report_with_overlay(tmp_path: Path) -> None:
    image = np.random.default_rng(0).random((12, 14, 10)).astype(np.float32)
    ref = np.zeros((12, 14, 10), np.int16)
    ref[3:9, 4:10, 2:8] = 1
    ref[5:7, 6:8, 4:6] = 2
    fig = plot_segmentation_overlay(
        image, ref, {"a": ref, "b": np.roll(ref, 1, 0)}, label_names={1: "one", 2: "two"}
    )
    assert len(fig.axes) == 4
    rep = MarkdownReport(tmp_path, "T")
    png = rep.figure(fig, "overlay", "caption")
    rep.table(pd.DataFrame({"x": [1.0, float("nan")]}))
    text = rep.write().read_text()
    assert png.is_file() and "![caption](figures/overlay.png)" in text and "n/a" in text


def _probe(mae: list[float], random: list[float]) -> pd.DataFrame:
    rows = [("mae", i, v) for i, v in enumerate(mae)] + [
        ("random", i, v) for i, v in enumerate(random)
    ]
    return pd.DataFrame(rows, columns=["encoder", "seed", "val_dice"])


def test_probe_finding_is_written_from_the_numbers() -> None:
    ahead = probe_finding(_probe([0.60, 0.62], [0.50, 0.52]))
    assert ahead is not None and "MAE encoder 0.610 ± 0.014" in ahead
    assert "+0.100; MAE encoder ahead" in ahead and "help the decoder" in ahead
    behind = probe_finding(_probe([0.40, 0.42], [0.50, 0.52]))
    assert behind is not None and "-0.100; random encoder ahead" in behind
    assert "has not learnt" in behind
    # A gap smaller than the seed sd is not a finding either way.
    level = probe_finding(_probe([0.50, 0.44, 0.45], [0.48, 0.44, 0.48]))
    assert level is not None and "within the seed spread" in level and "has not learnt" in level
    single = probe_finding(_probe([0.6], [0.5]))
    assert single is not None and "one seed" in single
    diverged = probe_finding(_probe([float("nan")], [0.5]))
    assert diverged is not None and "not comparable" in diverged
    assert probe_finding(_probe([], [])) is None
    assert probe_finding(_probe([0.5], [])) is None


def test_quick_demo_runs_every_stage(tmp_path: Path) -> None:
    """The whole demo at smoke-test size (the numbers mean nothing; the plumbing is checked)."""
    lines: list[str] = []
    result = run_demo(tmp_path / "demo", quick=True, echo=lines.append)
    out = tmp_path / "demo"
    assert list(result.stage_seconds) == [
        "synth",
        "check",
        "preprocess",
        "pretrain",
        "sweep",
        "final",
        "probe",
        "evaluate",
        "report",
    ]
    assert set(result.probe["encoder"]) == {"mae", "random"}
    assert len(result.probe) == 2 * len(QUICK.probe_seeds)
    assert result.probe["val_dice"].between(0, 1).all()
    text = result.report.read_text()
    assert "Encoder probe (frozen encoder" in text
    assert "| seed | mae encoder | random encoder |" in text
    assert any(line.startswith("Encoder probe (frozen encoder") for line in lines)
    assert "| mni152 | mean |" in result.table
    saved = json.loads((out / "demo_result.json").read_text())
    assert len(saved["probe"]) == len(result.probe)
    assert (out / "figures" / "dice.png").is_file()


def test_quick_settings_are_smaller_than_the_demo() -> None:
    full = DemoSettings()
    assert QUICK.pretrain_steps < full.pretrain_steps and QUICK.sweep_steps < full.sweep_steps
    # The sweep gives both arms the same grid and budget by construction.
    assert len(full.sweep_lrs) * len(full.sweep_schedules) >= 4


def test_demo_folder_refuses_other_settings(tmp_path: Path) -> None:
    from toolkit.demo import _claim_folder
    from toolkit.errors import ConfigError

    _claim_folder(tmp_path, QUICK)
    _claim_folder(tmp_path, QUICK)  # same settings: an interrupted demo may continue
    with pytest.raises(ConfigError, match="other settings"):
        run_demo(tmp_path, settings=DemoSettings())


@pytest.mark.slow
def test_demo_end_to_end(tmp_path: Path) -> None:
    result = run_demo(tmp_path / "demo", echo=print)
    out = tmp_path / "demo"
    assert result.report == out / "report.md" and result.report.is_file()
    text = result.report.read_text()
    for figure in (
        "dice",
        "pretrain_loss",
        "finetune_pretrained",
        "finetune_scratch",
        "overlay_labelled",
        "overlay_mni152",
    ):
        assert (out / "figures" / f"{figure}.png").is_file(), figure
        assert f"figures/{figure}.png" in text
    assert "Reconstruction" in text
    assert set(result.metrics["dataset"]) == {"demo_labelled", "mni152"}
    assert set(result.chosen) == {"pretrained", "scratch"}
    assert len(result.sweep) == 2 * len(DemoSettings().sweep_lrs) * len(
        DemoSettings().sweep_schedules
    )
    assert result.metrics["dice"].between(0, 1).all()
    assert len(result.probe) == 2 * len(DemoSettings().probe_seeds)
    assert "Encoder probe" in text
    saved = json.loads((out / "demo_result.json").read_text())
    assert saved["seconds"] == pytest.approx(result.seconds)
    print(result.table)
    print(f"demo wall time: {result.seconds:.0f} s; stages: {result.stage_seconds}")
