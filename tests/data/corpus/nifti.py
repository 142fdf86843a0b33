"""Tiny NIfTI files for the corpus, written by nibabel or byte by byte."""

from __future__ import annotations

import gzip
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from tests.data.corpus.records import SHAPE

# --------------------------------------------------------------------------------------------------
# Writing NIfTI files (nibabel repairs bad header fields when it saves, so defects are raw bytes)


def image(seed: int = 0, shape: Sequence[int] = SHAPE) -> np.ndarray:
    """A random float32 image (D, H, W): never constant, never all zero."""
    return np.random.default_rng(seed).normal(100.0, 20.0, size=tuple(shape)).astype(np.float32)


def label(shape: Sequence[int] = SHAPE, classes: Sequence[int] = (1, 2)) -> np.ndarray:
    """A uint8 label map (D, H, W) with one block per class in ``classes``."""
    lab = np.zeros(tuple(shape), dtype=np.uint8)
    for i, c in enumerate(classes):
        lab[2 * i : 2 * i + 2, 1:4, 1:4] = c
    return lab


def save(path: Path, array: np.ndarray, affine: np.ndarray | None = None, **kw: Any) -> Path:
    """Write ``array`` with nibabel, qform = sform = ``affine`` (default identity)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    aff = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
    header = kw.pop("header", None)
    cls = kw.pop("cls", nib.Nifti1Image)
    img = cls(array, aff, header=header)
    img.set_qform(aff, code=1)
    img.set_sform(aff, code=1)
    nib.save(img, str(path))
    return path


def raw_nifti(
    path: Path,
    array: np.ndarray | None = None,
    *,
    affine: np.ndarray | None = None,
    fields: Mapping[str, Any] | None = None,
    payload: bytes | None = None,
) -> Path:
    """Write a NIfTI-1 file byte by byte: header from ``array``/``affine``, then ``fields`` as is.

    Args:
        path: ``.nii`` or ``.nii.gz`` (gzip-compressed), or any other name (uncompressed).
        array: voxels (D, H, W) whose shape and dtype fill the header (default :func:`image`).
        affine: qform and sform (code 1), default identity.
        fields: raw header fields set last, unchecked (``{"dim": [...], "datatype": 999}``).
        payload: bytes after the header instead of ``array``'s.
    """
    arr = image() if array is None else np.asarray(array)
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(arr.shape)
    hdr.set_data_dtype(arr.dtype)
    aff = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
    hdr.set_qform(aff, code=1)
    hdr.set_sform(aff, code=1)
    hdr["vox_offset"] = 352
    for key, value in (fields or {}).items():
        hdr[key] = value
    body = arr.tobytes(order="F") if payload is None else payload
    block = hdr.binaryblock + b"\0" * 4 + body
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(block) if path.name.endswith(".gz") else block)
    return path


def rotation(degrees_z: float, degrees_x: float) -> np.ndarray:
    z, x = math.radians(degrees_z), math.radians(degrees_x)
    rz = np.array([[math.cos(z), -math.sin(z), 0], [math.sin(z), math.cos(z), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, math.cos(x), -math.sin(x)], [0, math.sin(x), math.cos(x)]])
    return rz @ rx
