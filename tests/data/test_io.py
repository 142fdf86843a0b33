"""NIfTI IO: round trip, spacing, orientation, and clear errors for bad files."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.data.conftest import write_nifti
from tests.data.corpus import raw_nifti
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


# -------------------------------------------------------------------------------------------------
# Header first, voxels second: the guard every reader (preprocess, evaluate, predict, viewers) gets

_HUGE = [3, 30000, 30000, 30000, 1, 1, 1, 1]


def _huge(tmp_path: Path) -> Path:
    return raw_nifti(tmp_path / "huge.nii.gz", fields={"dim": _HUGE}, payload=b"\0" * 2048)


def test_lying_header_is_refused_before_anything_is_allocated(tmp_path: Path) -> None:
    path = _huge(tmp_path)
    tracemalloc.start()
    try:
        with pytest.raises(DataError) as info:
            load_volume(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(info.value) == (
        f"{path}: header claims 27000000000000 voxels (30000, 30000, 30000), more than the voxel "
        "budget of 2147483648 (raise it with MAE3D_MAX_VOXELS or --max-voxels)"
    )
    assert peak < 4 * 2**20


def test_any_other_failure_is_one_line_naming_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import toolkit.data.io as io

    path = write_nifti(tmp_path / "v.nii.gz", _ramp())

    def exhausted(*args: object, **kwargs: object) -> None:
        raise MemoryError("Unable to allocate 8.00 GiB for an array")

    monkeypatch.setattr(io, "read_voxels", exhausted)
    with pytest.raises(DataError) as info:
        load_volume(path)
    assert str(info.value) == (
        f"{path}: could not be read: MemoryError: Unable to allocate 8.00 GiB for an array"
    )


def test_flipped_bytes_in_a_gzip_file_are_detected(tmp_path: Path) -> None:
    path = raw_nifti(tmp_path / "v.nii.gz", _ramp((16, 16, 16)) * np.float32(0.37))
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 32] = bytes(b ^ 0xFF for b in data[middle : middle + 32])
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=f"{path}: truncated or corrupt voxel data .*CRC check"):
        load_volume(path)


def test_gzip_stream_longer_than_the_header_claims_is_refused(tmp_path: Path) -> None:
    path = raw_nifti(tmp_path / "v.nii.gz", _ramp(), payload=_ramp().tobytes("F") + bytes(3 << 20))
    assert path.stat().st_size < 16_000  # 3 MB of zeros compress to almost nothing
    with pytest.raises(
        DataError,
        match=r"v.nii.gz: the gzip stream holds more than 1048576 bytes past the 1696 bytes",
    ):
        load_volume(path)
    small_pad = raw_nifti(tmp_path / "pad.nii.gz", _ramp(), payload=_ramp().tobytes("F") + bytes(8))
    np.testing.assert_array_equal(load_volume(small_pad).array, _ramp())


def test_scaled_big_endian_nifti2_read_like_nibabel(tmp_path: Path) -> None:
    scaled = raw_nifti(
        tmp_path / "s.nii.gz", _ramp().astype(np.int16), fields={"scl_slope": 0.5, "scl_inter": 2}
    )
    np.testing.assert_array_equal(load_volume(scaled).array, _ramp() * 0.5 + 2)
    big = nib.Nifti1Header(endianness=">")
    path = tmp_path / "b.nii.gz"
    nib.save(nib.Nifti2Image(_ramp().astype(">f4"), np.eye(4), header=big), str(path))
    np.testing.assert_array_equal(load_volume(path).array, _ramp())


def test_preprocessing_gets_the_guard(tmp_path: Path) -> None:
    from toolkit.data.preprocess import preprocess_case

    path = _huge(tmp_path)
    with pytest.raises(DataError, match=f"{path}: header claims 27000000000000 voxels"):
        preprocess_case([path], None, (1.0, 1.0, 1.0))


def test_every_reader_opens_files_through_toolkit_data_io() -> None:
    """Only toolkit/data/header.py calls nibabel's loader: every other module (preprocess,
    evaluate, predict, the napari and inline viewers) reads through load_volume/read_header."""
    repo = Path(__file__).resolve().parents[2]
    offenders = []
    for folder in ("toolkit", "widgets"):
        for source in sorted((repo / folder).rglob("*.py")):
            if source.relative_to(repo).as_posix() == "toolkit/data/header.py":
                continue
            for number, line in enumerate(source.read_text().splitlines(), 1):
                code = line.split("#", 1)[0]
                if ">>>" not in line and ("nib.load(" in code or "nibabel.load(" in code):
                    offenders.append(f"{source.relative_to(repo)}:{number}")
    assert offenders == []
