"""Read what a run folder holds into arrays for the viewers (nothing is computed here).

Pretraining runs (``run.json`` task ``pretrain``) write reconstruction snapshots::

    RUN_DIR/snapshots/step_0000020/{input,masked,mask,reconstruction,error}.nii.gz

Fine-tuning runs write predictions on the original grid when evaluated (``mae3d evaluate``, the
demo, ``mae3d view --evaluate``), by default into::

    RUN_DIR/evaluation/<dataset>/predictions/<case>.nii.gz

or wherever ``RUN_DIR/evaluations.json`` records them (:func:`toolkit.evaluate.find_predictions`),
and the image and reference label of a case come from the labelled manifest.

Example:
    >>> snap = load_snapshot("runs/mae_tiny")  # doctest: +SKIP
    >>> snap.reconstruction.shape == snap.input.shape  # doctest: +SKIP
    True
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from toolkit.errors import DataError

__all__ = [
    "ReconstructionVolumes",
    "SegmentationVolumes",
    "error_labels",
    "list_snapshots",
    "load_segmentation",
    "load_snapshot",
    "run_kind",
    "ERROR_LABELS",
]

PathLike = str | os.PathLike[str]
SNAPSHOT_KEYS = ("input", "masked", "mask", "reconstruction", "error")
_STEP_DIR = re.compile(r"^step_(\d+)$")
#: Values of :func:`error_labels`.
ERROR_LABELS: dict[int, str] = {1: "false positive", 2: "false negative", 3: "wrong class"}


@dataclass(frozen=True)
class ReconstructionVolumes:
    """One reconstruction snapshot; every array is (D, H, W) float32 on the patch grid.

    Attributes:
        input: the z-scored input crop.
        mask: full-resolution mask, 1 = visible, 0 = masked.
        masked: ``input * mask``.
        reconstruction: the network output.
        error: ``|reconstruction - input|``.
        spacing_mm: voxel size (D, H, W).
        affine: (4, 4) voxel -> mm of the crop.
        step: training step of the snapshot.
        path: the snapshot folder.
    """

    input: np.ndarray
    mask: np.ndarray
    masked: np.ndarray
    reconstruction: np.ndarray
    error: np.ndarray
    spacing_mm: tuple[float, float, float]
    affine: np.ndarray
    step: int
    path: Path


@dataclass(frozen=True)
class SegmentationVolumes:
    """One evaluated case; every array is (D, H, W) on the original image grid.

    Attributes:
        image: the first channel of the case, float32.
        reference: the reference label map, int.
        prediction: the predicted label map, int.
        label_names: label value -> name.
        spacing_mm: voxel size (D, H, W).
        affine: (4, 4) voxel -> mm.
        case: case id.
    """

    image: np.ndarray
    reference: np.ndarray
    prediction: np.ndarray
    label_names: dict[int, str]
    spacing_mm: tuple[float, float, float]
    affine: np.ndarray
    case: str


def run_kind(run_dir: PathLike) -> str:
    """``pretrain`` or ``finetune``, from ``RUN_DIR/run.json`` (or what the folder holds).

    Raises:
        DataError: not a run folder.
    """
    run = Path(run_dir)
    info = run / "run.json"
    if info.is_file():
        try:
            task = json.loads(info.read_text()).get("task")
        except json.JSONDecodeError:
            task = None
        if task in ("pretrain", "finetune"):
            return str(task)
    if (run / "snapshots").is_dir():
        return "pretrain"
    if (run / "evaluation").is_dir() or (run / "evaluations.json").is_file():
        return "finetune"
    raise DataError(f"{run}: not a run folder (no run.json, snapshots/ or evaluation/)")


def list_snapshots(run_dir: PathLike) -> list[tuple[int, Path]]:
    """``(step, folder)`` of every complete snapshot in ``RUN_DIR/snapshots``, oldest first."""
    folder = Path(run_dir) / "snapshots"
    found = []
    if folder.is_dir():
        for sub in folder.iterdir():
            m = _STEP_DIR.match(sub.name)
            if m and sub.is_dir() and all((sub / f"{k}.nii.gz").is_file() for k in SNAPSHOT_KEYS):
                found.append((int(m.group(1)), sub))
    return sorted(found)


def load_snapshot(run_dir: PathLike, step: int | None = None) -> ReconstructionVolumes:
    """Load a reconstruction snapshot of a pretraining run.

    Args:
        run_dir: the pretraining run folder.
        step: which snapshot (default: the latest).

    Raises:
        DataError: no snapshot (yet), or none at ``step``.
    """
    from toolkit.data.io import load_volume

    snaps = list_snapshots(run_dir)
    if not snaps:
        raise DataError(
            f"{run_dir}: no reconstruction snapshots yet (written every pretrain.snapshot_every "
            "steps into snapshots/)"
        )
    if step is None:
        chosen_step, folder = snaps[-1]
    else:
        matches = [s for s in snaps if s[0] == step]
        if not matches:
            raise DataError(
                f"{run_dir}: no snapshot at step {step}; steps: "
                + ", ".join(str(s) for s, _ in snaps)
            )
        chosen_step, folder = matches[0]
    vols = {k: load_volume(folder / f"{k}.nii.gz") for k in SNAPSHOT_KEYS}
    ref = vols["input"]
    return ReconstructionVolumes(
        input=ref.array,
        mask=vols["mask"].array,
        masked=vols["masked"].array,
        reconstruction=vols["reconstruction"].array,
        error=vols["error"].array,
        spacing_mm=ref.spacing_mm,
        affine=ref.affine,
        step=chosen_step,
        path=folder,
    )


def load_segmentation(
    run_dir: PathLike, manifest: PathLike | None = None, case: str | None = None
) -> SegmentationVolumes:
    """Load an evaluated case of a fine-tuning run: image, reference and prediction.

    Args:
        run_dir: the fine-tuning run folder (evaluated with ``mae3d evaluate``).
        manifest: the labelled manifest that was evaluated (default: the run's
            ``data.finetune_manifest``).
        case: case id (default: the first case with a prediction).

    Raises:
        DataError: no evaluation for that manifest, no prediction for ``case``, or grids that
            differ.
    """
    from toolkit.data.io import load_volume
    from toolkit.data.manifest import load_manifest
    from toolkit.evaluate import evaluated_manifest, find_predictions, predicted_datasets

    run = Path(run_dir)
    m = load_manifest(evaluated_manifest(run, manifest))
    folder = find_predictions(run, m.name)
    if folder is None:
        done = ", ".join(predicted_datasets(run)) or "none"
        raise DataError(
            f"{run}: no predictions for dataset {m.name!r} (evaluated: {done}); make them with "
            f"'mae3d view {run} --manifest {manifest} --evaluate' (or 'mae3d evaluate')"
        )
    predicted = sorted(p.name[: -len(".nii.gz")] for p in folder.glob("*.nii.gz"))
    if not predicted:
        raise DataError(f"{folder}: empty, no predictions written")
    case_id = case if case is not None else predicted[0]
    if case_id not in predicted:
        raise DataError(
            f"{folder}: no prediction for case {case_id!r}; cases: {', '.join(predicted)}"
        )
    entry = m.case(case_id)
    label_path = m.label_path(entry)
    if label_path is None:
        raise DataError(f"{m.path or m.name}: case {case_id} has no reference label")
    image = load_volume(m.image_paths(entry)[0], canonical=True)
    reference = load_volume(label_path, canonical=True)
    prediction = load_volume(folder / f"{case_id}.nii.gz", canonical=True)
    for name, vol in (("label", reference), ("prediction", prediction)):
        if vol.shape != image.shape:
            raise DataError(
                f"{vol.path}: {name} grid {vol.shape} differs from the image {image.shape}"
            )
    return SegmentationVolumes(
        image=image.array,
        reference=np.rint(reference.array).astype(np.int32),
        prediction=np.rint(prediction.array).astype(np.int32),
        label_names={int(k): str(v) for k, v in (m.labels or {}).items()},
        spacing_mm=image.spacing_mm,
        affine=image.affine,
        case=case_id,
    )


def error_labels(reference: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """Voxel-wise errors: 0 correct, 1 false positive, 2 false negative, 3 wrong class.

    A false positive is foreground predicted on reference background, a false negative background
    predicted on reference foreground, and a wrong class foreground of another class.

    Args:
        reference: (D, H, W) integer labels, 0 = background.
        prediction: (D, H, W) integer labels.

    Returns:
        (D, H, W) uint8.

    Example:
        >>> error_labels(np.array([0, 0, 1, 1, 2]), np.array([0, 1, 0, 2, 2])).tolist()
        [0, 1, 2, 3, 0]
    """
    ref = np.asarray(reference)
    pred = np.asarray(prediction)
    if ref.shape != pred.shape:
        raise ValueError(f"reference {ref.shape} and prediction {pred.shape} differ in shape")
    out = np.zeros(ref.shape, np.uint8)
    out[(ref == 0) & (pred != 0)] = 1
    out[(ref != 0) & (pred == 0)] = 2
    out[(ref != 0) & (pred != 0) & (ref != pred)] = 3
    return out
