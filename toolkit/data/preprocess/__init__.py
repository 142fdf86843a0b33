"""Preprocessing into an invertible patch cache: reorient, crop, z-score, resample.

One case (:mod:`~toolkit.data.preprocess.case`) goes through four steps (the nnU-Net v2 order;
see RECIPE.md "Data and input"):

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

Optionally (``data.brain_extraction``, default ``none``), a brain mask
(:mod:`toolkit.data.brain_mask`) is computed after step 1 on the first channel and every voxel
outside it is set to 0 before step 2, so the crop is the brain's box and the z-score statistics
are the brain's; labels are only cropped. The method is recorded in the properties and in
``plan.json`` so evaluation and inference run the same step, and predictions outside the brain
invert to background.

Modules: ``case`` (one case and its inverse), ``plan`` (:class:`Plan`, the fingerprint) and
``writer`` (:func:`preprocess_manifest`, :func:`ensure_cache`: the cache on disk).

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

from toolkit.data.preprocess.case import (
    CACHE_FORMAT_VERSION,
    GRID_ATOL_MM,
    invert_to_original,
    preprocess_case,
    write_prediction_nifti,
)
from toolkit.data.preprocess.entry import (
    CASES_DIR,
    DONE_FILE,
    FOREGROUND_FILE,
    IMAGE_FILE,
    LABEL_FILE,
    LOCK_FILE,
    MIN_FOREGROUND_COVERAGE,
    NUM_FOREGROUND_SAMPLES,
    PLAN_FILE,
    PROPERTIES_FILE,
    TMP_PREFIX,
    read_done_marker,
    sample_foreground_locations,
)
from toolkit.data.preprocess.integrity import CacheDiskFullError, file_checksum
from toolkit.data.preprocess.plan import Plan
from toolkit.data.preprocess.writer import CacheSettings, ensure_cache, preprocess_manifest

__all__ = [
    "CACHE_FORMAT_VERSION",
    "CASES_DIR",
    "DONE_FILE",
    "FOREGROUND_FILE",
    "GRID_ATOL_MM",
    "IMAGE_FILE",
    "LABEL_FILE",
    "LOCK_FILE",
    "MIN_FOREGROUND_COVERAGE",
    "NUM_FOREGROUND_SAMPLES",
    "PLAN_FILE",
    "PROPERTIES_FILE",
    "TMP_PREFIX",
    "CacheDiskFullError",
    "CacheSettings",
    "Plan",
    "ensure_cache",
    "file_checksum",
    "invert_to_original",
    "preprocess_case",
    "preprocess_manifest",
    "read_done_marker",
    "sample_foreground_locations",
    "write_prediction_nifti",
]
