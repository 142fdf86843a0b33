"""NIfTI reading and writing through nibabel, with errors that name the file.

Arrays are (D, H, W) = the voxel axes of the NIfTI file (i, j, k); affines map voxel indices to
scanner millimetres (RAS+), as in nibabel.
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from toolkit.errors import DataError

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class Volume:
    """A 3D image: ``array`` (D, H, W), its 4x4 ``affine`` and voxel ``spacing_mm`` (3,)."""

    array: np.ndarray
    affine: np.ndarray
    path: Path | None = None

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        """Voxel edge lengths in mm, from the affine's column norms."""
        s = np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0))
        return (float(s[0]), float(s[1]), float(s[2]))

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)


def read_header(path: PathLike) -> nib.Nifti1Image:
    """Open a NIfTI file lazily (header only) or raise :class:`DataError` naming the file."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if not path.is_file():
        raise DataError(f"{path}: not a file")
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises many types for corrupt headers
        raise DataError(f"{path}: not a readable NIfTI file ({_short(exc)})") from None
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise DataError(f"{path}: not a NIfTI image (got {type(img).__name__})")
    return img


def load_volume(path: PathLike, *, dtype: type = np.float32, canonical: bool = False) -> Volume:
    """Read a 3D NIfTI volume.

    Args:
        path: ``.nii`` or ``.nii.gz`` file.
        dtype: dtype of the returned array.
        canonical: reorient to the closest canonical (RAS+) orientation first.

    Returns:
        A :class:`Volume` whose array is (D, H, W). Trailing singleton dimensions are dropped.

    Raises:
        DataError: missing, unreadable, truncated or corrupt file; not 3D.
    """
    img = read_header(path)
    shape = tuple(int(s) for s in img.shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) != 3:
        raise DataError(f"{path}: expected a 3D volume, got shape {tuple(img.shape)}")
    if canonical:
        img = nib.as_closest_canonical(img)
    try:
        data: np.ndarray = np.asarray(img.dataobj, dtype=dtype).reshape(img.shape[:3])
    except (OSError, EOFError, ValueError, zlib.error) as exc:
        raise DataError(f"{path}: truncated or corrupt voxel data ({_short(exc)})") from None
    return Volume(array=data, affine=np.asarray(img.affine, dtype=np.float64), path=Path(path))


def save_volume(
    array: np.ndarray, affine: np.ndarray, path: PathLike, *, dtype: type | None = None
) -> Path:
    """Write ``array`` (D, H, W) with ``affine`` (4, 4) to NIfTI, atomically (temp + rename)."""
    path = Path(path)
    if not path.name.endswith((".nii", ".nii.gz")):
        raise DataError(f"{path}: NIfTI files must end in .nii or .nii.gz")
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.asarray(array if dtype is None else array.astype(dtype))
    img = nib.Nifti1Image(arr, np.asarray(affine, dtype=np.float64))
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else ".nii"
    tmp = path.with_name(path.name[: -len(suffix)] + ".tmp" + suffix)
    nib.save(img, str(tmp))
    os.replace(tmp, path)
    return path


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:160]}" if text else type(exc).__name__
