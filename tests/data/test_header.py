"""Header first: what inspect_header refuses (one line, nothing allocated) and what it reports."""

from __future__ import annotations

import gzip
import tracemalloc
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

from tests.data.corpus import image, raw_nifti, save
from toolkit.data.header import (
    DEFAULT_MAX_VOXELS,
    MAX_VOXELS_ENV,
    anisotropy_warning,
    default_max_voxels,
    inspect_header,
    quiet_nibabel,
)
from toolkit.errors import DataError

SMALL = image(1).tobytes(order="F")  # 2 kB of voxels, whatever the header claims
HUGE = [3, 30000, 30000, 30000, 1, 1, 1, 1]
GIGA_U8 = {"dim": [3, 1000, 1000, 1000, 1, 1, 1, 1], "datatype": 2, "bitpix": 8}

# name, file name, raw header fields, expected message fragment
REFUSED: list[tuple[str, str, dict[str, Any], str]] = [
    ("budget", "v.nii.gz", {"dim": HUGE}, "more than the voxel budget of 2147483648"),
    ("gzip_bound", "v.nii.gz", GIGA_U8, "more than a "),
    ("nii_size", "v.nii", GIGA_U8, "the file has 2400 bytes, its header needs 1000000352"),
    ("two_d", "v.nii.gz", {"dim": [2, 8, 8, 1, 1, 1, 1, 1]}, "expected a 3D volume, got (8, 8)"),
    ("zero_dim", "v.nii.gz", {"dim": [3, 8, 0, 8, 1, 1, 1, 1]}, "(8, 0, 8) must all be positive"),
    ("neg_dim", "v.nii.gz", {"dim": [3, 8, -8, 8, 1, 1, 1, 1]}, "(8, -8, 8) must all be positive"),
    ("datatype", "v.nii.gz", {"datatype": 999}, "data code 999 not recognized"),
    ("magic", "v.nii.gz", {"magic": b"abc"}, "not a readable NIfTI file"),
    ("offset", "v.nii.gz", {"vox_offset": 100}, "vox offset 100 too low"),
]


@pytest.mark.parametrize(
    ("name", "file", "fields", "fragment"), REFUSED, ids=[r[0] for r in REFUSED]
)
def test_bad_headers_are_one_data_error(
    tmp_path: Path, name: str, file: str, fields: dict[str, Any], fragment: str
) -> None:
    path = raw_nifti(tmp_path / file, fields=fields, payload=SMALL)
    with pytest.raises(DataError) as info:
        inspect_header(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    assert fragment.replace("got (", "got shape (") in message


def test_oversized_headers_allocate_nothing(tmp_path: Path) -> None:
    paths = [
        raw_nifti(tmp_path / "huge.nii.gz", fields={"dim": HUGE}, payload=SMALL),
        raw_nifti(tmp_path / "giga.nii.gz", fields=GIGA_U8, payload=SMALL),
        raw_nifti(tmp_path / "giga.nii", fields=GIGA_U8, payload=SMALL),
    ]
    tracemalloc.start()
    try:
        for path in paths:
            with pytest.raises(DataError, match="header claims|its header needs"):
                inspect_header(path, max_voxels=2**40)  # the file size alone refuses giga
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * 2**20, f"{peak} bytes traced"


def test_complex_and_rgb_datatypes_are_refused(tmp_path: Path) -> None:
    cplx = save(tmp_path / "c.nii.gz", image(2).astype(np.complex64))
    with pytest.raises(DataError, match="datatype complex64 is not supported"):
        inspect_header(cplx)
    rgb = save(tmp_path / "rgb.nii.gz", np.zeros((4, 4, 4), dtype=[(c, "u1") for c in "RGB"]))
    with pytest.raises(DataError, match="datatype RGB24 is not supported"):
        inspect_header(rgb)


def test_file_names_and_kinds(tmp_path: Path) -> None:
    mha = tmp_path / "v.mha"
    mha.write_bytes(b"ObjectType = Image\n")
    with pytest.raises(DataError, match=r"not a NIfTI file name \(expected .nii or .nii.gz\)"):
        inspect_header(mha)
    with pytest.raises(DataError, match="not a file"):
        inspect_header(tmp_path)
    with pytest.raises(DataError, match="file not found"):
        inspect_header(tmp_path / "nope.nii.gz")
    upper = save(tmp_path / "UPPER.NII.GZ", image(3))
    assert inspect_header(upper).shape == (8, 8, 8)


def test_voxel_budget_from_argument_and_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = save(tmp_path / "v.nii.gz", image(4))
    monkeypatch.delenv(MAX_VOXELS_ENV, raising=False)
    assert default_max_voxels() == DEFAULT_MAX_VOXELS == 2**31
    assert inspect_header(path, max_voxels=512).num_voxels == 512
    with pytest.raises(DataError, match=r"header claims 512 voxels \(8, 8, 8\), more than .* 511"):
        inspect_header(path, max_voxels=511)
    monkeypatch.setenv(MAX_VOXELS_ENV, "100")
    with pytest.raises(DataError, match="more than the voxel budget of 100"):
        inspect_header(path)
    monkeypatch.setenv(MAX_VOXELS_ENV, "lots")
    with pytest.raises(DataError, match=f"{MAX_VOXELS_ENV}: expected a positive integer"):
        inspect_header(path)


def test_spacing_and_orientation_problems_are_reported_not_raised(tmp_path: Path) -> None:
    def info(**fields: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
        h = inspect_header(raw_nifti(tmp_path / "v.nii.gz", image(5), fields=fields))
        return h.problems, h.warnings

    assert info() == ((), ())
    pix = [1, 1, 0, 1, 1, 1, 1, 1]
    assert info(qform_code=0, pixdim=pix)[0] == (
        "voxel spacing (1, 0, 1) mm from the header pixdim is not positive",
    )
    neg = [1, -2, 1, 1, 1, 1, 1, 1]
    assert "(-2, 1, 1) mm from the header pixdim" in info(qform_code=0, pixdim=neg)[0][0]
    nan_affine = info(qform_code=0, srow_x=[np.nan, 0, 0, 0])[0]
    assert nan_affine == ("voxel spacing (nan, 1, 1) mm from the affine is not positive",)
    assert info(qform_code=0, sform_code=0)[1] == (
        "no orientation (qform_code and sform_code are 0): the affine comes from pixdim alone",
    )
    assert info(bitpix=16)[0] == (
        "bitpix 16 does not match datatype float32 (32 bits): the header is inconsistent",
    )
    assert info(sizeof_hdr=300)[0] == ("sizeof_hdr is 300, not 348: the header is inconsistent",)
    (disagree,) = info(srow_z=[0, 0, 1, 2.5])[0]
    assert disagree.startswith("qform and sform disagree by up to 2.5 mm: nibabel and this toolkit")
    assert "use the sform (sform_code 1)" in disagree


def test_qform_and_sform_agreeing_within_float32_is_fine(tmp_path: Path) -> None:
    oblique = np.eye(4)
    angle = np.deg2rad(25.0)
    oblique[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    oblique[:3, 3] = [-123.456, 98.7, -65.4]
    path = save(tmp_path / "o.nii.gz", image(6), affine=oblique)
    assert inspect_header(path).problems == ()


def test_anisotropy_warning() -> None:
    assert anisotropy_warning(np.array([1.0, 1.0, 5.0])) is None
    assert anisotropy_warning(np.array([1.0, 1.0, 5.5])) == (
        "voxel spacing (1, 1, 5.5) mm is anisotropic (5.5:1, more than 5:1)"
    )
    assert anisotropy_warning(np.array([0.0, 1.0, 5.5])) is None  # a spacing error instead


def test_quiet_nibabel_restores_the_logger(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    logger = nib.imageglobals.logger
    handlers = list(logger.handlers)
    path = raw_nifti(tmp_path / "v.nii.gz", fields={"pixdim": [1, 0, 1, 1, 1, 1, 1, 1]})
    with quiet_nibabel():
        nib.load(str(path))
    assert "setting 0 dims to 1" not in capsys.readouterr().err
    assert not logger.disabled and logger.handlers == handlers


def test_gzip_payload_matches_raw_writer(tmp_path: Path) -> None:
    """The raw writer the corpus relies on produces files nibabel reads back exactly."""
    arr = image(7)
    path = raw_nifti(tmp_path / "v.nii.gz", arr)
    assert gzip.decompress(path.read_bytes())[:4] == (348).to_bytes(4, "little")
    np.testing.assert_array_equal(np.asarray(nib.load(str(path)).dataobj), arr)
