"""One case: reorient, (brain-extract,) crop, z-score, resample — and the inverse mapping."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage

from toolkit.data.io import Volume, load_volume, save_volume
from toolkit.errors import DataError

PathLike = str | os.PathLike[str]

#: Bumped whenever the on-disk layout or the meaning of a stored array changes.
CACHE_FORMAT_VERSION = 1
#: Affines of channels / label may differ by this much (mm) and still count as one grid.
GRID_ATOL_MM = 1e-3


def preprocess_case(
    images: Sequence[Volume | PathLike],
    label_path: Volume | PathLike | None,
    target_spacing_mm: Sequence[float],
    image_order: int = 3,
    brain_extraction: str = "none",
) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """Reorient, crop to non-zero, z-score and resample one case (see the module docstring).

    Args:
        images: one :class:`~toolkit.data.io.Volume` or NIfTI path per channel, all on one grid.
        label_path: label map (Volume or path) on the same grid, integer values 0..255, or None.
        target_spacing_mm: (3,) voxel spacing of the output grid in mm, canonical (RAS) axis order.
        image_order: spline order for images, 0..5 (3 = cubic); labels always use nearest neighbour.
        brain_extraction: ``none`` or a :data:`~toolkit.data.brain_mask.BRAIN_EXTRACTION_METHODS`
            method: voxels outside the brain mask of the first channel are set to 0 before the
            crop, so the crop, the z-score region and the cache are the brain's.

    Returns:
        ``image`` (C, D, H, W) float32 z-scored on the cache grid; ``label`` (D, H, W) uint8 or
        None;
        ``properties``: a JSON-serialisable dict with the original grid (``original_shape``,
        ``original_affine``, ``original_spacing_mm``), the ``orientation`` transform (nibabel ornt),
        ``canonical_shape``, ``crop_bbox`` (``[[lo, hi)] * 3`` in the canonical grid),
        ``shape_after_crop``, ``resampled_shape``, ``target_spacing_mm``, ``resampled_spacing_mm``,
        ``cache_affine`` (voxel -> mm of the cache grid), ``intensity`` (per channel: mean, std,
        percentile_00_5, percentile_99_5, min, max, num_voxels of the raw region) and
        ``label_values`` (values present in the label, or None), ``brain_extraction`` (the
        method) and ``brain_mask_voxels`` (voxels kept by it; None without extraction).

    Raises:
        DataError: unreadable file, channels or label on different grids, non-finite intensities,
            an all-zero image, or a label with non-integer / out-of-range values.
        ConfigError: unknown ``brain_extraction``.
    """
    from toolkit.data.brain_mask import check_brain_extraction, extract_brain_mask

    check_brain_extraction(brain_extraction, "brain_extraction")
    target = _check_spacing(target_spacing_mm)
    if not 0 <= int(image_order) <= 5:
        raise DataError(f"image_order must be in 0..5 (spline order), got {image_order!r}")
    if not images:
        raise DataError("preprocess_case needs at least one image")
    vols = [v if isinstance(v, Volume) else load_volume(v) for v in images]
    ref = vols[0]
    names = [_name(v, i) for i, v in enumerate(vols)]
    for v, name in zip(vols[1:], names[1:], strict=True):
        _check_same_grid(v, ref, name, names[0])
    for v, name in zip(vols, names, strict=True):
        if not np.all(np.isfinite(v.array)):
            raise DataError(f"{name}: image contains NaN or infinite values")

    label_vol = None
    if label_path is not None:
        label_vol = (
            label_path
            if isinstance(label_path, Volume)
            else load_volume(label_path, dtype=np.float32)
        )
        _check_same_grid(label_vol, ref, _name(label_vol, "label"), names[0])

    # 1. Reorient to the closest canonical (RAS+) voxel order.
    original_shape = tuple(int(s) for s in ref.array.shape)
    ornt = nib.orientations.io_orientation(ref.affine)
    canonical_affine = ref.affine @ nib.orientations.inv_ornt_aff(ornt, original_shape)
    stack = np.stack([nib.orientations.apply_orientation(v.array, ornt) for v in vols]).astype(
        np.float32, copy=False
    )
    canonical_shape = tuple(int(s) for s in stack.shape[1:])

    # 1b. Optional brain extraction: everything outside the brain becomes background.
    brain_voxels = None
    if brain_extraction != "none":
        spacing = np.sqrt((canonical_affine[:3, :3] ** 2).sum(axis=0))
        brain = extract_brain_mask(stack[0], tuple(spacing), brain_extraction)
        stack[:, ~brain] = 0.0
        brain_voxels = int(brain.sum())

    # 2. Crop to the non-zero bounding box of the union of channels.
    nonzero = np.any(stack != 0, axis=0)
    if not nonzero.any():
        raise DataError(f"{', '.join(names)}: image is zero everywhere")
    bbox = _bounding_box(nonzero)
    crop = tuple(slice(lo, hi) for lo, hi in bbox)
    stack = stack[(slice(None), *crop)]
    region = ndimage.binary_fill_holes(nonzero[crop])
    cropped_shape = tuple(int(s) for s in stack.shape[1:])

    label = None
    label_values: list[int] | None = None
    if label_vol is not None:
        label = _as_label(label_vol)
        label = nib.orientations.apply_orientation(label, ornt)[crop]
        label_values = [int(v) for v in np.unique(label)]

    # 3. Z-score per channel on the region; outside the region -> 0 (the region mean).
    stats = []
    out = np.zeros_like(stack)
    for c in range(stack.shape[0]):
        values = stack[c][region]
        mean, std = float(values.mean(dtype=np.float64)), float(values.std(dtype=np.float64))
        p_lo, p_hi = np.percentile(values, [0.5, 99.5])
        stats.append(
            {
                "mean": mean,
                "std": std,
                "percentile_00_5": float(p_lo),
                "percentile_99_5": float(p_hi),
                "min": float(values.min()),
                "max": float(values.max()),
                "num_voxels": int(values.size),
            }
        )
        out[c][region] = (values - mean) / max(std, 1e-8)
    stack = out

    # 4. Resample to the target spacing (edge-aligned).
    canonical_spacing = np.sqrt((canonical_affine[:3, :3] ** 2).sum(axis=0))
    new_shape = tuple(
        max(1, int(round(n * s / t)))
        for n, s, t in zip(cropped_shape, canonical_spacing, target, strict=True)
    )
    if new_shape != cropped_shape:
        stack = np.stack([_resize(ch, new_shape, int(image_order)) for ch in stack])
        region_r = _resize(region.astype(np.uint8), new_shape, 0).astype(bool)
        stack[:, ~region_r] = 0.0
        if label is not None:
            label = _resize(label, new_shape, 0)
    image = np.ascontiguousarray(stack, dtype=np.float32)
    if label is not None:
        label = np.ascontiguousarray(label, dtype=np.uint8)

    factors = np.asarray(cropped_shape, float) / np.asarray(new_shape, float)
    crop_affine = canonical_affine @ _translation([lo for lo, _ in bbox])
    zoom_affine = np.eye(4)
    zoom_affine[:3, :3] = np.diag(factors)
    zoom_affine[:3, 3] = (factors - 1.0) / 2.0  # edge-aligned: voxel centres move by half a step
    properties: dict[str, Any] = {
        "format_version": CACHE_FORMAT_VERSION,
        "source_files": {
            "images": [str(v.path) if v.path else None for v in vols],
            "label": str(label_vol.path) if label_vol is not None and label_vol.path else None,
        },
        "original_shape": list(original_shape),
        "original_affine": np.asarray(ref.affine, float).tolist(),
        "original_spacing_mm": list(ref.spacing_mm),
        "orientation": ornt.astype(int).tolist(),
        "canonical_shape": list(canonical_shape),
        "canonical_affine": canonical_affine.tolist(),
        "crop_bbox": [[int(lo), int(hi)] for lo, hi in bbox],
        "shape_after_crop": list(cropped_shape),
        "resampled_shape": list(new_shape),
        "target_spacing_mm": [float(t) for t in target],
        "resampled_spacing_mm": [float(x) for x in canonical_spacing * factors],
        "cache_affine": (crop_affine @ zoom_affine).tolist(),
        "image_order": int(image_order),
        "label_order": 0,
        "normalization": "zscore_nonzero_region",
        "brain_extraction": brain_extraction,
        "brain_mask_voxels": brain_voxels,
        "intensity": stats,
        "label_values": label_values,
    }
    return image, label, properties


def invert_to_original(
    array: np.ndarray, properties: Mapping[str, Any], *, is_label: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Map an array on the cache grid back onto the original voxel grid of the case.

    Resamples to the cropped canonical shape (nearest neighbour for labels, linear otherwise), pads
    the crop back with 0 and undoes the canonical reorientation.

    Args:
        array: ``(D, H, W)`` label map if ``is_label``, else ``(C, D, H, W)`` float array (e.g.
            softmax probabilities), on the cache grid (``properties["resampled_shape"]``).
        properties: the dict returned by :func:`preprocess_case` (or ``Cache.properties``).
        is_label: integer label map (nearest neighbour, uint8 output) or float channels (linear,
            float32 output). Outside the crop every channel is 0; a caller that needs probabilities
            summing to one there sets its background channel to 1 outside ``crop_bbox``.

    Returns:
        ``(array_on_original_grid, original_affine)``: shape ``original_shape`` (labels) or
        ``(C, *original_shape)``, and the original (4, 4) affine.

    Raises:
        DataError: ``array`` does not have the cache-grid shape of this case.
    """
    cache_shape = tuple(int(s) for s in properties["resampled_shape"])
    arr = np.asarray(array)
    expected = cache_shape if is_label else ("C", *cache_shape)
    if (is_label and arr.shape != cache_shape) or (
        not is_label and (arr.ndim != 4 or arr.shape[1:] != cache_shape)
    ):
        raise DataError(
            f"invert_to_original: array shape {arr.shape} does not match the cache grid {expected}"
        )
    cropped_shape = tuple(int(s) for s in properties["shape_after_crop"])
    canonical_shape = tuple(int(s) for s in properties["canonical_shape"])
    crop = tuple(slice(lo, hi) for lo, hi in properties["crop_bbox"])
    ornt = np.asarray(properties["orientation"], dtype=float)
    inverse = _invert_ornt(ornt)

    if is_label:
        if not np.issubdtype(arr.dtype, np.integer) and not np.issubdtype(arr.dtype, np.bool_):
            arr = np.rint(arr)
        small = arr.astype(np.uint8) if arr.dtype != np.uint8 else arr
        if cropped_shape != cache_shape:
            small = _resize(small, cropped_shape, 0)
        full = np.zeros(canonical_shape, dtype=np.uint8)
        full[crop] = small
        out = nib.orientations.apply_orientation(full, inverse)
    else:
        channels = []
        for ch in arr.astype(np.float32, copy=False):
            small_f = ch if cropped_shape == cache_shape else _resize(ch, cropped_shape, 1)
            full_f = np.zeros(canonical_shape, dtype=np.float32)
            full_f[crop] = small_f
            channels.append(nib.orientations.apply_orientation(full_f, inverse))
        out = np.stack(channels)
    original_affine = np.asarray(properties["original_affine"], dtype=np.float64)
    return np.ascontiguousarray(out), original_affine


def write_prediction_nifti(
    array: np.ndarray, properties: Mapping[str, Any], path: PathLike, *, is_label: bool = True
) -> Path:
    """Invert a cache-grid prediction (see :func:`invert_to_original`) and save it as NIfTI.

    Args:
        array: ``(D, H, W)`` label map, or ``(C, D, H, W)`` float channels with ``is_label=False``
            (written as a 4D (D, H, W, C) float32 image; a single channel is written 3D).
        properties: the case's properties.
        path: output ``.nii`` / ``.nii.gz`` file (written atomically).

    Returns:
        The written path.
    """
    out, affine = invert_to_original(array, properties, is_label=is_label)
    if not is_label:
        out = out[0] if out.shape[0] == 1 else np.moveaxis(out, 0, -1)
    return save_volume(out, affine, path, dtype=np.uint8 if is_label else np.float32)


# --------------------------------------------------------------------------------------------------
# Helpers


def _check_spacing(spacing: Sequence[float]) -> tuple[float, float, float]:
    values = tuple(float(s) for s in spacing)
    if len(values) != 3 or not all(np.isfinite(v) and v > 0 for v in values):
        raise DataError(f"target_spacing_mm must be 3 positive numbers, got {tuple(spacing)!r}")
    return values[0], values[1], values[2]


def _name(vol: Volume, fallback: int | str) -> str:
    return str(vol.path) if vol.path is not None else f"<array {fallback}>"


def _check_same_grid(vol: Volume, ref: Volume, name: str, ref_name: str) -> None:
    if vol.array.shape != ref.array.shape:
        raise DataError(
            f"{name}: shape {vol.array.shape} differs from {ref_name} {ref.array.shape}; "
            "all channels and the label must share one voxel grid"
        )
    if not np.allclose(vol.affine, ref.affine, atol=GRID_ATOL_MM):
        raise DataError(
            f"{name}: affine differs from {ref_name}; all channels and the label must share one "
            "voxel grid (register / resample them first)"
        )


def _as_label(vol: Volume) -> np.ndarray:
    arr = vol.array
    name = _name(vol, "label")
    if not np.all(np.isfinite(arr)):
        raise DataError(f"{name}: label map contains NaN or infinite values")
    rounded = np.rint(arr)
    if np.any(np.abs(arr - rounded) > 1e-3):
        raise DataError(f"{name}: label map has non-integer values (is it an image?)")
    if rounded.min() < 0 or rounded.max() > 255:
        raise DataError(
            f"{name}: label values must be in 0..255, got {rounded.min():g}..{rounded.max():g}"
        )
    return rounded.astype(np.uint8)


def _bounding_box(mask: np.ndarray) -> list[tuple[int, int]]:
    bbox = []
    for axis in range(mask.ndim):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        idx = np.flatnonzero(mask.any(axis=others))
        bbox.append((int(idx[0]), int(idx[-1]) + 1))
    return bbox


def _resize(arr: np.ndarray, shape: Sequence[int], order: int) -> np.ndarray:
    """Edge-aligned resize of a 3D array to ``shape`` (``scipy.ndimage.zoom(grid_mode=True)``)."""
    if tuple(arr.shape) == tuple(shape):
        return arr.copy()
    zoom = [n / o for n, o in zip(shape, arr.shape, strict=True)]
    out_dtype = arr.dtype if order == 0 else np.float32
    out = ndimage.zoom(arr, zoom, order=order, mode="nearest", grid_mode=True, output=out_dtype)
    if tuple(out.shape) != tuple(shape):  # zoom rounds shape * factor; guard float round-off
        raise AssertionError(f"resize produced {out.shape}, wanted {tuple(shape)}")
    return out


def _translation(offset: Sequence[int]) -> np.ndarray:
    t = np.eye(4)
    t[:3, 3] = offset
    return t


def _invert_ornt(ornt: np.ndarray) -> np.ndarray:
    """The nibabel orientation transform that undoes ``apply_orientation(x, ornt)``."""
    inverse = np.zeros_like(ornt)
    for axis, (target, flip) in enumerate(ornt):
        inverse[int(target)] = (axis, flip)
    return inverse
