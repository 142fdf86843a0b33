"""Header first, voxels second: what a NIfTI header claims, checked before any voxel is read.

nibabel opens a file lazily, but reading ``img.dataobj`` allocates the whole array the header
claims first: a header that says 30000³ voxels ends in a ``MemoryError`` (or a machine that swaps)
before a single byte is read. :func:`inspect_header` reads only the header (a few hundred bytes)
and refuses, with one :class:`~toolkit.errors.DataError` line naming the file, anything that cannot
be read safely:

- a name that is not ``.nii`` / ``.nii.gz``; a file nibabel cannot parse as NIfTI-1/2;
- not 3D (trailing singleton dimensions are fine), or a dimension that is zero or negative;
- a datatype that is not a real number (complex, RGB);
- more voxels than the voxel budget (default ``2**31``; ``$MAE3D_MAX_VOXELS`` or ``max_voxels=``);
- more bytes than the file can hold: an uncompressed file shorter than ``vox_offset`` + data, or a
  gzip file whose claimed data exceeds what deflate can expand its size to (1032:1 at most), which
  catches absurd headers without decompressing anything.

Everything else it finds is returned, not raised, as :attr:`HeaderInfo.problems` (errors: voxel
spacing that is zero, negative or NaN in pixdim or the affine; qform and sform that disagree;
``sizeof_hdr`` or ``bitpix`` inconsistent with the format and datatype) and
:attr:`HeaderInfo.warnings` (no orientation at all), so that
:func:`toolkit.data.validate.check_manifests` can report them while
:func:`toolkit.data.io.load_volume` reads files whose headers are merely imperfect.

Example:
    >>> info = inspect_header("scan.nii.gz")  # doctest: +SKIP
    >>> info.shape, info.dtype, info.problems
    ((182, 218, 182), dtype('float32'), ())
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from toolkit.errors import DataError

PathLike = str | os.PathLike[str]

#: Default largest number of voxels a file may claim (2**31 ≈ 8 GiB as float32).
DEFAULT_MAX_VOXELS = 2**31
#: Environment variable that overrides :data:`DEFAULT_MAX_VOXELS` for every reader.
MAX_VOXELS_ENV = "MAE3D_MAX_VOXELS"
#: Deflate expands at most 1032-fold (258-byte matches at 2 bits each), so a gzip file of S bytes
#: holds at most 1032·S bytes; the slack covers gzip headers of tiny files.
GZIP_MAX_RATIO = 1032
_GZIP_SLACK_BYTES = 1024
#: Largest ratio of voxel edge lengths before a file is warned about (nnU-Net treats > 3 as
#: anisotropic; 5:1 is where resampling to isotropic starts inventing most of the image).
MAX_ANISOTROPY = 5.0
#: Largest difference (mm) between qform and sform entries that still counts as agreement
#: (the qform is stored as float32 quaternions, so exact equality is too strict).
QFORM_SFORM_ATOL_MM = 1e-3
NIFTI_SUFFIXES = (".nii.gz", ".nii")


@dataclass(frozen=True)
class HeaderInfo:
    """What a NIfTI header claims, after the checks that make reading its voxels safe.

    Attributes:
        path: the file.
        image: the lazily opened nibabel image (no voxel read yet).
        shape: (D, H, W), trailing singleton dimensions dropped.
        dtype: the stored voxel type (before scaling).
        affine: nibabel's voxel-to-mm affine (4, 4), sform if set, else qform, else pixdim only.
        pixdim: voxel sizes (3,) as stored in the file (nibabel repairs zeros when it loads).
        problems: errors that do not stop a read (spacing, qform/sform disagreement, inconsistent
            sizeof_hdr or bitpix).
        warnings: things worth a look (no orientation).
    """

    path: Path
    image: nib.Nifti1Image
    shape: tuple[int, int, int]
    dtype: np.dtype
    affine: np.ndarray
    pixdim: np.ndarray
    problems: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def num_voxels(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


def default_max_voxels() -> int:
    """The voxel budget: ``$MAE3D_MAX_VOXELS`` when set, else :data:`DEFAULT_MAX_VOXELS`.

    Raises:
        DataError: the environment variable is not a positive integer.
    """
    raw = os.environ.get(MAX_VOXELS_ENV)
    if raw is None or not raw.strip():
        return DEFAULT_MAX_VOXELS
    try:
        value = int(raw.strip().replace("_", ""))
    except ValueError:
        value = 0
    if value <= 0:
        raise DataError(f"{MAX_VOXELS_ENV}: expected a positive integer, got {raw!r}")
    return value


def data_offset(img: nib.Nifti1Image) -> int:
    """Byte offset of the voxel data in the (uncompressed) file.

    The header that nibabel hands out is a copy whose ``vox_offset`` is reset to 0; the file's own
    offset lives on the array proxy.
    """
    offset = getattr(img.dataobj, "offset", None)
    return int(img.header.get_data_offset() if offset is None else offset)


def is_nifti_name(path: PathLike) -> bool:
    """True when the file name ends in ``.nii`` or ``.nii.gz`` (any letter case)."""
    return Path(path).name.lower().endswith(NIFTI_SUFFIXES)


def open_nifti(path: PathLike) -> nib.Nifti1Image:
    """Open a NIfTI file lazily (header only) or raise :class:`DataError` naming the file."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if not path.is_file():
        raise DataError(f"{path}: not a file")
    if not is_nifti_name(path):
        raise DataError(f"{path}: not a NIfTI file name (expected .nii or .nii.gz)")
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises many types for corrupt headers
        raise DataError(f"{path}: not a readable NIfTI file ({short_error(exc)})") from None
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise DataError(f"{path}: not a NIfTI image (got {type(img).__name__})")
    return img


def inspect_header(path: PathLike, *, max_voxels: int | None = None) -> HeaderInfo:
    """Check a NIfTI header without reading voxels; raise for what makes a read unsafe.

    Args:
        path: ``.nii`` or ``.nii.gz`` file.
        max_voxels: voxel budget (default :func:`default_max_voxels`).

    Returns:
        The header's claims with the non-fatal problems and warnings.

    Raises:
        DataError: one line naming the file: unreadable, not 3D, empty or negative dimensions,
            unsupported datatype, over the voxel budget, or more data than the file can hold.

    Example:
        >>> inspect_header("huge.nii.gz")  # doctest: +SKIP
        DataError: huge.nii.gz: header claims 27000000000000 voxels (30000, 30000, 30000), more
        than the voxel budget of 2147483648 (raise it with MAE3D_MAX_VOXELS or --max-voxels)
    """
    path = Path(path)
    img = open_nifti(path)
    hdr = img.header
    full_shape = tuple(int(s) for s in hdr["dim"][1 : int(hdr["dim"][0]) + 1])
    shape = full_shape
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) != 3:
        raise DataError(f"{path}: expected a 3D volume, got shape {full_shape}")
    if any(s <= 0 for s in shape):
        raise DataError(f"{path}: dimensions {full_shape} must all be positive")
    try:
        dtype = np.dtype(hdr.get_data_dtype())
    except Exception as exc:
        raise DataError(f"{path}: unknown datatype ({short_error(exc)})") from None
    if dtype.kind not in "biuf":
        raise DataError(
            f"{path}: datatype {_dtype_name(dtype)} is not supported (need integer or float voxels)"
        )

    budget = default_max_voxels() if max_voxels is None else int(max_voxels)
    num_voxels = int(np.prod(shape, dtype=object))  # exact, no int64 overflow
    if num_voxels > budget:
        raise DataError(
            f"{path}: header claims {num_voxels} voxels {shape}, more than the voxel budget of "
            f"{budget} (raise it with {MAX_VOXELS_ENV} or --max-voxels)"
        )
    needed = data_offset(img) + num_voxels * dtype.itemsize
    size = path.stat().st_size
    if path.name.lower().endswith(".gz"):
        bound = GZIP_MAX_RATIO * size + _GZIP_SLACK_BYTES
        if needed > bound:
            raise DataError(
                f"{path}: header claims {needed} bytes of data {shape}, more than a {size}-byte "
                f"gzip file can hold (at most {bound})"
            )
    elif size < needed:
        raise DataError(
            f"{path}: truncated or corrupt voxel data (the file has {size} bytes, its header "
            f"needs {needed})"
        )

    affine = np.asarray(img.affine, dtype=np.float64)
    raw = raw_header(path, img)
    stored = hdr if raw is None else raw
    pixdim = np.asarray(stored["pixdim"][1:4], dtype=np.float64)
    problems: list[str] = []
    warnings: list[str] = []
    # Inconsistent fields nibabel repairs silently, but other readers may trust.
    size = int(stored["sizeof_hdr"])
    expected_size = 540 if isinstance(img, nib.Nifti2Image) else 348
    if size != expected_size:
        problems.append(f"sizeof_hdr is {size}, not {expected_size}: the header is inconsistent")
    bitpix = int(stored["bitpix"])
    if bitpix != 8 * dtype.itemsize:
        problems.append(
            f"bitpix {bitpix} does not match datatype {dtype.name} ({8 * dtype.itemsize} bits): "
            "the header is inconsistent"
        )
    column_norms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    for source, spacing in (("header pixdim", pixdim), ("affine", column_norms)):
        if not (np.all(np.isfinite(spacing)) and np.all(spacing > 0)):
            problems.append(f"voxel spacing {fmt(spacing)} mm from the {source} is not positive")
    qform_code, sform_code = int(hdr["qform_code"]), int(hdr["sform_code"])
    if qform_code > 0 and sform_code > 0:
        qform = np.asarray(hdr.get_qform(), dtype=np.float64)
        sform = np.asarray(hdr.get_sform(), dtype=np.float64)
        deviation = float(np.max(np.abs(qform - sform)))
        if not np.isfinite(deviation) or deviation > QFORM_SFORM_ATOL_MM:
            problems.append(
                f"qform and sform disagree by up to {deviation:.3g} mm: nibabel and this toolkit "
                f"use the sform (sform_code {sform_code}); readers that prefer the qform "
                f"(qform_code {qform_code}) see another grid"
            )
    elif qform_code <= 0 and sform_code <= 0:
        warnings.append(
            "no orientation (qform_code and sform_code are 0): the affine comes from pixdim alone"
        )
    return HeaderInfo(
        path=path,
        image=img,
        shape=(shape[0], shape[1], shape[2]),
        dtype=dtype,
        affine=affine,
        pixdim=pixdim,
        problems=tuple(problems),
        warnings=tuple(warnings),
    )


def anisotropy_warning(spacing_mm: np.ndarray, limit: float = MAX_ANISOTROPY) -> str | None:
    """A warning when the longest voxel edge exceeds ``limit`` times the shortest, else None.

    Example:
        >>> anisotropy_warning(np.array([0.1, 0.1, 10.0]))
        'voxel spacing (0.1, 0.1, 10) mm is anisotropic (100:1, more than 5:1)'
    """
    spacing = np.asarray(spacing_mm, dtype=np.float64)
    if not (np.all(np.isfinite(spacing)) and np.all(spacing > 0)):
        return None  # reported as a spacing error
    ratio = float(spacing.max() / spacing.min())
    if ratio <= limit:
        return None
    return f"voxel spacing {fmt(spacing)} mm is anisotropic ({ratio:.3g}:1, more than {limit:g}:1)"


def raw_header(path: Path, img: nib.Nifti1Image) -> nib.Nifti1Header | None:
    """The header as stored, unrepaired (nibabel fixes pixdim, bitpix, sizeof_hdr when it loads)."""
    try:
        with nib.openers.ImageOpener(str(path)) as f:
            return type(img.header).from_fileobj(f, check=False)
    except Exception:  # the data read that follows reports a broken file
        return None


@contextmanager
def quiet_nibabel() -> Iterator[None]:
    """Silence nibabel's header-fix messages (``setting 0 dims to 1``) while files are checked.

    The checks report those problems as lines of their own. nibabel's ``LoggingOutputSuppressor``
    removes the logger's handlers, which leaves Python's last-resort handler printing them anyway
    (and never restores the handlers), so the logger is disabled instead.
    """
    logger = nib.imageglobals.logger
    was_disabled = logger.disabled
    logger.disabled = True
    try:
        yield
    finally:
        logger.disabled = was_disabled


def short_error(exc: BaseException) -> str:
    """``"Type: first line of the message"`` (160 characters at most), or just the type."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:160]}" if text else type(exc).__name__


def fmt(values: np.ndarray) -> str:
    """``(1, 0.5, 2)``: numbers in a tuple, ``%g`` formatted."""
    return "(" + ", ".join(f"{float(v):g}" for v in values) + ")"


def _dtype_name(dtype: np.dtype) -> str:
    if dtype.fields is not None:
        return "RGB" + str(8 * dtype.itemsize)
    return dtype.name
