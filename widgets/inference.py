"""Run a checkpoint on one volume for the viewers: MAE reconstruction and segmentation.

Thin compositions of toolkit functions, shared by the napari plugin and the notebooks:

* :func:`load_mae` — a pretraining checkpoint as an ``MAEModel`` and its config;
* :func:`prepare_image` — :func:`toolkit.data.preprocess.preprocess_case` at the checkpoint's
  spacing (crop to non-zero, z-score, resample), keeping where the result sits in world space;
* :func:`reconstruct` — mask a centred training-size patch with
  :func:`toolkit.masking.sample_block_mask` (ratio, block size and seed of your choice) and
  reconstruct it;
* :func:`load_segmenter` and :func:`segment` — :mod:`toolkit.predict`, the one prediction path
  (``mae3d predict``, ``mae3d evaluate``): the run's plan, sliding windows, back to the input grid.

World coordinates: a volume given as an array with a voxel ``spacing_mm`` is placed at
``index * spacing`` (napari's convention for a layer with that scale), so results come back with a
``scale`` and ``translate`` that overlay them on the input in napari.

Example:
    >>> model, cfg = load_mae("runs/mae/checkpoints/final.pt")  # doctest: +SKIP
    >>> prepared = prepare_image(image, (1.0, 1.0, 1.0), cfg)  # doctest: +SKIP
    >>> result = reconstruct(model, cfg, prepared, ratio=0.9, seed=0)  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from toolkit.errors import DataError

if TYPE_CHECKING:
    from toolkit.config import Config
    from toolkit.models import MAEModel
    from toolkit.predict import Predictor

__all__ = [
    "PreparedImage",
    "Reconstruction",
    "load_mae",
    "load_segmenter",
    "prepare_image",
    "reconstruct",
    "segment",
]

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class PreparedImage:
    """A volume preprocessed for a checkpoint.

    Attributes:
        image: (D, H, W) float32 on the checkpoint's grid (z-scored, resampled, cropped).
        spacing_mm: its voxel size.
        origin_mm: world position of voxel (0, 0, 0).
        properties: :func:`toolkit.data.preprocess.preprocess_case` properties (for inverting).
    """

    image: np.ndarray
    spacing_mm: tuple[float, float, float]
    origin_mm: tuple[float, float, float]
    properties: dict[str, Any]


@dataclass(frozen=True)
class Reconstruction:
    """A masked patch and its reconstruction; arrays are (D, H, W) float32 on the patch grid.

    Attributes:
        input: the patch of the prepared image.
        mask: full-resolution mask, 1 = visible.
        reconstruction: the network output.
        error: ``|reconstruction - input|``.
        masked_fraction: masked cells / cells of the grid mask.
        spacing_mm: voxel size (the napari ``scale``).
        origin_mm: world position of the patch's first voxel (the napari ``translate``).
        settings: ratio, block size and seed used.
    """

    input: np.ndarray
    mask: np.ndarray
    reconstruction: np.ndarray
    error: np.ndarray
    masked_fraction: float
    spacing_mm: tuple[float, float, float]
    origin_mm: tuple[float, float, float]
    settings: dict[str, Any]


def load_mae(path: PathLike, *, device: str = "cpu") -> tuple[MAEModel, Config]:
    """Build the MAE model stored in a pretraining checkpoint (eval mode).

    Args:
        path: ``RUN_DIR/checkpoints/{latest,best,final}.pt`` of a pretraining run.
        device: where the model goes.

    Raises:
        DataError: missing or corrupt file, or not a pretraining checkpoint.
    """
    from toolkit.config import from_dict
    from toolkit.engine.checkpoint import load_checkpoint
    from toolkit.models import build_mae

    state = load_checkpoint(path)
    if "network_weights" not in state or "config" not in state:
        raise DataError(f"{path}: not a pretraining checkpoint (no network_weights / config)")
    cfg = from_dict(state["config"], source=str(path))
    model = build_mae(cfg)
    model.network.load_state_dict(state["network_weights"])
    model.load_extra_state_dict(dict(state.get("extra_weights") or {}))
    return model.to(device).eval(), cfg


def load_segmenter(path: PathLike, *, device: str | None = None) -> Predictor:
    """A fine-tuning checkpoint (or run folder) ready to segment, as ``mae3d predict`` loads it.

    Args:
        path: checkpoint file or fine-tuning run folder (its ``best`` checkpoint).
        device: ``cpu``, ``cuda``, ... (default: the run's ``runtime.device``, as on the command
            line, so both give the same prediction).

    Returns:
        The :class:`toolkit.predict.Predictor`; ``.labels`` maps label values to names.

    Raises:
        DataError: missing or corrupt file, or not a fine-tuning checkpoint.
    """
    from toolkit.predict import load_predictor

    return load_predictor([path], device=device)


def _volume(image: Any, spacing_mm: Sequence[float], origin_mm: Sequence[float]) -> Any:
    from toolkit.data.io import Volume, load_volume

    if isinstance(image, str | os.PathLike):
        return load_volume(Path(image))
    arr = np.asarray(image, np.float32)
    if arr.ndim != 3:
        raise DataError(f"image: expected a (D, H, W) volume, got shape {arr.shape}")
    affine = np.diag([*map(float, spacing_mm), 1.0])
    affine[:3, 3] = [float(o) for o in origin_mm]
    return Volume(arr, affine)


def prepare_image(
    image: Any,
    spacing_mm: Sequence[float],
    cfg: Config,
    *,
    origin_mm: Sequence[float] = (0.0, 0.0, 0.0),
) -> PreparedImage:
    """Preprocess a volume the way the checkpoint's data was (``cfg.data``).

    Args:
        image: (D, H, W) array with voxel size ``spacing_mm``, or a NIfTI path (its own affine).
        spacing_mm: voxel size of an array input (ignored for paths).
        cfg: the checkpoint's config (``data.target_spacing_mm``, ``data.image_order``).
        origin_mm: world position of an array's voxel (0, 0, 0) (a napari layer's ``translate``).

    Raises:
        DataError: unreadable file, all-zero or non-finite image.
    """
    from toolkit.data.preprocess import preprocess_case

    vol = _volume(image, spacing_mm, origin_mm)
    img, _, props = preprocess_case(
        [vol],
        None,
        cfg.data.target_spacing_mm,
        cfg.data.image_order,
        cfg.data.brain_extraction,
    )
    affine = np.asarray(props["cache_affine"], np.float64)
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    return PreparedImage(
        image=img[0],
        spacing_mm=(float(spacing[0]), float(spacing[1]), float(spacing[2])),
        origin_mm=(float(affine[0, 3]), float(affine[1, 3]), float(affine[2, 3])),
        properties=props,
    )


def reconstruct(
    model: MAEModel,
    cfg: Config,
    prepared: PreparedImage,
    *,
    ratio: float | None = None,
    block_size: int | None = None,
    seed: int = 0,
    patch_size: Sequence[int] | None = None,
) -> Reconstruction:
    """Mask a patch centred on the brain and reconstruct it.

    Args:
        model: from :func:`load_mae`.
        cfg: its config (defaults for ratio, block size and patch size).
        prepared: from :func:`prepare_image`.
        ratio: masked fraction of blocks (default ``cfg.mask.ratio``).
        block_size: block edge in voxels (default ``cfg.mask.block_size``); S3D models need one
            that fits their strides (:func:`toolkit.masking.check_mask_geometry`).
        seed: mask seed.
        patch_size: (D, H, W) patch (default ``cfg.data.patch_size``).

    Raises:
        ConfigError: a block size or ratio that does not fit.
    """
    import torch

    from toolkit.data.sampling import ArrayPatchSource, centred_start
    from toolkit.masking import check_mask_geometry, sample_block_mask, upsample_mask
    from toolkit.models.resenc import encoder_strides

    ratio = cfg.mask.ratio if ratio is None else float(ratio)
    block = cfg.mask.block_size if block_size is None else int(block_size)
    size = tuple(int(s) for s in (patch_size or cfg.data.patch_size))
    if model.variant == "s3d":
        check_mask_geometry(size, block, encoder_strides(model.network))
    img = prepared.image
    nz = np.argwhere(img != 0)
    centre = ((nz.min(0) + nz.max(0)) // 2).tolist() if len(nz) else [n // 2 for n in img.shape]
    start = centred_start(centre, img.shape, size)
    patch, _ = ArrayPatchSource({"x": img[None]}).read_patch("x", start, size)
    generator = torch.Generator().manual_seed(int(seed))
    grid_mask = sample_block_mask(1, size, block, ratio=ratio, generator=generator)
    device = next(model.parameters()).device
    x = torch.from_numpy(patch[None]).to(device)
    with torch.inference_mode():
        rec = model(x, grid_mask.to(device))[0, 0].float().cpu().numpy()
    full = upsample_mask(grid_mask, size)[0, 0].numpy()
    spacing = np.asarray(prepared.spacing_mm)
    origin = np.asarray(prepared.origin_mm) + spacing * np.asarray(start)
    return Reconstruction(
        input=patch[0],
        mask=full,
        reconstruction=rec,
        error=np.abs(rec - patch[0]),
        masked_fraction=float((grid_mask == 0).float().mean()),
        spacing_mm=prepared.spacing_mm,
        origin_mm=(float(origin[0]), float(origin[1]), float(origin[2])),
        settings={"ratio": ratio, "block_size": block, "seed": int(seed), "patch_size": size},
    )


def segment(
    predictor: Predictor,
    image: Any,
    spacing_mm: Sequence[float],
    *,
    origin_mm: Sequence[float] = (0.0, 0.0, 0.0),
) -> np.ndarray:
    """Label map of a volume on its own grid (:meth:`toolkit.predict.Predictor.predict_case`).

    Args:
        predictor: from :func:`load_segmenter`.
        image: (D, H, W) array with voxel size ``spacing_mm``, or a NIfTI path.
        spacing_mm: voxel size of an array input.
        origin_mm: world position of an array's first voxel.

    Returns:
        (D, H, W) uint8 labels on the grid of ``image``.
    """
    vol = _volume(image, spacing_mm, origin_mm)
    return predictor.predict_case([vol]).labels
