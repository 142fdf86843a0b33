"""The ablation explorer, driven through its widgets' ``.value`` like a user would."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from tests.sweep.fakes import FakeExecutor, write_spec
from toolkit.results import load_results, mean_rank
from toolkit.sweep import expand_sweep, load_sweep_spec, run_sweep
from widgets.explorer import NONE, SCRATCH, AblationExplorer


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished fake sweep: mask.ratio x mask.variant x finetune.schedule, 2 datasets, scratch.

    Shared by the tests of this module, which only read it.
    """
    root = tmp_path_factory.mktemp("explorer")
    out = root / "sweep"
    run_sweep(write_spec(root), out, executor=FakeExecutor(), progress=False)
    return out


def ticks(explorer: AblationExplorer, panel: int = 0) -> list[str]:
    assert explorer.figure is not None
    return [t.get_text() for t in explorer.figure.axes[panel].get_xticklabels()]


def legend(explorer: AblationExplorer) -> list[str]:
    assert explorer.figure is not None
    box = explorer.figure.axes[-1].get_legend()
    return [t.get_text() for t in box.get_texts()] if box is not None else []


def test_defaults_plot_the_first_two_swept_fields(sweep_dir: Path) -> None:
    ex = AblationExplorer(sweep_dir)
    assert ex.x.value == "mask.ratio" and ex.hue.value == "mask.variant"
    assert list(ex.x.options)[:3] == ["mask.ratio", "mask.variant", "finetune.schedule"]
    assert ticks(ex) == ["0.6", "0.75", SCRATCH]  # scratch runs have no mask ratio
    assert legend(ex) == ["dense", "s3d", SCRATCH]
    assert ex.figure is not None and ex.figure.axes[0].get_ylabel() == "dice (higher is better)"
    # 4 pretrained combinations + scratch; each has 2 schedules x 2 datasets = 4 runs.
    assert len(ex.summary) == 5 and set(ex.summary["n_runs"]) == {4}
    assert ex.summary["mask.ratio"].tolist() == ["0.6", "0.6", "0.75", "0.75", SCRATCH]
    assert set(ex.summary["n_datasets"]) == {2}
    assert ex.image.value[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<table" in ex.table_view.value and ex.table_view.value.count("<tr>") == 5


def test_mean_is_over_runs(sweep_dir: Path) -> None:
    ex = AblationExplorer(sweep_dir)
    table = load_results(sweep_dir)
    sel = table[(table["mask.ratio"] == 0.6) & (table["mask.variant"] == "dense")]
    expected = sel.groupby("run")["dice"].mean()
    row = ex.summary[(ex.summary["mask.ratio"] == "0.6") & (ex.summary["mask.variant"] == "dense")]
    assert row["dice"].item() == pytest.approx(expected.mean())
    assert row["std"].item() == pytest.approx(expected.std())


def test_controls_redraw(sweep_dir: Path) -> None:
    ex = AblationExplorer(sweep_dir)
    before = ex.image.value
    ex.filters["arm"].value = ("pretrained",)
    assert ticks(ex) == ["0.6", "0.75"] and legend(ex) == ["dense", "s3d"]
    assert len(ex.summary) == 4 and ex.image.value != before
    ex.x.value = "finetune.schedule"
    assert ticks(ex) == ["sawtooth", "warmup_poly"]
    ex.hue.value = "arm"  # one level left after the filter
    assert legend(ex) == ["pretrained"]
    ex.hue.value = NONE
    assert legend(ex) == [] and len(ex.summary) == 2
    ex.facet.value = "dataset"
    assert ex.figure is not None and len(ex.figure.axes) == 2
    assert [a.get_title() for a in ex.figure.axes] == ["dataset = d1", "dataset = d2"]
    ex.metric.value = "hd95_mm"
    assert ex.figure.axes[0].get_ylabel() == "hd95_mm (lower is better)"
    assert "hd95_mm" in ex.summary.columns


def test_mean_rank_matches_the_library(sweep_dir: Path) -> None:
    ex = AblationExplorer(sweep_dir)
    ex.aggregation.value = "mean rank"
    assert ex.figure is not None
    ax = ex.figure.axes[0]
    assert ax.get_ylabel() == "mean rank (1 = best)" and ax.yaxis_inverted()
    table = ex.table
    expected = mean_rank(table, "dice", ["mask.ratio", "mask.variant"])
    got = ex.summary.set_index(["mask.ratio", "mask.variant"])["mean_rank"]
    want = expected.set_index(["mask.ratio", "mask.variant"])["mean_rank"]
    assert got.sort_index().tolist() == pytest.approx(want.sort_index().tolist())
    assert got.min() >= 1 and got.max() <= 5
    # With the dataset on the x axis, the plot shows each dataset's ranks.
    ex.x.value = "dataset"
    assert ex.figure.axes[0].get_ylabel() == "rank on the dataset"
    assert ticks(ex) == ["d1", "d2"] and "rank" in ex.summary.columns
    ex.x.value = "seed"  # a column the ranking also groups by
    assert ticks(ex) == ["0"] and ex.summary["mean_rank"].notna().all()
    # A metric without a direction cannot be ranked.
    ex.metric.value = "ref_volume_ml"
    assert "cannot be ranked" in ex.status.value and ex.summary.empty


def test_empty_selection_says_so(sweep_dir: Path) -> None:
    ex = AblationExplorer(sweep_dir)
    ex.filters["dataset"].value = ()
    assert "no rows match the filters" in ex.status.value
    assert ex.summary.empty and "nothing selected" in ex.table_view.value


def test_export_writes_png_and_csv(sweep_dir: Path, tmp_path: Path) -> None:
    ex = AblationExplorer(sweep_dir)
    ex.aggregation.value = "mean rank"
    png, csv = ex.export(tmp_path / "figs")
    assert png.name == "dice_mean_rank_mask.ratio_by_mask.variant.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    exported = pd.read_csv(csv)
    assert len(exported) == len(ex.summary) and "mean_rank" in exported.columns
    # The button writes to the folder in the text box.
    ex.export_dir.value = str(tmp_path / "button")
    ex.export_button.click()
    assert (tmp_path / "button" / png.name).is_file() and "written:" in ex.status.value


def test_partial_sweep_and_reload(tmp_path: Path) -> None:
    spec, out = write_spec(tmp_path), tmp_path / "sweep"
    plan = expand_sweep(load_sweep_spec(spec), out)
    broken = plan.pretrain_runs[-1].name  # mask.ratio=0.75, s3d: its fine-tuning is blocked
    run_sweep(spec, out, executor=FakeExecutor(fail_always={broken}), progress=False)
    ex = AblationExplorer(out)
    assert len(ex.summary) == 4 and legend(ex) == ["dense", "s3d", SCRATCH]
    ex.filters["finetune.schedule"].value = ("sawtooth",)
    n_before = ex.selection["run"].nunique()

    run_sweep(spec, out, executor=FakeExecutor(), progress=False)
    ex.reload()
    assert len(ex.summary) == 5
    assert ex.filters["finetune.schedule"].value == ("sawtooth",)  # the user's choice is kept
    assert ex.selection["run"].nunique() == n_before + 2  # the new runs: 2 datasets
    ex.aggregation.value = "mean rank"
    assert set(ex.summary["n_datasets"]) == {2}


def test_from_a_dataframe(sweep_dir: Path) -> None:
    table = load_results(sweep_dir)
    ex = AblationExplorer(table, x="config", hue="arm", metric="hd95_mm")
    assert ex.reload_button.disabled and ex.metric.value == "hd95_mm"
    assert len(ticks(ex)) == table["config"].nunique()
