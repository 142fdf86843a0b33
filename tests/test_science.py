"""The science benchmark: paired comparisons, verdict order, and every stage at smoke size."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from toolkit.cli import main
from toolkit.errors import ConfigError
from toolkit.science import SMOKE, paired_comparisons, run_science, summary_lines


def _rows(values: dict[tuple[str, int, str, int], float]) -> pd.DataFrame:
    return pd.DataFrame(
        [(d, n, arm, seed, dice) for (d, n, arm, seed), dice in values.items()],
        columns=["dataset", "labels", "arm", "seed", "dice"],
    )


def test_comparisons_are_paired_by_seed() -> None:
    rows = _rows(
        {
            ("syn", 1, "pretrained", 0): 0.50,
            ("syn", 1, "scratch", 0): 0.40,
            ("syn", 1, "pretrained", 1): 0.70,
            ("syn", 1, "scratch", 1): 0.65,
            ("syn", 1, "pretrained", 2): 0.30,
            ("syn", 1, "scratch", 2): 0.15,
        }
    )
    row = paired_comparisons(rows).iloc[0]
    # Per-seed differences 0.10, 0.05, 0.15: mean 0.10, sd 0.05 (n - 1).
    assert row["difference"] == pytest.approx(0.10)
    assert row["sd"] == pytest.approx(0.05)
    assert row["pretrained"] == pytest.approx(0.5)
    assert row["scratch"] == pytest.approx(0.4)
    assert row["n"] == 3
    assert row["verdict"] == "pretrained ahead"
    # Unpaired, the seeds' spread (sd 0.2 per arm) would swallow the same difference.
    flipped = rows.assign(dice=rows["dice"].where(rows["arm"] == "scratch", rows["dice"] - 0.2))
    assert paired_comparisons(flipped).iloc[0]["verdict"] == "scratch ahead"


def test_one_seed_has_no_spread_and_says_so() -> None:
    rows = _rows({("mni", 3, "pretrained", 0): 0.5, ("mni", 3, "scratch", 0): 0.4})
    row = paired_comparisons(rows).iloc[0]
    assert math.isnan(row["sd"])
    assert "one seed" in row["verdict"]
    line = summary_lines({"message": "x"}, [], paired_comparisons(rows))[1]
    assert "nan" not in line and "+0.100 over 1 seed(s)" in line


def test_summary_leads_with_infill_then_probes_then_finetuning() -> None:
    gaps = [{"probe": "linear", "gap": 0.05, "sd": 0.01, "n": 3, "verdict": "MAE ahead"}]
    rows = _rows({("syn", 1, "pretrained", 0): 0.5, ("syn", 1, "scratch", 0): 0.4})
    lines = summary_lines({"message": "MAE beats in-fill by 0.02"}, gaps, paired_comparisons(rows))
    assert lines[0] == "In-fill gate: MAE beats in-fill by 0.02"
    assert lines[1].startswith("Probe (linear): MAE - random encoder mean Dice +0.050 ± 0.010")
    assert lines[2].startswith("Fine-tuning, 1 labelled subject(s), syn")


def test_smoke_run_writes_every_readout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "science"
    with pytest.raises(SystemExit) as info:
        main(["bench", "science", "--out", str(out), "--smoke"])
    assert info.value.code == 0
    printed = capsys.readouterr()
    result = json.loads((out / "science_result.json").read_text())
    assert result["summary"][0].startswith("In-fill gate: val_loss")
    assert [line.split(" (")[0] for line in result["summary"][1:3]] == ["Probe", "Probe"]
    assert {r["arm"] for r in result["finetune"]} == {"pretrained", "scratch"}
    assert {r["dataset"] for r in result["finetune"]} == {"synthetic", "mni152"}
    assert all(0.0 <= r["dice"] <= 1.0 for r in result["finetune"])
    assert len(result["comparisons"]) == 2
    # The verdicts come first in the report and in the printed summary, and figures exist.
    report = (out / "report.md").read_text()
    assert report.index("## Verdicts") < report.index("## 1. In-fill gate")
    assert result["summary"][0] in report and result["summary"][0] in printed.err + printed.out
    assert (out / "figures" / "finetune_dice.png").stat().st_size > 0
    assert (out / "figures" / "probe.png").stat().st_size > 0
    # A folder holds one benchmark: other settings are refused before any work.
    with pytest.raises(ConfigError, match="other settings"):
        run_science(out, settings=replace(SMOKE, pretrain_steps=5))
