"""NIfTI IO: round trip, spacing, orientation, and clear errors for bad files."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.data.conftest import write_nifti
from toolkit.data.io import load_volume, read_header, save_volume
from toolkit.errors import DataError


def _ramp(shape: tuple[int, int, int] = (6, 7, 8)) -> np.ndarray:
    return np.arange(np.prod(shape), dtype=np.float32).reshape(shape)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_save_load_round_trip(tmp_path: Path, suffix: str) -> None:
    affine = np.array([[0, 0, 2.0, -10], [-1.5, 0, 0, 5], [0, 1.0, 0, 3], [0, 0, 0, 1]])
    path = save_volume(_ramp(), affine, tmp_path / "sub" / f"v{suffix}")
    assert path.exists() and not list(path.parent.glob("*.tmp*"))
    vol = load_volume(path)
    np.testing.assert_array_equal(vol.array, _ramp())
    np.testing.assert_allclose(vol.affine, affine, atol=1e-6)
    assert vol.spacing_mm == pytest.approx((1.5, 1.0, 2.0))
    assert vol.shape == (6, 7, 8) and vol.array.dtype == np.float32 and vol.path == path


def test_save_with_dtype_and_load_with_dtype(tmp_path: Path) -> None:
    labels = np.zeros((4, 4, 4), dtype=np.int64)
    labels[1, 2, 3] = 3
    path = save_volume(labels, np.eye(4), tmp_path / "seg.nii.gz", dtype=np.uint8)
    assert nib.load(str(path)).get_data_dtype() == np.uint8
    assert load_volume(path, dtype=np.int16).array.dtype == np.int16


def test_canonical_reorients_to_ras(tmp_path: Path) -> None:
    # x axis stored flipped (LAS): canonical loading flips the first array axis back.
    affine = np.diag([-1.0, 1.0, 1.0, 1.0])
    path = write_nifti(tmp_path / "las.nii.gz", _ramp(), affine=affine)
    vol = load_volume(path, canonical=True)
    np.testing.assert_array_equal(vol.array, _ramp()[::-1])
    assert np.all(np.diag(vol.affine)[:3] > 0)


def test_trailing_singleton_dimensions_are_dropped(tmp_path: Path) -> None:
    path = write_nifti(tmp_path / "v.nii.gz", _ramp()[..., None])
    assert load_volume(path).shape == (6, 7, 8)


def test_spacing_from_writer(tmp_path: Path) -> None:
    path = write_nifti(tmp_path / "v.nii.gz", _ramp(), spacing=(0.5, 1.0, 3.0))
    assert load_volume(path).spacing_mm == pytest.approx((0.5, 1.0, 3.0))


def test_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.nii.gz"
    with pytest.raises(DataError, match=f"{missing}: file not found"):
        load_volume(missing)
    with pytest.raises(DataError, match="not a file"):
        read_header(tmp_path)
    junk = tmp_path / "junk.nii.gz"
    junk.write_bytes(b"\x00garbage" * 50)
    with pytest.raises(DataError, match=f"{junk}: not a readable NIfTI file"):
        load_volume(junk)
    four_d = write_nifti(tmp_path / "4d.nii.gz", np.zeros((4, 4, 4, 2)))
    with pytest.raises(DataError, match=r"expected a 3D volume, got shape \(4, 4, 4, 2\)"):
        load_volume(four_d)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_truncated_file_is_a_data_error(tmp_path: Path, suffix: str) -> None:
    path = write_nifti(tmp_path / f"v{suffix}", _ramp((16, 16, 16)))
    path.write_bytes(path.read_bytes()[:-4000])
    read_header(path)  # the header survives; the voxel data does not
    with pytest.raises(DataError, match=f"{path}: truncated or corrupt voxel data"):
        load_volume(path)


def test_save_refuses_unknown_suffix(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"out.img: .* \.nii or \.nii\.gz"):
        save_volume(_ramp(), np.eye(4), tmp_path / "out.img")
