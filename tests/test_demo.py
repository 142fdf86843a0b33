"""The end-to-end demo (slow) and its table and report pieces (fast)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from toolkit.cli import main
from toolkit.data.manifest import load_manifest
from toolkit.demo import (
    QUICK,
    DemoSettings,
    contrast_finding,
    dice_table,
    format_dice_table,
    infill_finding,
    probe_finding,
    run_demo,
    summary_lines,
    table_findings,
)
from toolkit.evaluate import find_predictions
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


def _gaps(rows: list[tuple[str, float, float, int, str]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["probe", "gap", "sd", "n", "verdict"])


def test_probe_finding_is_written_from_the_numbers() -> None:
    from toolkit.probe import verdict as probe_verdict

    ahead = probe_finding(
        _gaps(
            [
                ("linear", 0.1, 0.02, 3, probe_verdict(0.1, 0.02)),
                ("mlp", 0.01, 0.03, 3, probe_verdict(0.01, 0.03)),
            ]
        )
    )
    assert ahead is not None and "3 seeds" in ahead
    assert "linear +0.100 ± 0.020 (MAE ahead of random" in ahead
    assert "mlp +0.010 ± 0.030 (MAE within the spread" in ahead
    assert "carry something a classifier reads better" in ahead
    level = probe_finding(_gaps([("linear", -0.01, 0.02, 3, probe_verdict(-0.01, 0.02))]))
    assert level is not None and "has not learnt features" in level
    # One seed: no spread, so no "± nan" and no claim either way.
    nan = float("nan")
    single = probe_finding(_gaps([("linear", 0.05, nan, 1, probe_verdict(0.05, nan))]))
    assert single is not None and "linear +0.050 (" in single
    assert "nan" not in single.lower() and "±" not in single and "1 seed)" in single
    assert "cannot tell" in single
    assert probe_finding(_gaps([])) is None and probe_finding(None) is None


def test_infill_finding_states_the_margin() -> None:
    from toolkit.infill_gate import verdict_line

    record = {"step": 40, "val_loss": 0.55, "infill_loss": 0.43}
    verdict = {**record, "infill_margin": 0.43 - 0.55, "message": verdict_line(record)}
    line = infill_finding(verdict)
    assert line.startswith("In-fill check") and "step 40" in line
    assert "margin -0.12" in line and "NOT beaten" in line
    missing = infill_finding(None, "no validation with infill_loss")
    assert "no verdict" in missing and "infill_loss" in missing


def test_one_seed_dice_table_shows_no_nan() -> None:
    rows = [
        {"dataset": "d", "case": "a", "label_name": "wm", "seed": 0, "arm": arm, "dice": dice}
        for arm, dice in (("pretrained", 0.7), ("scratch", 0.6))
    ]
    table = dice_table(pd.DataFrame(rows))
    text = format_dice_table(table)
    assert "| d | wm | 0.700 | 0.600 | +0.100 |" in text and "nan" not in text
    lines = summary_lines(
        "In-fill line",
        "Probe line",
        table,
        1,
        {"pretrained": {"schedule": "s", "lr": 0.01, "val_dice": 0.5}},
    )
    assert lines[:2] == ["In-fill line", "Probe line"] and "1 seed, no spread" in lines[3]
    assert not any("nan" in line.lower() for line in lines)
    # The one-seed difference is not judged against a zero spread.
    found = table_findings(table, pd.DataFrame(columns=["arm", "schedule", "lr", "val_dice"]))
    assert "one seed" in found[0] and "nan" not in found[0].lower()


def test_contrast_finding_flags_probe_and_dice_disagreeing() -> None:
    from toolkit.probe import verdict as probe_verdict

    rows = [
        {
            "dataset": "d",
            "case": "a",
            "label_name": "wm",
            "seed": s,
            "arm": arm,
            "dice": d + s / 100,
        }
        for arm, d in (("pretrained", 0.4), ("scratch", 0.5))
        for s in (0, 1)
    ]
    scratch_ahead = dice_table(pd.DataFrame(rows))
    probe_ahead = _gaps([("linear", 0.08, 0.02, 3, probe_verdict(0.08, 0.02))])
    line = contrast_finding(probe_ahead, scratch_ahead)
    assert line is not None and "does not turn them into a higher test Dice" in line
    probe_level = _gaps([("linear", 0.0, 0.02, 3, probe_verdict(0.0, 0.02))])
    assert contrast_finding(probe_level, scratch_ahead) is None
    flipped = dice_table(
        pd.DataFrame(rows).replace({"pretrained": "scratch", "scratch": "pretrained"})
    )
    assert "no feature gap" in (contrast_finding(probe_level, flipped) or "")
    assert (
        contrast_finding(probe_ahead, flipped) is None and contrast_finding(None, flipped) is None
    )


def test_quick_demo_runs_every_stage(tmp_path: Path) -> None:
    """The whole demo at smoke-test size (the numbers mean nothing; the plumbing is checked)."""
    from toolkit.infill_gate import infill_verdict

    lines: list[str] = []
    result = run_demo(tmp_path / "demo", quick=True, echo=lines.append)
    out = tmp_path / "demo"
    assert list(result.stage_seconds) == [
        "synth",
        "preprocess",
        "pretrain",
        "probe",
        "sweep",
        "final",
        "evaluate",
        "report",
    ]
    # The summary leads with the in-fill margin and the probe gap, from the runs' own numbers.
    verdict = infill_verdict(out / "runs" / "pretrain")
    assert result.infill == verdict
    first, second = result.summary[:2]
    assert first.startswith("In-fill check") and verdict["message"] in first
    assert f"margin {verdict['infill_margin']:+.3g}" in first
    probe = json.loads((out / "probe" / "probe.json").read_text())
    assert len(probe["gaps"]) == 2 and {g["n"] for g in probe["gaps"]} == {QUICK.probe_seeds}
    assert second.startswith("Feature probe")
    for gap in probe["gaps"]:
        assert f"{gap['probe']} {gap['gap']:+.3f} (" in second  # one seed: the gap alone
    assert "Dice" in result.summary[3] and "| mni152 | mean |" in result.table
    # Printed last, in the same order; on top of report.md; first in demo_result.json.
    start = lines.index(first)
    assert lines[start : start + len(result.summary)] == result.summary
    text = result.report.read_text()
    assert text.index(first) < text.index("## What ran") and second in text
    saved = json.loads((out / "demo_result.json").read_text())
    assert next(iter(saved)) == "summary" and saved["summary"] == result.summary
    # One probe seed: nowhere a "± nan".
    for where in ("\n".join(lines), text, json.dumps(saved)):
        assert "nan" not in where.lower()
    assert result.probe is not None and set(result.probe.table["encoder"]) == {"mae", "random"}
    assert (out / "figures" / "dice.png").is_file() and (out / "figures" / "probe.png").is_file()
    # Every run can be viewed with the command the report lists (its predictions are in it).
    commands = saved["view_commands"]
    assert len(commands) == 1 + 2 * len(QUICK.final_seeds) * 2  # pretraining + arm x seed x set
    assert all(c in text for c in commands) and commands[1] in "\n".join(lines)
    for command in commands:
        argv = shlex.split(command)
        assert argv[:2] == ["mae3d", "view"]
        if "--manifest" in argv:
            dataset = load_manifest(argv[argv.index("--manifest") + 1]).name
            assert find_predictions(argv[2], dataset) is not None, command
    with pytest.raises(SystemExit) as exc:
        main([*shlex.split(commands[-1])[1:], "--png", str(tmp_path / "view")])
    assert exc.value.code == 0 and (tmp_path / "view" / "segmentation.png").is_file()


def test_quick_settings_are_smaller_than_the_demo() -> None:
    full = DemoSettings()
    assert QUICK.pretrain_steps < full.pretrain_steps and QUICK.sweep_steps < full.sweep_steps
    # The sweep gives both arms the same grid and budget by construction.
    assert len(full.sweep_lrs) * len(full.sweep_schedules) >= 4


def test_demo_folder_refuses_other_settings(tmp_path: Path) -> None:
    from toolkit.errors import ConfigError
    from toolkit.study import claim_folder

    claim_folder(tmp_path, QUICK)
    claim_folder(tmp_path, QUICK)  # same settings: an interrupted demo may continue
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
    assert result.probe is not None
    assert set(result.probe.gaps["n"]) == {DemoSettings().probe_seeds}
    assert result.summary[0].startswith("In-fill check") and "Feature probe" in result.summary[1]
    assert text.index(result.summary[1]) < text.index("## What ran")
    saved = json.loads((out / "demo_result.json").read_text())
    assert saved["seconds"] == pytest.approx(result.seconds)
    print("\n".join(result.summary))
    print(f"demo wall time: {result.seconds:.0f} s; stages: {result.stage_seconds}")
