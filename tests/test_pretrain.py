"""MAE pretraining end to end: manifest -> cache -> run folder; over-fitting; exact resume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml

from toolkit.config import Config, load_config
from toolkit.data.sampling import ArrayPatchSource
from toolkit.engine.checkpoint import checkpoint_path, load_checkpoint
from toolkit.engine.logging import read_history
from toolkit.engine.loop import train
from toolkit.engine.runtime import Runtime
from toolkit.errors import ConfigError, DataError
from toolkit.pretrain import PretrainTask, make_pretrain_task, pretrain, resolve_pretrain_cache

PATCH = [16, 16, 16]


def _cfg(**overrides: Any) -> Config:
    base: dict[str, Any] = {
        "runtime.device": "cpu",
        "data.patch_size": PATCH,
        "data.num_workers": 0,
        "pretrain.batch_size": 2,
        "pretrain.val_batches": 1,
    }
    base.update({k.replace("__", "."): v for k, v in overrides.items()})
    return load_config("tiny", base)


def _blob(rng: np.random.Generator, shape: tuple[int, int, int]) -> np.ndarray:
    """A smooth ellipsoid 'head' with noise, zero outside (what brain MRI looks like, roughly)."""
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    radius = np.sqrt(((grid / rng.uniform(0.6, 0.9, (3, 1, 1, 1))) ** 2).sum(0))
    img = np.where(radius < 1, 100 + 50 * np.cos(4 * grid[0]) + rng.normal(0, 5, shape), 0)
    return img.astype(np.float32)


def _write_dataset(root: Path, num_subjects: int = 4) -> Path:
    rng = np.random.default_rng(0)
    cases = []
    for i in range(num_subjects):
        name = f"sub-{i:02d}.nii.gz"
        nib.save(nib.Nifti1Image(_blob(rng, (20, 22, 18)), np.eye(4)), str(root / name))
        cases.append({"id": f"sub-{i:02d}", "subject": f"sub-{i:02d}", "images": {"T1": name}})
    manifest = root / "pretrain.yaml"
    manifest.write_text(
        yaml.safe_dump({"name": "blobs", "root": ".", "channels": ["T1"], "cases": cases})
    )
    return manifest


def test_pretrain_from_a_manifest_writes_a_complete_run(tmp_path: Path) -> None:
    manifest = _write_dataset(tmp_path)
    run = tmp_path / "runs" / "mae"
    cfg = _cfg(
        data__pretrain_manifest=str(manifest),
        data__target_spacing_mm=[1.0, 1.0, 1.0],
        data__val_fraction=0.25,
        pretrain__steps=2,
        pretrain__val_every=2,
        pretrain__snapshot_every=2,
        pretrain__checkpoint_every=1,
    )
    assert pretrain(cfg, run, progress=False) == run

    cache = tmp_path / "runs" / "cache" / "blobs"  # documented default next to the runs
    assert (cache / "plan.json").is_file()
    for name in (
        "config.yaml",
        "plan.json",
        "run.json",
        "metrics.csv",
        "metrics.jsonl",
        "loss.png",
    ):
        assert (run / name).is_file(), name
    assert any((run / "tb").iterdir())
    snap = run / "snapshots"
    assert (snap / "step_0000002.png").is_file()
    volumes = {p.name for p in (snap / "step_0000002").iterdir()}
    assert volumes == {
        f"{k}.nii.gz" for k in ("input", "masked", "mask", "reconstruction", "error")
    }
    recon = nib.load(snap / "step_0000002" / "reconstruction.nii.gz")
    assert recon.shape == tuple(PATCH)

    ckpt = load_checkpoint(checkpoint_path(run, "final"))
    assert ckpt["step"] == 2 and ckpt["plan"]["dataset"] == "blobs"
    assert ckpt["config"]["data"]["patch_size"] == PATCH and ckpt["mae_variant"] == "s3d"
    assert ckpt["extra_weights"]  # S3D tokens / densification convs, stored apart
    from toolkit.models import create_model

    plain = create_model("resenc_tiny", 1, 1)
    plain.load_state_dict(ckpt["network_weights"])  # nnU-Net keys, strict
    assert any(k.startswith("encoder.stem.") for k in ckpt["network_weights"])
    best = load_checkpoint(checkpoint_path(run, "best"))
    assert best["best"]["metric"] == "val_loss" and best["metrics"]["val_loss"] > 0
    val = [r for r in read_history(run) if "val_loss" in r]
    assert len(val) == 1 and np.isfinite(val[0]["val_loss"])
    assert val[0]["infill_loss"] > 0  # the in-fill gate, logged beside val_loss
    assert val[0]["infill_margin"] == pytest.approx(val[0]["infill_loss"] - val[0]["val_loss"])
    assert "infill_loss" in (run / "metrics.csv").read_text()
    # scoring the final checkpoint afterwards reproduces what the run logged at that step
    from toolkit.infill_gate import score_infill

    scored = score_infill(run, checkpoint="final")  # finds the run's own cache
    assert scored["step"] == 2
    for key in ("val_loss", "infill_loss", "infill_margin"):
        assert scored[key] == pytest.approx(val[0][key], rel=1e-5), key

    # the same cache, found through data.cache_dir, and the checks that guard it
    assert resolve_pretrain_cache(_cfg(data__cache_dir=str(cache)), run) == cache
    with pytest.raises(ConfigError, match="model.in_channels: 2 but the cache"):
        make_pretrain_task(_cfg(model__in_channels=2), cache)


def test_cache_resolution_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="data.cache_dir"):
        resolve_pretrain_cache(_cfg(), tmp_path / "run")
    with pytest.raises(DataError, match="not a preprocessed cache"):
        resolve_pretrain_cache(_cfg(data__cache_dir=str(tmp_path)), tmp_path / "run")


def _one_volume_source(shape: tuple[int, int, int] = (16, 16, 16)) -> ArrayPatchSource:
    img = _blob(np.random.default_rng(1), shape)
    img = (img - img.mean()) / img.std()
    return ArrayPatchSource({"only": img[None]})


def test_overfits_one_batch(tmp_path: Path) -> None:
    cfg = _cfg(
        pretrain__steps=30,
        pretrain__batch_size=1,
        pretrain__augment=False,
        pretrain__log_every=10,
        pretrain__val_every=30,
        pretrain__checkpoint_every=30,
        pretrain__snapshot_every=1000,
        pretrain__optim__optimizer="adamw",
        pretrain__optim__lr=3e-3,
        pretrain__optim__schedule="constant",
    )
    task = PretrainTask(cfg, _one_volume_source(), ["only"])
    result = train(task, cfg, tmp_path, progress=False)
    first, last = np.mean(result.losses[:5]), np.mean(result.losses[-5:])
    assert last < 0.5 * first, result.losses


class _StopAt(PretrainTask):
    """Creates RUN_DIR/STOP during a given step (a user stopping the run)."""

    def __init__(self, *args: Any, stop_at: int, run_dir: Path, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stop_at, self.run_dir = stop_at, run_dir

    def training_step(
        self, model: torch.nn.Module, batch: Any, step: int, rt: Runtime
    ) -> dict[str, torch.Tensor]:
        if step + 1 == self.stop_at:
            (self.run_dir / "STOP").touch()
        return super().training_step(model, batch, step, rt)


def test_resume_reproduces_crops_masks_and_augmentation(tmp_path: Path) -> None:
    cfg = _cfg(
        pretrain__steps=4,
        pretrain__augment_prob=1.0,
        pretrain__log_every=1,
        pretrain__val_every=100,
        pretrain__checkpoint_every=100,
        pretrain__snapshot_every=1000,
        mask__ratio_range=[0.6, 0.9],
    )
    source = _one_volume_source((20, 20, 20))
    full = train(PretrainTask(cfg, source, ["only"]), cfg, tmp_path / "full", progress=False)
    run = tmp_path / "split"
    first = train(_StopAt(cfg, source, ["only"], stop_at=1, run_dir=run), cfg, run, progress=False)
    assert first.status == "stopped" and first.step == 2
    second = train(PretrainTask(cfg, source, ["only"]), cfg, run, resume=True, progress=False)
    assert first.losses + second.losses == full.losses


def test_masks_and_augmentation_are_drawn_for_the_global_batch() -> None:
    cfg = _cfg(pretrain__batch_size=4, pretrain__augment_prob=1.0)
    task = PretrainTask(cfg, _one_volume_source(), ["only"])
    rows = torch.arange(4)
    masks = task.masks(7, rows)
    assert torch.equal(torch.cat([task.masks(7, rows[:2]), task.masks(7, rows[2:])]), masks)
    hidden = (masks == 0).flatten(1).sum(1)
    assert cfg.mask.block_size == 4  # the tiny preset's blocks
    assert hidden.tolist() == [48] * 4  # 75 % of the 4^3 grid of 4^3 blocks, exactly
    x = torch.randn(4, 1, *PATCH)
    both = task.augment(x, 7, rows)
    assert torch.equal(task.augment(x[[1, 3]], 7, torch.tensor([1, 3])), both[[1, 3]])


def _val_source() -> ArrayPatchSource:
    rng = np.random.default_rng(3)
    vols = {f"s{i}": _blob(rng, (18, 18, 18))[None] for i in range(3)}
    return ArrayPatchSource({k: (v - v.mean()) / v.std() for k, v in vols.items()})


@pytest.mark.parametrize("variant", ["s3d", "dense"])
def test_validation_scores_the_infill_baseline_on_the_same_crops_and_masks(
    variant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import toolkit.pretrain as pretrain_module
    from toolkit.infill import infill_loss
    from toolkit.models import build_mae

    cfg = _cfg(mask__variant=variant, pretrain__val_batches=2)
    task = PretrainTask(cfg, _val_source(), ["s0"], ["s1", "s2"])
    calls: list[int] = []
    real = pretrain_module.infill_loss

    def counted(*args: Any, **kwargs: Any) -> torch.Tensor:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(pretrain_module, "infill_loss", counted)
    rt = Runtime(device=torch.device("cpu"))
    model = build_mae(cfg).eval()
    with torch.no_grad():
        first = task.validate(model, rt)
        list(model.network.parameters())[-1].add_(1.0)  # the output bias: a new MAE
        second = task.validate(model, rt)
    assert len(calls) == 2  # once per run (2 validation batches), not once per validation
    assert set(first) == {"val_loss", "infill_loss", "infill_margin"}
    assert first["val_loss"] != second["val_loss"] and first["infill_loss"] == second["infill_loss"]

    # by hand: the in-fill of the very crops and masks val_loss used, and the MAE's loss on them
    fills, maes = [], []
    for number, batch in task._val_batches(rt):
        mask = task._val_masks(number, batch["image"].shape[0])
        fills.append(float(infill_loss(batch["image"], mask)))
        with torch.no_grad():
            maes.append(float(task.reconstruct(model, batch["image"], mask)[0]))
    assert second["infill_loss"] == pytest.approx(float(np.mean(fills)), rel=1e-6)
    assert second["val_loss"] == pytest.approx(float(np.mean(maes)), rel=1e-6)
    assert second["infill_margin"] == pytest.approx(
        second["infill_loss"] - second["val_loss"], rel=1e-6
    )


@pytest.mark.slow
def test_run_logs_infill_metrics_and_a_resume_recomputes_the_same_baseline(
    tmp_path: Path,
) -> None:
    cfg = _cfg(
        pretrain__steps=2,
        pretrain__val_every=1,
        pretrain__checkpoint_every=1,
        pretrain__snapshot_every=2,
    )
    source = _val_source()
    run = tmp_path / "run"
    train(
        _StopAt(cfg, source, ["s0"], ["s1", "s2"], stop_at=1, run_dir=run), cfg, run, progress=False
    )
    train(PretrainTask(cfg, source, ["s0"], ["s1", "s2"]), cfg, run, resume=True, progress=False)
    rows = [r for r in read_history(run) if "val_loss" in r]
    assert [r["step"] for r in rows] == [1, 2]
    assert rows[0]["infill_loss"] == rows[1]["infill_loss"] > 0
    for r in rows:
        assert r["infill_margin"] == pytest.approx(r["infill_loss"] - r["val_loss"], rel=1e-6)
    assert (run / "snapshots" / "step_0000002.png").is_file()
