"""The defects, by family: each bad file is channel T1 (or the label) of its own case."""

from __future__ import annotations

import gzip
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tests.data.corpus.nifti import image, label, raw_nifti, save
from tests.data.corpus.records import DATASET, PRETRAIN, SHAPE
from tests.data.corpus.writer import Writer, write_manifest

# --------------------------------------------------------------------------------------------------
# Defects, by family. Each bad file is channel T1 (or the label) of its own case; the rest is good.


def _bad_t1(w: Writer, cid: str, make: Callable[[Path], object], ending: str = ".nii.gz") -> Path:
    path = w.img_path(cid, 0, ending)
    path.parent.mkdir(parents=True, exist_ok=True)
    make(path)
    w.case(cid, t1=path)
    return path


def header_defects(w: Writer) -> None:
    small = image(1).tobytes(order="F")

    def header(cid: str, expected: str, ending: str = ".nii.gz", **fields: Any) -> None:
        if ending == ".nii":  # not an nnU-Net file in a .nii.gz dataset: a pretraining case
            _, path = w.pretrain_case(cid, cid + ending)
            raw_nifti(path, fields=fields, payload=small)
            w.defect(cid, "header", expected, manifest="pretrain", case=cid, file=path)
            return
        path = _bad_t1(w, cid, lambda p: raw_nifti(p, fields=fields, payload=small), ending)
        w.defect(cid, "header", expected, case=cid, file=path)

    dims = [3, *SHAPE, 1, 1, 1, 1]
    header(
        "hdr_oversized_gz",
        "more than the voxel budget of 2147483648",
        dim=[3, 30000, 30000, 30000, 1, 1, 1, 1],
    )
    header(
        "hdr_over_gzip_bound",
        "gzip file can hold",
        dim=[3, 1000, 1000, 1000, 1, 1, 1, 1],
        datatype=2,
        bitpix=8,
    )
    header(
        "hdr_oversized_nii",
        "its header needs 1000000352",
        ending=".nii",
        dim=[3, 1000, 1000, 1000, 1, 1, 1, 1],
        datatype=2,
        bitpix=8,
    )
    header("hdr_2d", "expected a 3D volume, got shape (8, 8)", dim=[2, 8, 8, 1, 1, 1, 1, 1])
    header("hdr_zero_dim", "dimensions (8, 0, 8) must all be positive", dim=[3, 8, 0, 8, *dims[4:]])
    header(
        "hdr_negative_dim",
        "dimensions (8, -8, 8) must all be positive",
        dim=[3, 8, -8, 8, 1, 1, 1, 1],
    )
    header("hdr_unknown_datatype", "data code 999 not recognized", datatype=999)
    header("hdr_bad_magic", "not a readable NIfTI file", magic=b"abc")
    header("hdr_low_vox_offset", "vox offset 100 too low", vox_offset=100)
    header(
        "hdr_bitpix",
        "bitpix 8 does not match datatype float32 (32 bits): the header is inconsistent",
        bitpix=8,
    )
    header("hdr_sizeof_hdr", "sizeof_hdr is 123, not 348", sizeof_hdr=123)
    header(
        "hdr_zero_pixdim",
        "(1, 0, 1) mm from the header pixdim is not positive",
        qform_code=0,
        pixdim=[1, 1, 0, 1, 1, 1, 1, 1],
    )
    header(
        "hdr_negative_pixdim",
        "(1, -1, 1) mm from the header pixdim is not positive",
        qform_code=0,
        pixdim=[1, 1, -1, 1, 1, 1, 1, 1],
    )
    header(
        "hdr_nan_pixdim",
        "(1, nan, 1) mm from the header pixdim is not positive",
        qform_code=0,
        pixdim=[1, 1, np.nan, 1, 1, 1, 1, 1],
    )

    four_d = _bad_t1(w, "hdr_4d", lambda p: save(p, np.stack([image(2), image(3)], axis=-1)))
    w.defect(
        "hdr_4d",
        "header",
        "expected a 3D volume, got shape (8, 8, 8, 2)",
        case="hdr_4d",
        file=four_d,
    )
    cplx = _bad_t1(w, "hdr_complex", lambda p: save(p, image(4).astype(np.complex64)))
    w.defect(
        "hdr_complex",
        "header",
        "datatype complex64 is not supported",
        case="hdr_complex",
        file=cplx,
    )
    rgb = np.zeros(SHAPE, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    rgb_path = _bad_t1(w, "hdr_rgb", lambda p: save(p, rgb))
    w.defect("hdr_rgb", "header", "datatype RGB24 is not supported", case="hdr_rgb", file=rgb_path)

    empty = _bad_t1(w, "file_empty", lambda p: p.write_bytes(b""))
    w.defect("file_empty", "header", "not a readable NIfTI file", case="file_empty", file=empty)
    garbage = _bad_t1(w, "file_garbage", lambda p: p.write_bytes(b"not a NIfTI at all " * 40))
    w.defect(
        "file_garbage", "header", "not a readable NIfTI file", case="file_garbage", file=garbage
    )
    short = _bad_t1(
        w, "file_short_header", lambda p: p.write_bytes(gzip.compress(b"\x5c\x01" * 50))
    )
    w.defect(
        "file_short_header",
        "header",
        "not a readable NIfTI file",
        case="file_short_header",
        file=short,
    )

    def uncompressed(p: Path) -> None:
        p.write_bytes(gzip.decompress(raw_nifti(p, payload=small).read_bytes()))

    not_gz = _bad_t1(w, "file_not_gzip", uncompressed)
    w.defect(
        "file_not_gzip", "header", "not a readable NIfTI file", case="file_not_gzip", file=not_gz
    )
    mha = _bad_t1(
        w, "file_unknown_ending", lambda p: p.write_bytes(b"ObjectType = Image\n"), ".mha"
    )
    w.defect(
        "file_unknown_ending",
        "naming",
        "not a NIfTI file name (expected .nii or .nii.gz)",
        case="file_unknown_ending",
        file=mha,
    )
    folder = _bad_t1(w, "file_is_folder", lambda p: p.mkdir())
    w.defect("file_is_folder", "naming", "not a file", case="file_is_folder", file=folder)

    missing = w.img_path("file_missing_image", 0)
    w.case("file_missing_image", t1=missing, write=True)
    missing.unlink(missing_ok=True)
    w.defect(
        "file_missing_image", "pairing", "file not found", case="file_missing_image", file=missing
    )

    def truncate(p: Path) -> None:
        raw_nifti(p, image(5))
        data = p.read_bytes()
        p.write_bytes(data[: len(data) // 2])

    trunc = _bad_t1(w, "vox_truncated_gz", truncate)
    w.defect(
        "vox_truncated_gz",
        "voxels",
        "truncated or corrupt voxel data (EOFError",
        case="vox_truncated_gz",
        file=trunc,
    )

    def corrupt(p: Path) -> None:
        raw_nifti(p, image(6))
        data = bytearray(p.read_bytes())
        mid = len(data) // 2
        data[mid : mid + 64] = bytes(b ^ 0xFF for b in data[mid : mid + 64])
        p.write_bytes(bytes(data))

    bad_gz = _bad_t1(w, "vox_corrupt_gz", corrupt)
    w.defect(
        "vox_corrupt_gz",
        "voxels",
        "truncated or corrupt voxel data",
        case="vox_corrupt_gz",
        file=bad_gz,
    )

    def truncate_nii(p: Path) -> None:
        raw_nifti(p, image(7))
        p.write_bytes(p.read_bytes()[:-1000])

    _, trunc_nii = w.pretrain_case("vox_truncated_nii", "vox_truncated_nii.nii")
    truncate_nii(trunc_nii)
    w.defect(
        "vox_truncated_nii",
        "voxels",
        "truncated or corrupt voxel data (the file has",
        manifest="pretrain",
        case="vox_truncated_nii",
        file=trunc_nii,
    )


def voxel_defects(w: Writer) -> None:
    def voxels(cid: str, array: np.ndarray, expected: str) -> None:
        path = _bad_t1(w, cid, lambda p: save(p, array))
        w.defect(cid, "voxels", expected, case=cid, file=path)

    with_nan = image(8)
    with_nan[0, 0, :3] = np.nan
    voxels("vox_nan", with_nan, "contains 3 NaN voxel(s)")
    with_inf = image(9)
    with_inf[1, 1, :2] = np.inf
    voxels("vox_inf", with_inf, "contains 2 Inf voxel(s)")
    voxels("vox_all_zero", np.zeros(SHAPE, np.float32), "image is zero everywhere")
    voxels("vox_constant", np.full(SHAPE, 7, np.int16), "image is constant (every voxel is 7)")


def geometry_defects(w: Writer) -> None:
    moved = np.eye(4)
    moved[:3, 3] = [0.0, 0.0, 4.0]

    def disagree(p: Path) -> None:
        # qform 4 mm off, sform on the grid of the other files: nibabel sees no grid problem.
        raw_nifti(p, image(11), affine=moved, fields={"srow_z": [0.0, 0.0, 1.0, 0.0]})

    path = _bad_t1(w, "geo_qform_sform", disagree)
    w.defect(
        "geo_qform_sform",
        "geometry",
        "qform and sform disagree by up to 4 mm: nibabel and this toolkit use the sform",
        case="geo_qform_sform",
        file=path,
    )
    # The label's sform matches the images; its qform does not: readers preferring the qform
    # would put the label 4 mm off.
    seg = raw_nifti(
        w.lab_path("geo_label_qform"),
        label(),
        affine=moved,
        fields={"srow_z": [0.0, 0.0, 1.0, 0.0]},
    )
    w.case("geo_label_qform", seg=seg)
    w.defect(
        "geo_label_qform", "geometry", "qform and sform disagree", case="geo_label_qform", file=seg
    )

    path = _bad_t1(
        w,
        "geo_nan_affine",
        lambda p: raw_nifti(
            p, image(12), fields={"qform_code": 0, "srow_y": [0.0, np.nan, 0.0, 0.0]}
        ),
    )
    w.defect(
        "geo_nan_affine",
        "geometry",
        "(1, nan, 1) mm from the affine is not positive",
        case="geo_nan_affine",
        file=path,
    )
    path = _bad_t1(
        w,
        "geo_singular_affine",
        lambda p: raw_nifti(p, image(13), fields={"qform_code": 0, "srow_y": [0.0, 0.0, 0.0, 0.0]}),
    )
    w.defect(
        "geo_singular_affine",
        "geometry",
        "(1, 0, 1) mm from the affine is not positive",
        case="geo_singular_affine",
        file=path,
    )
    path = _bad_t1(
        w,
        "geo_no_orientation",
        lambda p: raw_nifti(p, image(14), fields={"qform_code": 0, "sform_code": 0}),
    )
    w.defect(
        "geo_no_orientation",
        "geometry",
        "no orientation (qform_code and sform_code are 0)",
        case="geo_no_orientation",
        file=path,
        severity="warning",
    )

    aniso = np.diag([1.0, 1.0, 6.0, 1.0])
    t1 = save(w.img_path("geo_anisotropic", 0), image(15), affine=aniso)
    t2 = save(w.img_path("geo_anisotropic", 1), image(16), affine=aniso)
    seg = save(w.lab_path("geo_anisotropic"), label(), affine=aniso)
    w.case("geo_anisotropic", t1=t1, t2=t2, seg=seg)
    w.defect(
        "geo_anisotropic",
        "geometry",
        "mm is anisotropic (6:1, more than 5:1)",
        case="geo_anisotropic",
        file=t1,
        severity="warning",
    )

    t2 = save(w.img_path("geo_channel_shape", 1), image(17, (8, 8, 9)))
    w.case("geo_channel_shape", t2=t2)
    w.defect(
        "geo_channel_shape",
        "geometry",
        "channel T2 is on a different grid than channel T1: shape (8, 8, 9)",
        case="geo_channel_shape",
        file=t2,
    )
    t2 = save(w.img_path("geo_channel_affine", 1), image(18), affine=moved)
    w.case("geo_channel_affine", t2=t2)
    w.defect(
        "geo_channel_affine",
        "geometry",
        "channel T2 is on a different grid than channel T1: affines differ by up to 4 mm",
        case="geo_channel_affine",
        file=t2,
    )
    seg = save(w.lab_path("geo_label_shape"), label((9, 8, 8)))
    w.case("geo_label_shape", seg=seg)
    w.defect(
        "geo_label_shape",
        "geometry",
        "label grid differs from the image grid (T1): shape (9, 8, 8)",
        case="geo_label_shape",
        file=seg,
    )
    seg = save(w.lab_path("geo_label_affine"), label(), affine=np.diag([1.0, 1.1, 1.0, 1.0]))
    w.case("geo_label_affine", seg=seg)
    w.defect(
        "geo_label_affine",
        "geometry",
        "label grid differs from the image grid (T1): affines differ",
        case="geo_label_affine",
        file=seg,
    )


def label_defects(w: Writer) -> None:
    def bad_label(cid: str, array: np.ndarray, expected: str) -> None:
        seg = save(w.lab_path(cid), array)
        w.case(cid, seg=seg)
        w.defect(cid, "labels", expected, case=cid, file=seg)

    lab = label()
    bad_label(
        "lab_undeclared",
        np.where(lab == 2, 5, lab).astype(np.uint8),
        "label value(s) [5] not in the declared labels [0, 1, 2]",
    )
    bad_label(
        "lab_negative",
        np.where(lab == 2, -1, lab.astype(np.int16)),
        "label value(s) [-1] not in the declared labels",
    )
    bad_label(
        "lab_fraction",
        np.where(lab == 2, 1.5, lab).astype(np.float32),
        "1 non-integer label value(s), e.g. (1.5)",
    )
    bad_label("lab_empty", np.zeros(SHAPE, np.uint8), "label map is empty (only background)")
    with_nan = lab.astype(np.float32)
    with_nan[0, 0, 0] = np.nan
    bad_label("lab_nan", with_nan, "contains 1 NaN voxel(s)")
    bad_label(
        "lab_4d", np.stack([lab, lab], axis=-1), "expected a 3D volume, got shape (8, 8, 8, 2)"
    )

    w.case("lab_missing_train", seg=None, split="train")
    w.defect(
        "lab_missing_train",
        "labels",
        "no label file, but only test cases may be unlabelled (split: train)",
        case="lab_missing_train",
    )
    missing = w.lab_path("lab_file_missing")
    w.case("lab_file_missing", seg=missing)
    w.defect("lab_file_missing", "pairing", "file not found", case="lab_file_missing", file=missing)

    # A label file in the unlabelled pretraining manifest.
    seg = save(w.root / PRETRAIN / "pre_labelled_seg.nii.gz", label())
    save(w.root / PRETRAIN / "pre_labelled.nii.gz", image(20))
    w.pretrain_cases.append(
        {"id": "pre_labelled", "images": "pre_labelled.nii.gz", "label": "pre_labelled_seg.nii.gz"}
    )
    w.defect(
        "lab_in_unlabelled_manifest",
        "labels",
        "has a label file, but the manifest declares no labels",
        manifest="pretrain",
        case="pre_labelled",
        file=seg,
    )


def pairing_and_naming_defects(w: Writer) -> None:
    t1 = w.img_path("pair_label_is_image", 0)
    w.case("pair_label_is_image", seg=t1)
    w.defect(
        "pair_label_is_image",
        "pairing",
        "the label file is also an image of this case",
        case="pair_label_is_image",
        file=t1,
    )

    w.case("Dup_Case")
    w.case("dup_case")
    w.defect("id_letter_case", "dataset", "case ids Dup_Case, dup_case differ only in letter case")
    w.case("dup_twice")
    w.case("dup_twice", write=False)
    w.defect("id_duplicate", "dataset", "case id appears 2 times", case="dup_twice")
    w.case(
        "id/with_slash",
        t1=w.img_path("id_slash", 0),
        t2=w.img_path("id_slash", 1),
        seg=w.lab_path("id_slash"),
    )
    for path in (w.img_path("id_slash", 0), w.img_path("id_slash", 1)):
        save(path, image(w.seed()))
    save(w.lab_path("id_slash"), label())
    w.defect(
        "id_not_a_file_name",
        "naming",
        "case id 'id/with_slash' cannot be a file name",
        case="id/with_slash",
    )

    lower = save(w.img_path("path_case", 1), image(21))
    upper = save(w.img_path("PATH_CASE", 1), image(22))
    w.case("path_case_a", t2=lower)
    w.case("path_case_b", t2=upper)
    w.defect(
        "path_letter_case",
        "naming",
        "file name differs from path_case_0001.nii.gz only in letter case",
        file=upper,
    )

    w.case("split_train", subject="subject-twice", split="train")
    w.case("split_test", subject="subject-twice", split="test")
    w.defect(
        "subject_in_two_splits",
        "dataset",
        "subject subject-twice is in more than one split "
        "(leakage): test: split_test; train: split_train",
    )
    w.case("leak_test", subject="pre-subject-0", split="test")
    w.defect(
        "test_subject_in_pretraining",
        "dataset",
        "test subject pre-subject-0 is also in pretraining manifest pretrain (leakage)",
        case="leak_test",
    )


def dataset_defects(w: Writer) -> list[Path]:
    gaps = [
        {
            "id": "gap_1",
            "images": {
                "T1": f"{DATASET}/imagesTr/good_000_0000.nii.gz",
                "T2": f"{DATASET}/imagesTr/good_000_0001.nii.gz",
            },
            "label": "gaps/gap_1.nii.gz",
            "split": "train",
        }
    ]
    save(w.root / "gaps" / "gap_1.nii.gz", label(classes=(1,)))
    labels = {0: "background", 1: "csf", 3: "lesion"}
    write_manifest(w.root / "gaps.yaml", "gaps", gaps, labels=labels, root=".")
    w.defect(
        "labels_not_consecutive",
        "labels",
        "declared label values [0, 1, 3] are not "
        "consecutive from 0 (nnU-Net needs 0..N): missing 2",
        manifest="gaps",
    )
    w.defect(
        "declared_class_unused",
        "labels",
        "declared class(es) 3 (lesion) occur in none of the 1 readable label map(s)",
        manifest="gaps",
        severity="warning",
    )

    broken = w.root / "broken.yaml"
    broken.write_text("name: broken\nbogus: 1\ncases: [{id: a, images: a.nii.gz}]\n")
    w.defect(
        "manifest_schema", "dataset", "unknown top-level field(s) bogus", manifest="broken.yaml"
    )
    write_manifest(
        w.root / "noroot.yaml",
        "noroot",
        [{"id": "x", "images": "x.nii.gz"}],
        channels=("T1",),
        root="no_such_folder",
    )
    w.defect(
        "manifest_root_missing", "dataset", "no_such_folder is not a folder", manifest="noroot"
    )
    return [w.root / "gaps.yaml", broken, w.root / "noroot.yaml"]
