"""Run folders, volumes and napari viewers for the front-end tests (no training).

``pretrain_run`` looks like a pretraining run with two reconstruction snapshots; ``finetune_run``
like an evaluated fine-tuning run with its labelled manifest. Both follow the layouts that
``toolkit.pretrain`` and ``toolkit.evaluate`` write (see ``widgets/runs.py``).

Viewer tests use ``make_viewer`` (napari's ``make_napari_viewer`` when pytest-qt is installed) and
``shots``, which saves every screenshot as PNG under the test's tmp dir (and under
``$MAE3D_SCREENSHOT_DIR`` when set) and prints its path.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from toolkit.config import Config, load_config, save_config
from toolkit.data.io import save_volume
from toolkit.data.manifest import Case, Manifest, save_manifest
from toolkit.engine.checkpoint import save_checkpoint
from toolkit.models import build_mae, build_segmentation_model

SHAPE = (24, 28, 32)
SPACING = (2.0, 2.0, 2.0)


def _radius(shape: tuple[int, int, int]) -> np.ndarray:
    grid = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    return np.sqrt(sum(g**2 for g in grid))


def tissue_labels(shape: tuple[int, int, int] = SHAPE) -> np.ndarray:
    """(D, H, W) uint8 nested shells: 3 inside r < 0.35, 2 up to 0.6, 1 up to 0.85, 0 outside."""
    r = _radius(shape)
    lab = np.zeros(shape, np.uint8)
    lab[r < 0.85] = 1
    lab[r < 0.6] = 2
    lab[r < 0.35] = 3
    return lab


def phantom(shape: tuple[int, int, int] = SHAPE, seed: int = 0) -> np.ndarray:
    """A (D, H, W) float32 brain-like ball: label intensities plus noise, zero outside."""
    rng = np.random.default_rng(seed)
    lab = tissue_labels(shape)
    means = np.array([0.0, 0.3, 0.6, 0.9], np.float32)
    noisy = means[lab] + 0.05 * rng.standard_normal(shape).astype(np.float32)
    return np.where(lab > 0, noisy, 0.0).astype(np.float32)


def block_mask(shape: tuple[int, int, int] = SHAPE, block: int = 4) -> np.ndarray:
    """A (D, H, W) checkerboard of visible (1) and masked (0) blocks."""
    idx = np.indices(shape) // block
    return ((idx.sum(0) % 2) == 0).astype(np.float32)


@pytest.fixture
def pretrain_run(tmp_path: Path) -> Path:
    """A pretraining run folder with snapshots at steps 10 and 20 (20 reconstructs better)."""
    return make_pretrain_run(tmp_path)


def make_pretrain_run(tmp_path: Path) -> Path:
    """Write the ``pretrain_run`` folder under ``tmp_path`` (for tests outside this folder)."""
    run = tmp_path / "mae_run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"task": "pretrain"}))
    records: list[dict[str, float]] = [
        {"step": s, "loss": 1.0 / s, "lr": 0.01} for s in (5, 10, 15, 20)
    ]
    # validations with the in-fill gate: behind the in-fill at step 10, ahead at step 20
    records += [
        {"step": s, "val_loss": v, "infill_loss": 0.4, "infill_margin": 0.4 - v}
        for s, v in ((10, 0.5), (20, 0.3))
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    image, mask = phantom(), block_mask()
    affine = np.diag([*SPACING, 1.0])
    for step, noise in ((10, 0.5), (20, 0.1)):
        rec = image + noise * (1 - mask)
        folder = run / "snapshots" / f"step_{step:07d}"
        vols = {
            "input": image,
            "masked": image * mask,
            "mask": mask,
            "reconstruction": rec,
            "error": np.abs(rec - image),
        }
        for key, vol in vols.items():
            save_volume(vol.astype(np.float32), affine, folder / f"{key}.nii.gz")
    return run


@pytest.fixture
def finetune_run(tmp_path: Path) -> tuple[Path, Path]:
    """``(run folder, manifest path)`` of an evaluated fine-tuning run with two cases."""
    data = tmp_path / "data"
    affine = np.diag([*SPACING, 1.0])
    cases = []
    for i in range(2):
        image = phantom(seed=i)
        save_volume(image, affine, data / "images" / f"c{i}.nii.gz")
        save_volume(tissue_labels(), affine, data / "labels" / f"c{i}.nii.gz", dtype=np.uint8)
        cases.append(
            Case(
                case_id=f"c{i}",
                subject=f"s{i}",
                images={"image": Path(f"images/c{i}.nii.gz")},
                label=Path(f"labels/c{i}.nii.gz"),
                split="test",
            )
        )
    manifest = save_manifest(
        Manifest(
            name="toy",
            root=data,
            root_spec=".",
            channels=("image",),
            labels={0: "background", 1: "csf", 2: "gm", 3: "wm"},
            cases=tuple(cases),
        ),
        data / "toy.yaml",
    )
    run = tmp_path / "ft_run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"task": "finetune"}))
    save_config(load_config("tiny", {"data.finetune_manifest": str(manifest)}), run / "config.yaml")
    for i in range(2):
        ref = tissue_labels()
        pred = ref.copy()
        pred[:, :, 14:18][ref[:, :, 14:18] > 0] = 0  # false negatives: a slab through the middle
        pred[2:6, 2:6, -6:-2] = 1  # false positives in the background corner
        save_volume(
            pred,
            affine,
            run / "evaluation" / "toy" / "predictions" / f"c{i}.nii.gz",
            dtype=np.uint8,
        )
    return run, manifest


# --------------------------------------------------------------------------------------------------
# Checkpoints (untrained weights, the keys the engine writes)

LABELS = {0: "background", 1: "csf", 2: "gm", 3: "wm"}


def small_config() -> Config:
    return load_config(
        "tiny", {"data.patch_size": [32, 32, 32], "data.target_spacing_mm": [2.0, 2.0, 2.0]}
    )


def write_pretrain_checkpoint(path: Path) -> Path:
    """A pretraining checkpoint as the engine writes it (untrained weights)."""
    cfg = small_config()
    torch.manual_seed(0)
    model = build_mae(cfg)
    state = {
        "task": "pretrain",
        "step": 0,
        "config": cfg.to_dict(),
        "network_weights": model.network.state_dict(),
        "extra_weights": model.extra_state_dict(),
    }
    return save_checkpoint(path, state)


def write_finetune_checkpoint(path: Path) -> Path:
    """A fine-tuning checkpoint as the engine writes it (untrained weights)."""
    cfg = small_config()
    torch.manual_seed(0)
    network = build_segmentation_model(cfg, len(LABELS))
    state = {
        "task": "finetune",
        "step": 0,
        "config": cfg.to_dict(),
        "model": network.state_dict(),
        "task_state": {"num_classes": len(LABELS), "labels": LABELS},
    }
    return save_checkpoint(path, state)


# --------------------------------------------------------------------------------------------------
# napari

needs_display = pytest.mark.skipif(
    not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY") or shutil.which("Xvfb")),
    reason="no display and no Xvfb: install xvfb (apt-get install xvfb, see .ci/run) to run the "
    "napari tests",
)


@pytest.fixture
def make_viewer(request: pytest.FixtureRequest) -> Iterator[Any]:
    """napari's ``make_napari_viewer`` when pytest-qt is installed, else a plain equivalent."""
    napari = pytest.importorskip("napari")
    if importlib.util.find_spec("pytestqt") is not None:
        yield request.getfixturevalue("make_napari_viewer")
        return
    viewers: list[Any] = []

    def make(**kwargs: Any) -> Any:
        viewers.append(napari.Viewer(**kwargs))
        return viewers[-1]

    yield make
    for viewer in viewers:
        viewer.close()


@pytest.fixture
def shots(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Any:
    """``shots(viewer, name)``: screenshot the canvas as RGB, save it as PNG, print the path."""
    from matplotlib.image import imsave

    extra = os.environ.get("MAE3D_SCREENSHOT_DIR")

    def take(viewer: Any, name: str, save: bool = True) -> np.ndarray:
        rgb = np.asarray(viewer.screenshot(canvas_only=True, flash=False))[..., :3]
        if save:
            path = tmp_path / f"{name}.png"
            imsave(path, rgb)
            if extra:
                Path(extra).mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, Path(extra) / path.name)
            with capsys.disabled():
                print(f"\nscreenshot {name}: {path}")
        return rgb

    return take
