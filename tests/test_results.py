"""Results analysis against hand-computed values: ranks with ties, mean rank, baselines."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from toolkit.errors import ConfigError, DataError
from toolkit.results import (
    collect_results,
    dataset_ranks,
    dataset_scores,
    difference_to_baseline,
    load_results,
    mean_by_config,
    mean_rank,
    run_scores,
    summary_table,
    swept_fields,
    write_results,
)

# Mean Dice per config and dataset, chosen so that every dataset has a tie:
#   d1: a = b > c > s              ranks a 1.5, b 1.5, c 3,   s 4
#   d2: b = c = s > a              ranks b 2,   c 2,   s 2,   a 4
#   d3: a > c > b = s              ranks a 1,   c 2,   b 3.5, s 3.5
SCORES = {
    "d1": {"a": 0.80, "b": 0.80, "c": 0.70, "scratch": 0.60},
    "d2": {"a": 0.50, "b": 0.60, "c": 0.60, "scratch": 0.60},
    "d3": {"a": 0.90, "b": 0.70, "c": 0.80, "scratch": 0.70},
}
EXPECTED_RANKS = {
    "d1": {"a": 1.5, "b": 1.5, "c": 3.0, "scratch": 4.0},
    "d2": {"a": 4.0, "b": 2.0, "c": 2.0, "scratch": 2.0},
    "d3": {"a": 1.0, "b": 3.5, "c": 2.0, "scratch": 3.5},
}
# Per-seed offsets: the seed mean is the score above; "a" spreads more than the others.
OFFSETS = {"a": (0.04, -0.04), "b": (0.02, -0.02), "c": (0.02, -0.02), "scratch": (0.02, -0.02)}


def tidy_table() -> pd.DataFrame:
    """Case x label rows whose per-run mean is score + seed offset (cases differ by +-0.1)."""
    rows = []
    for dataset, scores in SCORES.items():
        for config, score in scores.items():
            for seed, offset in enumerate(OFFSETS[config]):
                run_score = score + offset
                for case, label, delta in (
                    ("c1", 1, 0.1),
                    ("c1", 2, -0.1),
                    ("c2", 1, 0.05),
                    ("c2", 2, -0.05),
                ):
                    rows.append(
                        {
                            "config": config,
                            "arm": "scratch" if config == "scratch" else "pretrained",
                            "dataset": dataset,
                            "seed": seed,
                            "case": case,
                            "label": label,
                            "dice": run_score + delta,
                            "hd95_mm": 10.0 * (1.0 - run_score),
                        }
                    )
    return pd.DataFrame(rows)


def test_run_and_dataset_scores_average_cases_then_seeds() -> None:
    table = tidy_table()
    runs = run_scores(table)
    assert len(runs) == 3 * 4 * 2
    row = runs[(runs.config == "a") & (runs.dataset == "d1") & (runs.seed == 0)]
    assert row["dice"].item() == pytest.approx(0.84)
    per_dataset = dataset_scores(table).set_index(["config", "dataset"])
    assert per_dataset.loc[("a", "d1"), "dice"] == pytest.approx(0.80)
    assert per_dataset.loc[("a", "d1"), "std"] == pytest.approx(math.sqrt(2 * 0.04**2))
    assert per_dataset.loc[("a", "d1"), "n_seeds"] == 2


def test_dataset_ranks_average_ties() -> None:
    ranks = dataset_ranks(tidy_table()).set_index(["dataset", "config"])["rank"]
    for dataset, expected in EXPECTED_RANKS.items():
        for config, rank in expected.items():
            assert ranks[(dataset, config)] == pytest.approx(rank), (dataset, config)


def test_mean_rank_across_datasets() -> None:
    table = mean_rank(tidy_table())
    # a: (1.5 + 4 + 1) / 3, b and c: 7 / 3 (a tie, ordered by name), scratch: 9.5 / 3
    assert list(table["config"]) == ["a", "b", "c", "scratch"]
    assert table["mean_rank"].tolist() == pytest.approx([6.5 / 3, 7 / 3, 7 / 3, 9.5 / 3])
    assert table["n_datasets"].tolist() == [3, 3, 3, 3]
    assert table.set_index("config").loc["a", "dice"] == pytest.approx((0.8 + 0.5 + 0.9) / 3)


def test_mean_rank_lower_is_better_for_hd95() -> None:
    by_dice = mean_rank(tidy_table(), "dice").set_index("config")["mean_rank"]
    by_hd = mean_rank(tidy_table(), "hd95_mm").set_index("config")["mean_rank"]
    # hd95 = 10 (1 - dice) is a decreasing function of Dice, so the ranks are the same.
    assert by_hd.sort_index().tolist() == pytest.approx(by_dice.sort_index().tolist())
    flipped = mean_rank(tidy_table(), "dice", higher_is_better=False).set_index("config")
    assert flipped.loc["a", "mean_rank"] == pytest.approx((3.5 + 1 + 4) / 3)
    with pytest.raises(ConfigError, match="ref_volume_ml: unknown direction"):
        mean_rank(tidy_table().assign(ref_volume_ml=1.0), "ref_volume_ml")


def test_mean_rank_of_a_partial_sweep() -> None:
    table = tidy_table()
    partial = table[~((table.config == "c") & (table.dataset == "d3"))]
    ranks = mean_rank(partial).set_index("config")
    assert ranks.loc["c", "n_datasets"] == 2
    assert ranks.loc["c", "mean_rank"] == pytest.approx((3 + 2) / 2)
    # Without c on d3: a 1, b 2.5, scratch 2.5.
    assert ranks.loc["b", "mean_rank"] == pytest.approx((1.5 + 2 + 2.5) / 3)


def test_ranks_by_several_columns() -> None:
    table = tidy_table()
    table["variant"] = table["config"].map({"a": "s3d", "b": "dense", "c": "s3d", "scratch": "-"})
    table["arm2"] = table["arm"]
    ranks = mean_rank(table, by=["variant", "arm2"])
    assert set(ranks["variant"]) == {"s3d", "dense", "-"}
    # s3d pools a and c: d1 0.75, d2 0.55, d3 0.85 -> ranks 2, 3, 1 against dense/scratch.
    assert ranks.set_index("variant").loc["s3d", "mean_rank"] == pytest.approx(2.0)


def test_difference_to_baseline_paired_by_seed() -> None:
    diff = difference_to_baseline(tidy_table(), "scratch")
    assert "scratch" not in set(diff["config"])
    row = diff[(diff.config == "a") & (diff.dataset == "d1")].iloc[0]
    # seed 0: 0.84 - 0.62 = 0.22, seed 1: 0.76 - 0.58 = 0.18
    assert row["diff"] == pytest.approx(0.20)
    assert row["std"] == pytest.approx(math.sqrt(2 * 0.02**2))
    assert row["n_seeds"] == 2
    overall = diff[(diff.config == "a") & (diff.dataset == "all")].iloc[0]
    # per seed, mean over datasets: seed 0 (0.22 - 0.08 + 0.22) / 3, seed 1 (0.18 - 0.12 + 0.18) / 3
    s0, s1 = 0.36 / 3, 0.24 / 3
    assert overall["diff"] == pytest.approx((s0 + s1) / 2)
    assert overall["std"] == pytest.approx(abs(s0 - s1) / math.sqrt(2))
    b = diff[(diff.config == "b") & (diff.dataset == "all")].iloc[0]
    assert b["diff"] == pytest.approx((0.2 + 0.0 + 0.0) / 3)
    assert b["std"] == pytest.approx(0.0, abs=1e-12)


def test_difference_to_baseline_by_mapping_and_errors() -> None:
    table = tidy_table()
    by_arm = difference_to_baseline(table, {"arm": "scratch"})
    assert by_arm.equals(difference_to_baseline(table, "scratch"))
    with pytest.raises(ConfigError, match="no such configuration"):
        difference_to_baseline(table, "nope")
    doubled = pd.concat([table, table.assign(config="scratch2", arm="scratch")])
    with pytest.raises(ConfigError, match="several baseline configurations"):
        difference_to_baseline(doubled, {"arm": "scratch"})


def test_mean_by_config_and_summary_table() -> None:
    means = mean_by_config(tidy_table()).set_index("config")
    assert means.loc["a", "dice"] == pytest.approx(2.2 / 3)
    # per seed, mean over datasets: 2.2 / 3 +- 0.04
    assert means.loc["a", "std"] == pytest.approx(0.08 / math.sqrt(2))
    assert means.loc["a", "n_seeds"] == 2 and means.loc["a", "n_datasets"] == 3
    summary = summary_table(tidy_table(), baseline="scratch")
    assert list(summary.columns) == [
        "config",
        "d1",
        "d2",
        "d3",
        "mean",
        "mean_rank",
        "n_datasets",
        "diff",
        "diff_std",
    ]
    assert list(summary["config"]) == ["a", "b", "c", "scratch"]
    assert summary.set_index("config").loc["c", "d2"] == pytest.approx(0.6)
    assert math.isnan(summary.set_index("config").loc["scratch", "diff"])


def test_missing_columns_are_reported() -> None:
    with pytest.raises(ConfigError, match="missing column"):
        mean_rank(pd.DataFrame({"config": ["a"], "dice": [0.5]}))


def test_collect_results_from_a_sweep(tmp_path: Path) -> None:
    from tests.sweep.fakes import FakeExecutor, write_spec
    from toolkit.sweep import run_sweep

    spec = write_spec(tmp_path)
    run_sweep(spec, tmp_path / "sweep", executor=FakeExecutor(), progress=False)
    table = load_results(tmp_path / "sweep")
    assert swept_fields(table) == ["mask.ratio", "mask.variant", "finetune.schedule"]
    assert set(table["arm"]) == {"pretrained", "scratch"}
    scratch = table[table.arm == "scratch"]
    assert scratch["mask.ratio"].isna().all() and (scratch["pretrain_run"].isna()).all()
    assert (table.groupby("run").size() == 2 * 3).all()  # 2 cases x 3 labels
    pretrained = table[table.arm == "pretrained"]
    assert (pretrained["pretrain_time_s"] == 1.5).all()
    assert (table["num_params"] == 1234).all()
    path = write_results(tmp_path / "sweep")
    again = load_results(path)
    assert len(again) == len(table) and list(again.columns) == list(table.columns)
    ranks = mean_rank(again)
    assert len(ranks) == table["config"].nunique()


def test_load_results_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such results table"):
        load_results(tmp_path / "missing.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="not a results table"):
        load_results(bad)
    with pytest.raises(DataError, match="plan.json: not found"):
        collect_results(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "plan.json").write_text('{"sweep": "x", "axes": {"mask.ratio": [0.5]}, "runs": []}')
    assert list(collect_results(empty).columns)[:7] == [
        "sweep",
        "run",
        "arm",
        "config",
        "dataset",
        "seed",
        "pretrain_run",
    ]
