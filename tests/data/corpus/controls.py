"""Valid but unusual cases: none may be flagged (the thin-slice one may warn of anisotropy)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from tests.data.corpus.nifti import image, label, raw_nifti, rotation, save
from tests.data.corpus.records import SHAPE
from tests.data.corpus.writer import Writer

# --------------------------------------------------------------------------------------------------
# Controls: valid but unusual; none may be flagged


def add_controls(w: Writer) -> None:
    def two(cid: str, t1: np.ndarray, t2: np.ndarray | None = None, **kw: Any) -> tuple[Path, Path]:
        a = save(w.img_path(cid, 0), t1, **kw)
        b = save(w.img_path(cid, 1), image(w.seed()) if t2 is None else t2, **kw)
        return a, b

    rng = np.random.default_rng(7)
    t1, t2 = two("ctl_int8", rng.integers(-100, 100, SHAPE).astype(np.int8))
    w.control("int8 voxels", w.case("ctl_int8", t1=t1, t2=t2))

    big = nib.Nifti1Header(endianness=">")
    arr = image(w.seed()).astype(">f4")
    t1, t2 = two("ctl_bigendian", arr, arr[::-1].copy(), header=big)
    seg = save(w.lab_path("ctl_bigendian"), label().astype(">i2"), header=big)
    assert nib.load(str(t1)).header.endianness == ">"
    w.control("big-endian", w.case("ctl_bigendian", t1=t1, t2=t2, seg=seg))

    scaled = rng.integers(-2000, 2000, SHAPE).astype(np.int16)
    fields = {"scl_slope": 0.5, "scl_inter": -3.0}
    t1 = raw_nifti(w.img_path("ctl_scaled", 0), scaled, fields=fields)
    t2 = raw_nifti(w.img_path("ctl_scaled", 1), scaled[::-1].copy(), fields=fields)
    assert nib.load(str(t1)).dataobj.slope == 0.5  # the scaling survives: a real control
    w.control("scaled int16", w.case("ctl_scaled", t1=t1, t2=t2))

    oblique = np.eye(4)
    oblique[:3, :3] = rotation(30.0, 15.0) @ np.diag([1.0, 1.2, 0.9])
    oblique[:3, 3] = [-90.0, 110.0, -70.0]
    t1, t2 = two("ctl_oblique", image(w.seed()), affine=oblique)
    seg = save(w.lab_path("ctl_oblique"), label(), affine=oblique)
    w.control("oblique affine", w.case("ctl_oblique", t1=t1, t2=t2, seg=seg))

    las = np.diag([-1.0, 1.0, 1.0, 1.0])
    las[:3, 3] = [7.0, 0.0, 0.0]
    t1, t2 = two("ctl_las", image(w.seed()), affine=las)
    seg = save(w.lab_path("ctl_las"), label(), affine=las)
    w.control("LAS affine", w.case("ctl_las", t1=t1, t2=t2, seg=seg))

    cid = "ctl_Käse_ñ_被験者"
    t1, t2 = two(cid, image(w.seed()))
    seg = save(w.lab_path(cid), label())
    w.control("non-ASCII names", w.case(cid, t1=t1, t2=t2, seg=seg, subject="sujet-é"))

    thin = np.diag([0.1, 0.1, 10.0, 1.0])
    t1, t2 = two("ctl_thin_slices", image(w.seed()), affine=thin)
    seg = save(w.lab_path("ctl_thin_slices"), label(), affine=thin)
    w.control(
        "0.1 x 0.1 x 10 mm voxels",
        w.case("ctl_thin_slices", t1=t1, t2=t2, seg=seg),
        allowed=("anisotropic (100:1",),
    )

    seg = save(w.lab_path("ctl_some_classes"), label(classes=(1,)))
    w.control("label map using only class 1", w.case("ctl_some_classes", seg=seg))

    t1, t2 = two("ctl_uint16_f64", rng.integers(0, 60000, SHAPE).astype(np.uint16), image(3) * 1.0)
    seg = save(w.lab_path("ctl_uint16_f64"), label().astype(np.float32))
    w.control(
        "uint16 + float64 images, float32 label", w.case("ctl_uint16_f64", t1=t1, t2=t2, seg=seg)
    )

    entry, path = w.pretrain_case("ctl_plain_nii", "ctl_plain_nii.nii")
    save(path, image(w.seed()))
    w.control("uncompressed .nii", entry)

    t1, t2 = two("ctl_nifti2", image(w.seed()), cls=nib.Nifti2Image)
    seg = save(w.lab_path("ctl_nifti2"), label(), cls=nib.Nifti2Image)
    w.control("NIfTI-2", w.case("ctl_nifti2", t1=t1, t2=t2, seg=seg))

    t1, t2 = two("ctl_trailing_1", image(w.seed())[..., None])
    w.control("trailing singleton dimension", w.case("ctl_trailing_1", t1=t1, t2=t2))

    t1 = raw_nifti(w.img_path("ctl_sform_only", 0), image(w.seed()), fields={"qform_code": 0})
    t2 = raw_nifti(w.img_path("ctl_sform_only", 1), image(w.seed()), fields={"qform_code": 0})
    w.control("sform only", w.case("ctl_sform_only", t1=t1, t2=t2))

    t1 = raw_nifti(w.img_path("ctl_qform_only", 0), image(w.seed()), fields={"sform_code": 0})
    t2 = raw_nifti(w.img_path("ctl_qform_only", 1), image(w.seed()), fields={"sform_code": 0})
    w.control("qform only", w.case("ctl_qform_only", t1=t1, t2=t2))

    odd = (5, 9, 7)
    t1, t2 = two("ctl_odd_shape", image(w.seed(), odd), image(w.seed(), odd))
    seg = save(w.lab_path("ctl_odd_shape"), label(odd))
    w.control("odd non-cubic shape", w.case("ctl_odd_shape", t1=t1, t2=t2, seg=seg))

    cid = "ctl with spaces"
    t1, t2 = two(cid, image(w.seed()))
    seg = save(w.lab_path(cid), label())
    w.control("spaces in names", w.case(cid, t1=t1, t2=t2, seg=seg))

    w.control("unlabelled test case", w.case("ctl_test_unlabelled", seg=None, split="test"))
