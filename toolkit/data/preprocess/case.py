"""Preprocessing into an invertible patch cache: reorient, crop, z-score, resample.

One case goes through four steps (the nnU-Net v2 order; see RECIPE.md "Data and input"):

1. **Reorient** every channel (and the label) to the closest canonical RAS+ voxel order
   (``nibabel.orientations.io_orientation``, the transform behind ``as_closest_canonical``).
2. **Crop** to the bounding box of the voxels that are non-zero in any channel.
3. **Z-score** each channel with the mean and standard deviation of the *region*: the union of
   non-zero voxels over channels with holes filled (nnU-Net's ``create_nonzero_mask``). Voxels
   outside the region are set to 0 after normalisation, so the background equals the region mean.
   This is nnU-Net's ``use_mask_for_norm`` applied unconditionally (nnU-Net only turns it on when
   cropping shrank the image by >= 25 %): brain MRI here is skull-stripped or zero-padded, and the
   exact-zero background must not drag the statistics. Normalising *before* resampling keeps the
   statistics on original voxels and the region exact (nnU-Net does the same for that reason).
4. **Resample** to the target spacing with ``scipy.ndimage.zoom(grid_mode=True)``: voxel *edges* of
   the cropped box stay aligned, so the cache grid covers exactly the cropped field of view. The
   new shape is ``round(shape * spacing / target)``; the effective spacing
   (``resampled_spacing_mm``) can differ from the target by under half a voxel over the box. Images
   use spline order ``image_order`` (3 = cubic), labels nearest neighbour. A grid that already has
   the target shape is copied, not interpolated, so same-spacing round trips are exact. After
   resampling, the region mask (nearest neighbour) zeroes the spline overshoot outside the region
   again.

Everything needed to go back is kept in a JSON-serialisable ``properties`` dict;
:func:`invert_to_original` undoes resampling, crop and reorientation so predictions land exactly on
the original voxel grid.

Cache layout written by :func:`preprocess_manifest` (read by :mod:`toolkit.data.cache`)::

    CACHE/plan.json                    dataset, settings, fingerprint, case list (written last)
    CACHE/cases/<dir>/image.npy        (C, D, H, W) float32, uncompressed (memory-mapped reads)
    CACHE/cases/<dir>/label.npy        (D, H, W) uint8, labelled cases only
    CACHE/cases/<dir>/foreground.npz   label_<v>: (N, 3) int32 voxel coordinates, labelled only
    CACHE/cases/<dir>/properties.json  the properties of :func:`preprocess_case`
    CACHE/cases/<dir>/done.json        file sizes + settings hash; written last, inside a temp dir
                                       that is renamed into place, so a case is complete or absent

Example:
    >>> import numpy as np
    >>> from toolkit.data.io import Volume
    >>> img = np.zeros((8, 8, 8), np.float32); img[2:6, 2:6, 2:6] = np.arange(64).reshape(4, 4, 4)
    >>> image, label, props = preprocess_case([Volume(img, np.eye(4))], None, (2.0, 2.0, 2.0))
    >>> image.shape, props["crop_bbox"]
    ((1, 2, 2, 2), [[2, 6], [2, 6], [2, 6]])
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import os
import re
import shutil
import time
import uuid
import zlib
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage

from toolkit.data.io import Volume, load_volume, save_volume
from toolkit.data.manifest import Manifest, load_manifest
from toolkit.errors import DataError, ToolkitError

PathLike = str | os.PathLike[str]

#: Bumped whenever the on-disk layout or the meaning of a stored array changes.
CACHE_FORMAT_VERSION = 1
#: Per label value, how many foreground voxel coordinates are stored (nnU-Net stores 10 000).
NUM_FOREGROUND_SAMPLES = 10_000
#: ...but never fewer than this fraction of the label's voxels (nnU-Net: 1 %).
MIN_FOREGROUND_COVERAGE = 0.01
#: Affines of channels / label may differ by this much (mm) and still count as one grid.
GRID_ATOL_MM = 1e-3

PLAN_FILE = "plan.json"
CASES_DIR = "cases"
DONE_FILE = "done.json"
TMP_PREFIX = ".tmp-"
LOCK_FILE = ".preprocess.lock"
IMAGE_FILE = "image.npy"
LABEL_FILE = "label.npy"
FOREGROUND_FILE = "foreground.npz"
PROPERTIES_FILE = "properties.json"


# --------------------------------------------------------------------------------------------------
# One case


def preprocess_case(
    images: Sequence[Volume | PathLike],
    label_path: Volume | PathLike | None,
    target_spacing_mm: Sequence[float],
    image_order: int = 3,
) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """Reorient, crop to non-zero, z-score and resample one case (see the module docstring).

    Args:
        images: one :class:`~toolkit.data.io.Volume` or NIfTI path per channel, all on one grid.
        label_path: label map (Volume or path) on the same grid, integer values 0..255, or None.
        target_spacing_mm: (3,) voxel spacing of the output grid in mm, canonical (RAS) axis order.
        image_order: spline order for images, 0..5 (3 = cubic); labels always use nearest neighbour.

    Returns:
        ``image`` (C, D, H, W) float32 z-scored on the cache grid; ``label`` (D, H, W) uint8 or
        None;
        ``properties``: a JSON-serialisable dict with the original grid (``original_shape``,
        ``original_affine``, ``original_spacing_mm``), the ``orientation`` transform (nibabel ornt),
        ``canonical_shape``, ``crop_bbox`` (``[[lo, hi)] * 3`` in the canonical grid),
        ``shape_after_crop``, ``resampled_shape``, ``target_spacing_mm``, ``resampled_spacing_mm``,
        ``cache_affine`` (voxel -> mm of the cache grid), ``intensity`` (per channel: mean, std,
        percentile_00_5, percentile_99_5, min, max, num_voxels of the raw region) and
        ``label_values`` (values present in the label, or None).

    Raises:
        DataError: unreadable file, channels or label on different grids, non-finite intensities,
            an all-zero image, or a label with non-integer / out-of-range values.
    """
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
# A whole manifest


@dataclass(frozen=True)
class Plan:
    """What :func:`preprocess_manifest` did; ``to_dict()`` is the content of ``plan.json``.

    Attributes:
        dataset: manifest name.
        manifest: path of the manifest file (or "" for an in-memory manifest).
        channels: modality names in channel order.
        labels: label value -> name, or None for an unlabelled set.
        target_spacing_mm: (3,) requested spacing of the cache grid.
        image_order: spline order used for images (labels: nearest neighbour).
        cases: one dict per case: ``id``, ``dir`` (folder under ``cases/``), ``subject``,
            ``session``, ``split``, ``fold``, ``shape`` (cache grid), ``labelled``.
        fingerprint: per-case original spacing and shape, medians, pooled intensity statistics per
            channel and label statistics.
        toolkit_version: version of the toolkit that wrote the cache.
        last_run: ``processed``, ``reused`` and ``seconds`` of the run that wrote this plan.
    """

    dataset: str
    manifest: str
    channels: tuple[str, ...]
    labels: dict[int, str] | None
    target_spacing_mm: tuple[float, float, float]
    image_order: int
    cases: tuple[dict[str, Any], ...]
    fingerprint: dict[str, Any]
    toolkit_version: str
    last_run: dict[str, Any] = field(default_factory=dict)
    normalization: str = "zscore_nonzero_region"
    label_order: int = 0
    format_version: int = CACHE_FORMAT_VERSION

    @property
    def case_ids(self) -> list[str]:
        return [c["id"] for c in self.cases]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict (label keys become strings in JSON)."""
        return {
            "format_version": self.format_version,
            "dataset": self.dataset,
            "manifest": self.manifest,
            "channels": list(self.channels),
            "labels": None if self.labels is None else {int(k): v for k, v in self.labels.items()},
            "target_spacing_mm": list(self.target_spacing_mm),
            "image_order": self.image_order,
            "label_order": self.label_order,
            "normalization": self.normalization,
            "toolkit_version": self.toolkit_version,
            "last_run": dict(self.last_run),
            "fingerprint": self.fingerprint,
            "cases": [dict(c) for c in self.cases],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Plan:
        """Inverse of :meth:`to_dict` (accepts the string label keys JSON produces)."""
        labels = data.get("labels")
        return cls(
            dataset=str(data["dataset"]),
            manifest=str(data.get("manifest", "")),
            channels=tuple(data["channels"]),
            labels=None if labels is None else {int(k): str(v) for k, v in labels.items()},
            target_spacing_mm=_triple(data["target_spacing_mm"]),
            image_order=int(data["image_order"]),
            cases=tuple(dict(c) for c in data["cases"]),
            fingerprint=dict(data.get("fingerprint", {})),
            toolkit_version=str(data.get("toolkit_version", "")),
            last_run=dict(data.get("last_run", {})),
            normalization=str(data.get("normalization", "zscore_nonzero_region")),
            label_order=int(data.get("label_order", 0)),
            format_version=int(data.get("format_version", CACHE_FORMAT_VERSION)),
        )


def preprocess_manifest(
    manifest: Manifest | PathLike,
    out_dir: PathLike,
    *,
    target_spacing_mm: Sequence[float] = (1.0, 1.0, 1.0),
    image_order: int = 3,
    workers: int = 2,
    progress: bool = True,
) -> Plan:
    """Preprocess every case of a manifest into a patch cache, resuming where a run stopped.

    Cases run in ``workers`` processes (a ``spawn`` pool, safe next to torch and CUDA; 0 or 1 runs
    in this process). A case is written into ``cases/.tmp-*`` and renamed into place with its
    ``done.json`` marker, so a killed run never leaves a case that reads as valid; leftover temp
    folders are discarded on the next run. Cases whose marker matches the current settings and
    input files (path, size, mtime) are reused untouched. ``plan.json`` is removed at the start and
    written only when every case succeeded, so an interrupted or failed run leaves no readable
    cache.

    Args:
        manifest: a :class:`~toolkit.data.manifest.Manifest` or the path of its YAML file.
        out_dir: cache folder (created if needed).
        target_spacing_mm: (3,) spacing of the cache grid in mm (paper: 1 mm isotropic).
        image_order: spline order for images (3 = cubic).
        workers: number of worker processes.
        progress: show a tqdm progress bar.

    Returns:
        The :class:`Plan` also written to ``out_dir/plan.json``.

    Raises:
        DataError: one or more cases failed (the message lists each case with its file and
            problem; the other cases stay cached and valid), or label values outside the manifest's
            ``labels``.
        ToolkitError: another preprocess holds the cache lock, or a worker process died.
    """
    from tqdm.auto import tqdm

    import toolkit

    m = manifest if isinstance(manifest, Manifest) else load_manifest(manifest)
    target = _check_spacing(target_spacing_mm)
    if not 0 <= int(image_order) <= 5:
        raise DataError(f"image_order must be in 0..5 (spline order), got {image_order!r}")
    out = Path(out_dir)
    cases_root = out / CASES_DIR
    cases_root.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    with _cache_lock(out):
        (out / PLAN_FILE).unlink(missing_ok=True)
        for stale in cases_root.glob(TMP_PREFIX + "*"):
            shutil.rmtree(stale, ignore_errors=True)

        dirs = _case_dirs(m.case_ids)
        jobs: list[dict[str, Any]] = []
        reused: list[str] = []
        failures: list[tuple[str, str]] = []
        for case in m.cases:
            image_paths = [str(p) for p in m.image_paths(case)]
            label = m.label_path(case)
            job: dict[str, Any] = {
                "case_id": case.case_id,
                "dir": str(cases_root / dirs[case.case_id]),
                "images": image_paths,
                "label": None if label is None else str(label),
                "target": list(target),
                "image_order": int(image_order),
                "labels": None if m.labels is None else sorted(int(k) for k in m.labels),
            }
            try:
                job["settings_hash"] = _settings_hash(job)
            except DataError as exc:
                failures.append((case.case_id, str(exc)))
                continue
            if _case_is_valid(Path(job["dir"]), job["settings_hash"]):
                reused.append(case.case_id)
            else:
                jobs.append(job)

        bar = tqdm(
            total=len(m.cases), desc=f"preprocess {m.name}", unit="case", disable=not progress
        )
        bar.update(len(reused))
        for case_id, error in _run_jobs(jobs, workers):
            if error is not None:
                failures.append((case_id, error))
            bar.update(1)
        bar.close()

        if failures:
            order = {cid: i for i, cid in enumerate(m.case_ids)}
            failures.sort(key=lambda f: order[f[0]])
            lines = "\n".join(f"  case {cid}: {msg}" for cid, msg in failures)
            raise DataError(
                f"{m.name}: {len(failures)} of {len(m.cases)} cases failed to preprocess "
                f"(the other cases are cached; fix the files and rerun to resume):\n{lines}"
            )

        entries, props_by_case = [], {}
        for case in m.cases:
            case_dir = cases_root / dirs[case.case_id]
            props = json.loads((case_dir / PROPERTIES_FILE).read_text())
            props_by_case[case.case_id] = props
            entries.append(
                {
                    "id": case.case_id,
                    "dir": dirs[case.case_id],
                    "subject": case.subject,
                    "session": case.session,
                    "split": case.split,
                    "fold": case.fold,
                    "shape": props["resampled_shape"],
                    "labelled": props["label_values"] is not None,
                }
            )
        plan = Plan(
            dataset=m.name,
            manifest=str(m.path) if m.path else "",
            channels=tuple(m.channels),
            labels=None if m.labels is None else dict(m.labels),
            target_spacing_mm=target,
            image_order=int(image_order),
            cases=tuple(entries),
            fingerprint=_fingerprint(props_by_case, m.channels),
            toolkit_version=toolkit.__version__,
            last_run={
                "processed": len(jobs),
                "reused": len(reused),
                "seconds": round(time.perf_counter() - started, 3),
            },
        )
        _write_json_atomic(out / PLAN_FILE, plan.to_dict())
    return plan


# --------------------------------------------------------------------------------------------------
# Worker side


def _process_case_job(job: dict[str, Any]) -> tuple[str, str | None]:
    """Preprocess one case into its folder. Returns (case_id, error message or None)."""
    case_id = job["case_id"]
    final = Path(job["dir"])
    tmp = final.parent / f"{TMP_PREFIX}{final.name}-{uuid.uuid4().hex[:8]}"
    try:
        image, label, props = preprocess_case(
            job["images"], job["label"], job["target"], job["image_order"]
        )
        allowed = job["labels"]
        if label is not None and allowed is not None:
            unknown = sorted(set(props["label_values"]) - set(allowed))
            if unknown:
                raise DataError(
                    f"{job['label']}: label values {unknown} are not in the manifest's labels "
                    f"{allowed}"
                )
        props["case_id"] = case_id
        tmp.mkdir(parents=True)
        np.save(tmp / IMAGE_FILE, image)
        files = [IMAGE_FILE]
        if label is not None:
            np.save(tmp / LABEL_FILE, label)
            seed = zlib.crc32(case_id.encode())
            locations = sample_foreground_locations(label, seed=seed)
            arrays: dict[str, Any] = {f"label_{v}": loc for v, loc in locations.items()}
            np.savez(tmp / FOREGROUND_FILE, **arrays)
            props["foreground_samples"] = {str(v): int(len(loc)) for v, loc in locations.items()}
            files += [LABEL_FILE, FOREGROUND_FILE]
        (tmp / PROPERTIES_FILE).write_text(json.dumps(props, indent=1))
        files.append(PROPERTIES_FILE)
        done = {
            "case_id": case_id,
            "settings_hash": job["settings_hash"],
            "files": {name: (tmp / name).stat().st_size for name in files},
            "properties_crc32": zlib.crc32((tmp / PROPERTIES_FILE).read_bytes()),
        }
        _write_json_atomic(tmp / DONE_FILE, done)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        return case_id, None
    except ToolkitError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        return case_id, str(exc)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _run_jobs(jobs: list[dict[str, Any]], workers: int) -> Iterator[tuple[str, str | None]]:
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            yield _process_case_job(job)
        return
    # spawn: workers must not inherit torch/CUDA or thread-pool state from the parent.
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=ctx) as pool:
        futures: dict[Future[tuple[str, str | None]], str] = {
            pool.submit(_process_case_job, job): job["case_id"] for job in jobs
        }
        for fut in as_completed(futures):
            try:
                yield fut.result()
            except BrokenProcessPool:
                raise ToolkitError(
                    f"a preprocessing worker died (out of memory?) while working on case "
                    f"{futures[fut]}; finished cases are kept - rerun with fewer --workers"
                ) from None


def sample_foreground_locations(
    label: np.ndarray,
    *,
    num_samples: int = NUM_FOREGROUND_SAMPLES,
    min_coverage: float = MIN_FOREGROUND_COVERAGE,
    seed: int = 0,
) -> dict[int, np.ndarray]:
    """Sample voxel coordinates of every non-zero label value (for foreground oversampling).

    Args:
        label: (D, H, W) integer label map.
        num_samples: coordinates kept per value (all of them if the value has fewer voxels).
        min_coverage: keep at least this fraction of the value's voxels.
        seed: seed of the sampling generator (preprocessing uses a hash of the case id).

    Returns:
        value -> (N, 3) int32 array of (d, h, w) coordinates, sorted in C order.
    """
    rng = np.random.default_rng(seed)
    flat = label.ravel()
    out: dict[int, np.ndarray] = {}
    for value in np.unique(flat):
        if value == 0:
            continue
        idx = np.flatnonzero(flat == value)
        n = max(min(num_samples, idx.size), int(np.ceil(idx.size * min_coverage)))
        if n < idx.size:
            idx = np.sort(rng.choice(idx, size=n, replace=False))
        out[int(value)] = np.stack(np.unravel_index(idx, label.shape), axis=1).astype(np.int32)
    return out


# --------------------------------------------------------------------------------------------------
# Helpers


def _check_spacing(spacing: Sequence[float]) -> tuple[float, float, float]:
    values = tuple(float(s) for s in spacing)
    if len(values) != 3 or not all(np.isfinite(v) and v > 0 for v in values):
        raise DataError(f"target_spacing_mm must be 3 positive numbers, got {tuple(spacing)!r}")
    return values[0], values[1], values[2]


def _triple(values: Sequence[Any]) -> tuple[float, float, float]:
    return float(values[0]), float(values[1]), float(values[2])


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


_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _case_dirs(case_ids: Sequence[str]) -> dict[str, str]:
    """A distinct, filesystem-safe folder name per case id."""
    used: set[str] = set()
    out = {}
    for cid in case_ids:
        base = _SAFE.sub("_", cid).lstrip(".") or "case"
        name, k = base, 1
        while name.lower() in used:  # lower(): case-insensitive file systems
            k += 1
            name = f"{base}-{k}"
        used.add(name.lower())
        out[cid] = name
    return out


def _settings_hash(job: Mapping[str, Any]) -> str:
    """Hash of everything a cached case depends on; a change means the case is redone."""
    inputs = []
    for p in [*job["images"], *([job["label"]] if job["label"] else [])]:
        try:
            st = os.stat(p)
        except FileNotFoundError:
            raise DataError(f"{p}: file not found") from None
        except OSError as exc:
            raise DataError(f"{p}: cannot read ({exc.strerror})") from None
        inputs.append([str(Path(p).resolve()), st.st_size, st.st_mtime_ns])
    key = {
        "format_version": CACHE_FORMAT_VERSION,
        "target": job["target"],
        "image_order": job["image_order"],
        "labels": job["labels"],
        "num_foreground_samples": NUM_FOREGROUND_SAMPLES,
        "inputs": inputs,
    }
    return hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()


def read_done_marker(case_dir: Path) -> dict[str, Any] | None:
    """The parsed ``done.json`` of a case folder if every file it lists has its recorded size."""
    try:
        done = json.loads((case_dir / DONE_FILE).read_text())
        files = done["files"]
        for name, size in files.items():
            if (case_dir / name).stat().st_size != int(size):
                return None
        if zlib.crc32((case_dir / PROPERTIES_FILE).read_bytes()) != done["properties_crc32"]:
            return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return done if isinstance(done, dict) else None


def _case_is_valid(case_dir: Path, settings_hash: str) -> bool:
    done = read_done_marker(case_dir)
    return done is not None and done.get("settings_hash") == settings_hash


def _write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


@contextlib.contextmanager
def _cache_lock(out: Path) -> Iterator[None]:
    """Refuse a second concurrent preprocess of the same cache (advisory ``flock``, POSIX)."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory lock, one writer is the user's responsibility
        yield
        return
    with open(out / LOCK_FILE, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ToolkitError(
                f"{out}: another 'mae3d preprocess' is writing this cache (lock {LOCK_FILE})"
            ) from None
        except OSError:  # file systems without flock support (some NFS): proceed unlocked
            yield
            return
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _fingerprint(props: Mapping[str, Mapping[str, Any]], channels: Sequence[str]) -> dict[str, Any]:
    """Dataset statistics from the per-case properties (nnU-Net's dataset fingerprint, slimmed)."""
    spacing = {cid: p["original_spacing_mm"] for cid, p in props.items()}
    shapes = {cid: p["original_shape"] for cid, p in props.items()}
    intensity = {}
    for c, name in enumerate(channels):
        per_case = [p["intensity"][c] for p in props.values()]
        n = np.array([s["num_voxels"] for s in per_case], float)
        means = np.array([s["mean"] for s in per_case])
        stds = np.array([s["std"] for s in per_case])
        mean = float((n * means).sum() / n.sum())
        # pooled variance: E[x^2] - E[x]^2 over all region voxels of all cases
        second = float((n * (stds**2 + means**2)).sum() / n.sum())
        intensity[name] = {
            "mean": mean,
            "std": float(np.sqrt(max(second - mean**2, 0.0))),
            "percentile_00_5": float(np.median([s["percentile_00_5"] for s in per_case])),
            "percentile_99_5": float(np.median([s["percentile_99_5"] for s in per_case])),
            "min": float(min(s["min"] for s in per_case)),
            "max": float(max(s["max"] for s in per_case)),
        }
    label_cases: dict[str, int] = {}
    for p in props.values():
        for v in p["label_values"] or []:
            label_cases[str(v)] = label_cases.get(str(v), 0) + 1
    return {
        "num_cases": len(props),
        "spacing_mm": spacing,
        "shape": shapes,
        "median_spacing_mm": np.median(list(spacing.values()), axis=0).tolist(),
        "median_shape": np.median(list(shapes.values()), axis=0).tolist(),
        "median_resampled_shape": np.median(
            [p["resampled_shape"] for p in props.values()], axis=0
        ).tolist(),
        "intensity": intensity,
        "label_cases": label_cases,
    }


def ensure_cache(
    manifest: Manifest,
    root: Path,
    *,
    target_spacing_mm: Sequence[float],
    image_order: int,
    workers: int = 0,
    progress: bool = False,
) -> Path:
    """Preprocess ``manifest`` into ``root`` unless a complete cache of it is already there.

    A cache whose ``plan.json`` lists exactly the manifest's cases with the same spacing and
    spline order is used untouched: preprocessing removes ``plan.json`` while it works, which
    would break other runs reading the same cache at that moment (parallel sweeps, label
    efficiency). Edited image files with an unchanged case list need ``mae3d preprocess``.

    Args:
        manifest: a :class:`~toolkit.data.manifest.Manifest`.
        root: the cache folder.
        target_spacing_mm: (3,) cache spacing.
        image_order: spline order of images.
        workers: preprocessing processes.
        progress: progress bar.
    """
    plan_file = root / "plan.json"
    if plan_file.is_file():
        try:
            plan = json.loads(plan_file.read_text())
        except (OSError, ValueError):
            plan = {}
        same = (
            sorted(c.get("id") for c in plan.get("cases", [])) == sorted(manifest.case_ids)
            and [float(v) for v in plan.get("target_spacing_mm", [])]
            == [float(v) for v in target_spacing_mm]
            and int(plan.get("image_order", -1)) == int(image_order)
        )
        if same:
            return root
    preprocess_manifest(
        manifest,
        root,
        target_spacing_mm=target_spacing_mm,
        image_order=image_order,
        workers=workers,
        progress=progress,
    )
    return root
