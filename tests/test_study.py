"""The pieces studies share: stage timer, verdicts, ``mean ± sd``, JSON and the folder claim."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from toolkit.errors import ConfigError
from toolkit.study import (
    StageTimer,
    claim_folder,
    dice_table,
    format_dice_table,
    format_pm,
    verdict,
    write_json,
)


def test_stage_timer_records_wall_and_cpu_even_on_error() -> None:
    lines: list[str] = []
    timer = StageTimer(lines.append)
    with timer.stage("busy"):
        total = sum(i * i for i in range(200_000))
    with pytest.raises(RuntimeError), timer.stage("fails"):
        raise RuntimeError("boom")
    assert total > 0 and list(timer.seconds) == ["busy", "fails"]
    assert timer.cpu_seconds["busy"] > 0 and timer.seconds["busy"] > 0
    assert lines[0] == "== busy" and lines[1].startswith("   busy:") and "CPU" in lines[1]
    table = timer.markdown(12.4, 7.6)
    assert table.splitlines()[0] == "| stage | wall s | CPU s |"
    assert "| **total** | **12** | **8** |" in table and "| fails |" in table


def test_verdict_judges_the_difference_against_the_spread() -> None:
    assert verdict(0.05, 0.01, "a", "b") == "a ahead"
    assert verdict(-0.05, 0.01, "a", "b") == "b ahead"
    assert verdict(0.01, 0.01, "a", "b") == "within the seed spread"
    assert "one seed" in verdict(0.05, math.nan, "a", "b")
    assert "diverged" in verdict(math.nan, 0.01, "a", "b")


def test_format_pm_drops_a_missing_spread() -> None:
    assert format_pm(0.5, 0.0123) == "0.500 ± 0.012"
    assert format_pm(-0.02, math.nan, sign=True) == "-0.020"
    assert format_pm(0.02, 0.1, sign=True, digits=2) == "+0.02 ± 0.10"


def test_dice_table_follows_the_given_arms() -> None:
    rows = [
        {"dataset": "d", "label_name": "x", "arm": arm, "seed": seed, "dice": dice + seed / 10}
        for arm, dice in (("mae", 0.6), ("random", 0.5))
        for seed in (0, 1)
    ]
    table = dice_table(pd.DataFrame(rows), arms=("mae", "random"))
    assert list(table.columns) == [
        "dataset",
        "label",
        "mae",
        "mae_sd",
        "random",
        "random_sd",
        "difference",
    ]
    assert table["difference"].tolist() == pytest.approx([0.1, 0.1])
    text = format_dice_table(table, arms=("mae", "random"))
    assert "| test set | label | mae | random | difference |" in text
    assert "| d | x | 0.650 ± 0.071 | 0.550 ± 0.071 | +0.100 |" in text


def test_write_json_is_strict_json(tmp_path: Path) -> None:
    path = write_json(tmp_path / "r.json", {"a": math.nan, "b": [1.5, math.inf], "c": Path("p")})
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"a": None, "b": [1.5, None], "c": "p"}
    assert not (tmp_path / "r.json.tmp").exists()


@dataclass(frozen=True)
class _Sizes:
    steps: int = 4
    lrs: tuple[float, ...] = (0.01,)


def test_claim_folder_refuses_other_settings(tmp_path: Path) -> None:
    claim_folder(tmp_path / "s", _Sizes())
    claim_folder(tmp_path / "s", _Sizes())  # same settings: an interrupted study continues
    saved = json.loads((tmp_path / "s" / "demo_settings.json").read_text())
    assert saved == {"steps": 4, "lrs": [0.01]}
    with pytest.raises(ConfigError, match=r"--out: .* other settings"):
        claim_folder(tmp_path / "s", _Sizes(steps=5))
    claim_folder(tmp_path / "m", {"k": 1}, name="study.json")
    assert (tmp_path / "m" / "study.json").is_file()
