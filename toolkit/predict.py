"""The one prediction path: fine-tuned run(s) -> label map on a case's original grid.

Every front end segments through this module, so a prediction made by ``mae3d predict``,
``mae3d evaluate``, the napari plugin or a notebook is byte-identical for the same run, case and
options:

1. :func:`load_predictor` builds the network of each run (``best`` or ``final`` checkpoint) with its
   config and preprocessing plan; several runs form an ensemble and must share label set, channels
   and preprocessing (:func:`preprocess_settings`).
2. :meth:`Predictor.preprocess` runs :func:`toolkit.data.preprocess.preprocess_case` with the
   run's plan (reorient, crop, z-score, resample) after checking the geometry is plausible.
3. :meth:`Predictor.segment` runs MONAI's Gaussian-weighted ``sliding_window_inference``
   (:func:`predict_probabilities`, optional mirror test-time augmentation) for every run, averages
   the softmax probabilities and takes the argmax on the preprocessed grid. ``mae3d evaluate``
   enters here with the same preprocessed volume read from its cache.
4. :meth:`Predictor.predict_case` maps labels (nearest neighbour) and, when asked, probabilities
   (linear) back to the original grid with :func:`toolkit.data.preprocess.invert_to_original`.

:func:`predict` is the batch front end (``mae3d predict``): input discovery, skip-and-continue on
bad files, background reading / writing, ``volumes.csv``. It lives in :mod:`toolkit.predict_batch`.

Example:
    >>> predictor = load_predictor(["runs/ft"], checkpoint="best")  # doctest: +SKIP
    >>> result = predictor.predict_case(["scan.nii.gz"])  # doctest: +SKIP
    >>> result.labels.shape == nib.load("scan.nii.gz").shape  # doctest: +SKIP
    True
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from toolkit.errors import ConfigError, DataError
from toolkit.inference import (
    build_network,
    checkpoint_config,
    load_segmentation_checkpoint,
    num_classes,
    predict_probabilities,
    segment_volume,
)

if TYPE_CHECKING:
    import torch
    from torch import nn

    from toolkit.config import Config
    from toolkit.data.io import Volume
    from toolkit.engine.runtime import Runtime

PathLike = str | os.PathLike[str]

#: Voxel edges outside this range (mm) are taken for a broken header, not a scan.
SPACING_RANGE_MM = (0.01, 50.0)
#: Largest field of view (mm) along one axis; a whole body is ~2 m.
MAX_EXTENT_MM = 2500.0
#: Largest number of voxels on the preprocessed grid (1024^3 would need 4 GiB per channel).
MAX_GRID_VOXELS = 512**3


# --------------------------------------------------------------------------------------------------
# Loading runs


def preprocess_settings(plan: Mapping[str, Any] | None, cfg: Config) -> dict[str, Any]:
    """Keyword arguments of :func:`~toolkit.data.preprocess.preprocess_case` for a run.

    The run's stored plan wins (it is what the network was trained on); a checkpoint without one
    falls back to its config's ``data`` section. Every preprocessing choice a plan records belongs
    here, so prediction, evaluation caches and ensemble checks all follow it.

    Returns:
        ``{"target_spacing_mm": (3,) floats, "image_order": int, "brain_extraction": str}``; a
        plan from before brain extraction existed means ``"none"``.
    """
    plan = plan or {}
    spacing = plan.get("target_spacing_mm", cfg.data.target_spacing_mm)
    return {
        "target_spacing_mm": tuple(float(s) for s in spacing),
        "image_order": int(plan.get("image_order", cfg.data.image_order)),
        "brain_extraction": str(plan.get("brain_extraction", cfg.data.brain_extraction)),
    }


@dataclass
class LoadedRun:
    """One fine-tuned network ready for inference.

    Attributes:
        checkpoint: the checkpoint file.
        network: eval-mode network on the predictor's device.
        cfg: the run's config (patch size, ``evaluate`` defaults).
        plan: the preprocessing plan stored with the run, or None.
    """

    checkpoint: Path
    network: nn.Module
    cfg: Config
    plan: dict[str, Any] | None


@dataclass
class Predictor:
    """One or more fine-tuned runs (an ensemble) and the inference options.

    Build it with :func:`load_predictor`. ``timings`` accumulates seconds per stage
    (``preprocess``, ``network``, ``invert``) over every call, for benchmarks.

    Attributes:
        runs: the loaded networks (same classes, channels and preprocessing).
        runtime: device and precision (``toolkit.engine.runtime``).
        labels: label value -> name (values 0..num_classes-1).
        num_channels: input channels the networks expect.
        settings: :func:`preprocess_settings` shared by every run.
        overlap: sliding-window overlap.
        mirror_tta: mirror test-time augmentation.
        sw_batch_size: windows per forward pass.
    """

    runs: list[LoadedRun]
    runtime: Runtime
    labels: dict[int, str]
    num_channels: int
    settings: dict[str, Any]
    overlap: float
    mirror_tta: bool
    sw_batch_size: int
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def _time(self, stage: str, started: float) -> None:
        self.timings[stage] = self.timings.get(stage, 0.0) + time.perf_counter() - started

    def preprocess(self, images: Sequence[Volume | PathLike]) -> tuple[np.ndarray, dict[str, Any]]:
        """Load and preprocess one case with the runs' plan.

        Args:
            images: one Volume or NIfTI path per channel, in the runs' channel order.

        Returns:
            ``(image, properties)``: (C, D, H, W) float32 on the preprocessed grid and the
            properties that invert it.

        Raises:
            DataError: wrong number of channels, unreadable / non-3D file, implausible header
                (spacing, extent, orientation), or an image the preprocessing rejects.
        """
        from toolkit.data.io import Volume, load_volume
        from toolkit.data.preprocess import preprocess_case

        started = time.perf_counter()
        if len(images) != self.num_channels:
            names = ", ".join(str(getattr(v, "path", None) or v) for v in images)
            raise DataError(
                f"{names}: {len(images)} channel file(s), but the run expects {self.num_channels}"
            )
        vols = [v if isinstance(v, Volume) else load_volume(v) for v in images]
        for vol in vols:
            check_geometry(vol, self.settings["target_spacing_mm"])
        image, _, props = preprocess_case(vols, None, **self.settings)
        self._time("preprocess", started)
        return image, props

    def probabilities(self, image: np.ndarray) -> torch.Tensor:
        """Ensemble-mean softmax probabilities of a preprocessed volume.

        Args:
            image: (C, D, H, W) float32 on the preprocessed grid.

        Returns:
            (K, D, H, W) float32 probabilities on the runtime's device.
        """
        import torch

        started = time.perf_counter()
        x = torch.tensor(np.asarray(image, dtype=np.float32), device=self.runtime.device)[None]
        total: torch.Tensor | None = None
        for run in self.runs:
            prob = predict_probabilities(
                run.network,
                x,
                roi_size=run.cfg.data.patch_size,
                overlap=self.overlap,
                sw_batch_size=self.sw_batch_size,
                mirror_tta=self.mirror_tta,
                autocast=self.runtime.autocast,
            )[0]
            total = prob if total is None else total + prob
        assert total is not None
        out = total / len(self.runs)
        self._time("network", started)
        return out

    def segment(
        self, image: np.ndarray, *, with_probabilities: bool = False
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Label map (and probabilities) of a preprocessed volume, on the preprocessed grid.

        Args:
            image: (C, D, H, W) float32 on the preprocessed grid.
            with_probabilities: also return the probabilities.

        Returns:
            ``(labels, probabilities)``: (D, H, W) uint8 argmax and (K, D, H, W) float32 or None.
        """
        import torch

        prob = self.probabilities(image)
        labels = prob.argmax(0).to(torch.uint8).cpu().numpy()
        return labels, (prob.cpu().numpy() if with_probabilities else None)

    def predict_case(
        self, images: Sequence[Volume | PathLike], *, with_probabilities: bool = False
    ) -> CasePrediction:
        """Segment one case and map the result back onto its original grid.

        Args:
            images: one Volume or NIfTI path per channel.
            with_probabilities: also invert the probabilities (float16).

        Returns:
            A :class:`CasePrediction` on the grid of the first channel.
        """
        image, props = self.preprocess(images)
        return self.predict_preprocessed(image, props, with_probabilities=with_probabilities)

    def predict_preprocessed(
        self,
        image: np.ndarray,
        properties: Mapping[str, Any],
        *,
        with_probabilities: bool = False,
    ) -> CasePrediction:
        """:meth:`predict_case` for a volume already preprocessed (e.g. read from a cache).

        Args:
            image: (C, D, H, W) float32 on the preprocessed grid.
            properties: its preprocessing properties.
            with_probabilities: also invert the probabilities (float16).
        """
        labels, prob = self.segment(image, with_probabilities=with_probabilities)
        return self.invert(labels, prob, properties)

    def invert(
        self, labels: np.ndarray, probabilities: np.ndarray | None, properties: Mapping[str, Any]
    ) -> CasePrediction:
        """Map :meth:`segment`'s output back onto the case's original grid.

        Args:
            labels: (D, H, W) uint8 on the preprocessed grid.
            probabilities: (K, D, H, W) float32 on the preprocessed grid, or None.
            properties: the case's preprocessing properties.
        """
        from toolkit.data.preprocess import invert_to_original

        started = time.perf_counter()
        labels_orig, affine = invert_to_original(labels, properties, is_label=True)
        prob_orig = None
        if probabilities is not None:
            prob_orig = invert_probabilities(probabilities, properties)
        self._time("invert", started)
        return CasePrediction(labels_orig, affine, prob_orig, dict(properties))


def invert_probabilities(prob: np.ndarray, properties: Mapping[str, Any]) -> np.ndarray:
    """Probabilities on the original grid, summing to one everywhere.

    Args:
        prob: (K, D, H, W) float probabilities on the preprocessed grid.
        properties: the case's preprocessing properties.

    Returns:
        (K, *original_shape) float16; outside the cropped box the background channel is 1.
    """
    from toolkit.data.preprocess import invert_to_original

    out, _ = invert_to_original(prob, properties, is_label=False)
    # invert_to_original leaves every channel 0 outside the crop: that is background.
    outside = out.sum(0) == 0
    out[0][outside] = 1.0
    return out.astype(np.float16)


@dataclass(frozen=True)
class CasePrediction:
    """A case's prediction on its original grid.

    Attributes:
        labels: (D, H, W) uint8 label map, ``original_shape`` of the properties.
        affine: (4, 4) original affine.
        probabilities: (K, D, H, W) float16 or None.
        properties: the preprocessing properties.
    """

    labels: np.ndarray
    affine: np.ndarray
    probabilities: np.ndarray | None
    properties: dict[str, Any]


def save_label_map(
    labels: np.ndarray,
    affine: np.ndarray,
    path: PathLike,
    *,
    reference: PathLike | None = None,
) -> Path:
    """Write a (D, H, W) uint8 label map atomically (hidden temporary name, then rename).

    Args:
        labels: (D, H, W) label map on the original grid.
        affine: (4, 4) its affine (used when there is no ``reference``).
        path: ``.nii.gz`` / ``.nii`` output.
        reference: the case's image file: its header (qform, sform and their codes, units,
            description) is copied, so the prediction overlays the scan in any viewer.

    Returns:
        The written path.
    """
    import nibabel as nib

    from toolkit.data.io import read_header, save_volume

    path = Path(path)
    arr = np.ascontiguousarray(labels, dtype=np.uint8)
    if reference is None:
        return save_volume(arr, affine, path, dtype=np.uint8)
    ref = read_header(reference)
    header = ref.header.copy()
    header.set_data_dtype(np.uint8)
    img = type(ref)(arr, None, header=header)
    img.header.set_slope_inter(1.0, 0.0)
    if not np.allclose(img.header.get_best_affine(), affine, atol=1e-4):
        raise DataError(f"{reference}: header affine changed since the case was read")
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else ".nii"
    tmp = path.with_name(f".{path.name[: -len(suffix)]}.{os.getpid()}.tmp{suffix}")
    try:
        nib.save(img, str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def check_geometry(vol: Volume, target_spacing_mm: Sequence[float]) -> None:
    """Reject headers no scan has, before they cost memory.

    Raises:
        DataError: non-finite or singular affine, voxel spacing outside
            :data:`SPACING_RANGE_MM`, a field of view over :data:`MAX_EXTENT_MM`, or a
            preprocessed grid over :data:`MAX_GRID_VOXELS` voxels.
    """
    name = str(vol.path) if vol.path else "image"
    affine = np.asarray(vol.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise DataError(f"{name}: affine is not finite or singular (broken header)")
    spacing = np.asarray(vol.spacing_mm)
    lo, hi = SPACING_RANGE_MM
    if np.any(spacing < lo) or np.any(spacing > hi):
        raise DataError(
            f"{name}: voxel spacing {tuple(round(float(s), 4) for s in spacing)} mm is outside "
            f"{lo}..{hi} mm (broken header)"
        )
    extent = spacing * np.asarray(vol.shape[:3])
    if np.any(extent > MAX_EXTENT_MM):
        raise DataError(
            f"{name}: field of view {tuple(round(float(e)) for e in extent)} mm is over "
            f"{MAX_EXTENT_MM:g} mm (broken header)"
        )
    voxels = math.prod(float(e) / float(t) for e, t in zip(extent, target_spacing_mm, strict=True))
    if voxels > MAX_GRID_VOXELS:
        raise DataError(
            f"{name}: resampling to {tuple(target_spacing_mm)} mm would give {voxels:.3g} voxels "
            f"(limit {MAX_GRID_VOXELS:.3g})"
        )


def _resolve_checkpoint(run: PathLike, checkpoint: str) -> Path:
    from toolkit.engine.checkpoint import checkpoint_path

    path = Path(run)
    if path.is_dir():
        if checkpoint not in ("best", "final", "latest"):
            raise ConfigError(f"--checkpoint: expected best or final, got {checkpoint!r}")
        path = checkpoint_path(path, checkpoint)
    if not path.is_file():
        raise DataError(f"{path}: checkpoint not found")
    return path


def load_predictor(
    runs: Sequence[PathLike],
    *,
    checkpoint: str = "best",
    device: str | None = None,
    overlap: float | None = None,
    mirror_tta: bool | None = None,
    sw_batch_size: int | None = None,
) -> Predictor:
    """Load one run, or several as an ensemble.

    Args:
        runs: fine-tuning run folders or checkpoint files.
        checkpoint: ``best`` or ``final`` (``latest`` too) for run folders.
        device: ``cpu``, ``cuda``, ... (default: the first run's ``runtime.device``).
        overlap: sliding-window overlap (default: the first run's ``evaluate.overlap``).
        mirror_tta: mirror TTA (default: the first run's ``evaluate.mirror_tta``).
        sw_batch_size: windows per forward pass (default: the first run's config).

    Raises:
        DataError: a missing or non-fine-tuning checkpoint, or runs that differ in label set,
            channels or preprocessing.
        ConfigError: a bad option value.
    """
    from toolkit.engine.checkpoint import load_checkpoint
    from toolkit.engine.runtime import setup_runtime

    if not runs:
        raise ConfigError("predict: give at least one run")
    loaded: list[tuple[Path, dict[str, Any], Config]] = []
    for run in runs:
        path = _resolve_checkpoint(run, checkpoint)
        state = load_checkpoint(path)
        loaded.append((path, state, checkpoint_config(state, path)))
    first_path, first_state, first_cfg = loaded[0]
    runtime_cfg = first_cfg.runtime
    if device is not None:
        runtime_cfg = first_cfg.replace({"runtime.device": device}).runtime
    rt = setup_runtime(runtime_cfg, init_distributed=False)
    ov = first_cfg.evaluate.overlap if overlap is None else float(overlap)
    if not 0.0 <= ov < 1.0:
        raise ConfigError(f"--overlap: must be in [0, 1), got {ov}")
    sw = first_cfg.evaluate.sw_batch_size if sw_batch_size is None else int(sw_batch_size)

    reference: dict[str, Any] | None = None
    out: list[LoadedRun] = []
    for path, state, cfg in loaded:
        plan = state.get("plan")
        signature = _run_signature(state, cfg, path)
        if reference is None:
            reference = signature
        else:
            for key, value in signature.items():
                if value != reference[key]:
                    raise DataError(
                        f"ensemble: {path} has {key} {value}, but {first_path} has "
                        f"{reference[key]}; runs of an ensemble must share classes and plan"
                    )
        out.append(LoadedRun(path, build_network(state, cfg, path, rt.device), cfg, _plain(plan)))
    assert reference is not None
    return Predictor(
        runs=out,
        runtime=rt,
        labels=reference["labels"],
        num_channels=reference["channels"],
        settings=preprocess_settings(out[0].plan, first_cfg),
        overlap=ov,
        mirror_tta=first_cfg.evaluate.mirror_tta if mirror_tta is None else bool(mirror_tta),
        sw_batch_size=sw,
    )


def _plain(plan: Any) -> dict[str, Any] | None:
    return dict(plan) if isinstance(plan, Mapping) else None


def _run_signature(state: Mapping[str, Any], cfg: Config, path: Path) -> dict[str, Any]:
    """What must agree between the runs of an ensemble."""
    classes = num_classes(state, path)
    stored = (state.get("task_state") or {}).get("labels") or {}
    labels = {v: str(v) for v in range(classes)}
    labels.update({int(k): str(v) for k, v in stored.items()})
    return {
        "labels": labels,
        "channels": int(cfg.model.in_channels),
        "preprocessing": preprocess_settings(_plain(state.get("plan")), cfg),
    }


__all__ = [
    "CasePrediction",
    "LoadedRun",
    "Predictor",
    "build_network",
    "check_geometry",
    "checkpoint_config",
    "invert_probabilities",
    "load_predictor",
    "load_segmentation_checkpoint",
    "predict_probabilities",
    "preprocess_settings",
    "save_label_map",
    "segment_volume",
]
