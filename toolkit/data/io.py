"""NIfTI reading and writing through nibabel, with errors that name the file.

Arrays are (D, H, W) = the voxel axes of the NIfTI file (i, j, k); affines map voxel indices to
scanner millimetres (RAS+), as in nibabel.
"""

from __future__ import annotations

import gzip
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from toolkit.data.header import data_offset, fmt, inspect_header, open_nifti, short_error
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
    return open_nifti(path)


def load_volume(
    path: PathLike,
    *,
    dtype: type = np.float32,
    canonical: bool = False,
    max_voxels: int | None = None,
) -> Volume:
    """Read a 3D NIfTI volume, header first: nothing is allocated for a header that lies.

    This is the one reading function of preprocessing, evaluation, prediction and the viewers.
    :func:`toolkit.data.header.inspect_header` checks the header before any voxel is read; any
    other failure while reading (``MemoryError`` included) becomes one :class:`DataError` line
    ``"<file>: could not be read: <Type>: <message>"``.

    Args:
        path: ``.nii`` or ``.nii.gz`` file.
        dtype: dtype of the returned array.
        canonical: reorient to the closest canonical (RAS+) orientation first.
        max_voxels: voxel budget (default ``$MAE3D_MAX_VOXELS`` or 2**31).

    Returns:
        A :class:`Volume` whose array is (D, H, W). Trailing singleton dimensions are dropped.

    Raises:
        DataError: missing, unreadable, truncated or corrupt file (gzip checksum included); not
            3D; empty dimensions; non-real datatype; more voxels than the budget or than the file
            can hold; non-finite or zero spacing in the affine.
    """
    path = Path(path)
    try:
        info = inspect_header(path, max_voxels=max_voxels)
        spacing = np.sqrt((info.affine[:3, :3] ** 2).sum(axis=0))
        if not (np.all(np.isfinite(spacing)) and np.all(spacing > 0)):
            raise DataError(
                f"{path}: voxel spacing {fmt(spacing)} mm from the affine is not positive"
            )
        if not np.all(np.isfinite(info.affine)):
            raise DataError(f"{path}: the affine has non-finite entries")
        data, affine = read_voxels(info.image, path, dtype=dtype, canonical=canonical)
        return Volume(array=data, affine=affine, path=path)
    except DataError:
        raise
    except Exception as exc:  # the one guard: MemoryError, nibabel/numpy surprises
        raise DataError(f"{path}: could not be read: {_short(exc)}") from None


def read_voxels(
    img: nib.Nifti1Image,
    path: PathLike,
    *,
    dtype: type | None = None,
    canonical: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """The voxels (D, H, W) and affine (4, 4) of an image opened by :func:`inspect_header`.

    A ``.nii.gz`` is decompressed once, to the end of its stream, so that its gzip checksum and
    length are verified: nibabel stops at the last voxel it needs and never looks at them, so
    flipped bytes in the data would otherwise read as plausible voxels. The stream may not expand
    past the header's claim by more than :data:`GZIP_TRAILING_LIMIT` bytes (no gzip bombs).

    Args:
        img: a lazily opened 3D image (trailing singleton dimensions allowed).
        path: its file.
        dtype: convert to this dtype (None: nibabel's, i.e. scaled values as floats).
        canonical: reorient to the closest canonical (RAS+) orientation.

    Raises:
        DataError: truncated or corrupt voxel data.
    """
    path = Path(path)
    try:
        if path.name.lower().endswith(".gz"):
            claimed = data_offset(img) + int(np.prod(img.shape)) * img.get_data_dtype().itemsize
            img = type(img).from_bytes(_gunzip(path, claimed))
        if canonical:
            img = nib.as_closest_canonical(img)
        raw = np.asanyarray(img.dataobj) if dtype is None else np.asarray(img.dataobj, dtype=dtype)
        data = raw.reshape(tuple(int(s) for s in img.shape[:3]))
    except (OSError, EOFError, ValueError, zlib.error) as exc:  # ValueError: buffer too small
        raise DataError(f"{path}: truncated or corrupt voxel data ({_short(exc)})") from None
    return data, np.asarray(img.affine, dtype=np.float64)


#: Bytes a gzip stream may hold past the end of the voxel data (NIfTI files have none; some
#: writers pad). More than this and the file is refused instead of decompressed on and on.
GZIP_TRAILING_LIMIT = 1 << 20
_CHUNK = 1 << 20


def _gunzip(path: Path, claimed: int) -> bytes:
    """The first ``claimed`` decompressed bytes of ``path``, after reading to the stream's end."""
    with gzip.open(path, "rb") as f:
        data = f.read(claimed)
        if len(data) < claimed:
            raise EOFError(f"the data end after {len(data)} of {claimed} bytes")
        extra = 0
        while chunk := f.read(_CHUNK):  # reaching the end checks CRC and length
            extra += len(chunk)
            if extra > GZIP_TRAILING_LIMIT:
                raise DataError(
                    f"{path}: the gzip stream holds more than {GZIP_TRAILING_LIMIT} bytes past "
                    f"the {claimed} bytes its header claims (wrong header or a gzip bomb)"
                )
    return data


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


_short = short_error
