"""The config form: controls -> config, YAML and size; run, stop and resume in the background."""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.widgets.conftest import phantom
from toolkit.config import load_config
from toolkit.data.io import save_volume
from toolkit.data.manifest import Case, Manifest, save_manifest
from toolkit.engine.checkpoint import checkpoint_path
from toolkit.engine.logging import read_history
from toolkit.errors import TrainingError
from widgets.config_form import ConfigForm, model_size, read_metrics


def test_controls_become_the_config_and_its_yaml() -> None:
    form = ConfigForm("tiny")
    form.ratio.value = 0.6
    form.block.value = 4
    form.optimizer.value = "adamw"
    form.schedule.value = "cosine"
    form.extra.value = "pretrain.val_every=7\n"
    cfg = form.config()
    assert (cfg.mask.ratio, cfg.mask.block_size, cfg.pretrain.optim.optimizer) == (0.6, 4, "adamw")
    assert cfg.pretrain.val_every == 7
    shown = yaml.safe_load(
        html.unescape(form.yaml.value.removeprefix("<pre>").removesuffix("</pre>"))
    )
    assert shown == cfg.to_dict()
    form.mode.value = "range"
    form.ratio_range.value = (0.6, 0.9)
    assert form.config().mask.ratio_range == (0.6, 0.9)
    assert form.ratio.disabled


def test_size_follows_the_architecture() -> None:
    form = ConfigForm("tiny")
    tiny = model_size(form.config())
    assert tiny["total"] == tiny["network"] + tiny["extras"] and tiny["extras"] > 0
    form.variant.value = "dense"
    dense = model_size(form.config())
    assert dense["extras"] == 0 and dense["network"] == tiny["network"]
    assert "parameters" in form.size.value
    form.model.value = "resenc_l"
    form.patch.value = 64
    form.block.value = 16
    size = model_size(form.config())
    assert 101e6 < size["network"] < 104e6  # ResEnc-L, about 102 M (RECIPE.md)
    assert f"{size['network'] / 1e6:.2f} M" in form.size.value


def test_invalid_combinations_say_why_and_block_the_run() -> None:
    form = ConfigForm("tiny", {"data.cache_dir": "somewhere"})
    assert not form.run_button.disabled
    form.block.value = 6  # does not tile a 40^3 patch
    assert "mask.block_size" in form.message.value
    assert form.run_button.disabled and form.estimate_button.disabled
    form.block.value = 4
    assert form.message.value == "" and not form.run_button.disabled


def test_preset_switch_keeps_the_data_location() -> None:
    form = ConfigForm("tiny")
    form.cache_dir.value = "cache/x"
    form.preset.value = "paper"
    assert form.model.value == "resenc_l" and form.patch.value == 160
    assert form.config().data.cache_dir == "cache/x"
    assert form.run_button.disabled is False


def test_read_metrics_pivots_the_long_csv(tmp_path: Path) -> None:
    (tmp_path / "metrics.csv").write_text(
        "step,metric,value,time_s\n5,loss,1.0,0.1\n5,lr,0.01,0.1\n10,loss,0.5,0.2\n10,val_loss,0.7,0.3\n"
    )
    table = read_metrics(tmp_path)
    assert table is not None
    assert table["step"].tolist() == [5, 10]
    assert table["loss"].tolist() == [1.0, 0.5]
    assert np.isnan(table["val_loss"].iloc[0]) and table["val_loss"].iloc[1] == 0.7
    assert read_metrics(tmp_path / "missing") is None


def _dataset(root: Path) -> Path:
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    cases = []
    for i in range(3):
        save_volume(phantom(seed=i), affine, root / f"s{i}.nii.gz")
        cases.append(Case(case_id=f"s{i}", subject=f"s{i}", images={"T1": Path(f"s{i}.nii.gz")}))
    m = Manifest(name="balls", root=root, root_spec=".", channels=("T1",), cases=tuple(cases))
    return save_manifest(m, root / "pretrain.yaml")


@pytest.mark.slow
def test_run_stop_and_resume_in_the_background(tmp_path: Path) -> None:
    manifest = _dataset(tmp_path)
    run = tmp_path / "runs" / "mae"
    form = ConfigForm(
        "tiny",
        {
            "runtime.device": "cpu",
            "data.target_spacing_mm": [2.0, 2.0, 2.0],
            "data.num_workers": 0,
            "pretrain.val_batches": 1,
            "pretrain.log_every": 1,
            "pretrain.checkpoint_every": 1,
            "pretrain.val_every": 100,
            "pretrain.snapshot_every": 100,
        },
        run_dir=run,
        poll_s=0.1,
    )
    form.manifest.value = str(manifest)
    form.patch.value = 16
    form.steps.value = 40
    assert not form.run_button.disabled and form.resume_button.disabled
    form.start()
    assert form.running and not form.stop_button.disabled
    while not read_history(run):  # stop once a step is logged
        assert form.running, form.status.value
        form._thread.join(0.05)  # type: ignore[union-attr]
    form.stop()
    form.wait(timeout=120)
    stopped_at = form.progress.value
    assert 0 < stopped_at < 40, form.status.value
    assert form.status.value.startswith(f"stopped (Resume continues it) at step {stopped_at}")
    assert not form.resume_button.disabled
    assert bytes(form.loss_plot.value).startswith(b"\x89PNG")

    form.steps.value = stopped_at + 2  # keep the test short: resume to two more steps
    form.start(resume=True)
    form.wait(timeout=120)
    assert form.progress.value == stopped_at + 2
    assert form.status.value.startswith("finished"), form.status.value
    assert "vs in-fill" in form.status.value  # the in-fill verdict of the last validation
    assert checkpoint_path(run, "final").is_file()
    assert load_config(run / "config.yaml").data.patch_size == (16, 16, 16)


def test_failures_are_shown_and_raised(tmp_path: Path) -> None:
    form = ConfigForm("tiny", run_dir=tmp_path / "run", poll_s=0.05)
    form.cache_dir.value = str(tmp_path / "not_a_cache")
    form.start()
    with pytest.raises(Exception, match="not a preprocessed cache"):
        form.wait(timeout=60)
    assert "failed" in form.status.value and "not a preprocessed cache" in form.status.value


def test_a_folder_holding_a_run_points_to_the_resume_button(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "mae"
    form = ConfigForm("tiny", {"data.cache_dir": "somewhere"}, run_dir=run)
    assert not form.run_button.disabled and form.resume_button.disabled
    assert form.folder_note.value == ""
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "latest.pt").write_bytes(b"")
    form.run_dir.value = str(run) + "/"  # any edit of the folder re-checks it
    assert form.run_button.disabled and not form.resume_button.disabled
    note = html.unescape(form.folder_note.value)
    assert "already holds a run: press Resume" in note and "--resume" not in note
    with pytest.raises(TrainingError, match="press Resume to continue it"):
        form.start()
    assert "press Resume" in form.status.value and not form.running
    form.status.value = ""
    form._click(resume=False)  # a click shows the same words instead of a traceback
    assert "press Resume" in form.status.value and "resume=True" not in form.status.value
    form.run_dir.value = str(tmp_path / "fresh")
    assert not form.run_button.disabled and form.folder_note.value == ""
    with pytest.raises(TrainingError, match="holds no run to resume: press Run"):
        form.start(resume=True)


def test_path_fields_take_the_whole_width() -> None:
    form = ConfigForm("tiny")
    for field in (form.manifest, form.cache_dir, form.run_dir):
        assert field.layout.width == "100%", field.description
        # on a row of its own, not shared with another control
        assert field in form.children[0].children
