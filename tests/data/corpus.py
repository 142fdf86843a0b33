"""A generated defect corpus for ``mae3d manifest check`` (issue 10, item 6).

:func:`build_corpus` writes, under one folder, an nnU-Net raw dataset (``Dataset999_Corpus`` with
``dataset.json``, ``imagesTr``, ``labelsTr``) holding tiny 8³ volumes, and the manifests that list
it (written directly, not through an importer):

- ``corpus.yaml``: the labelled two-channel (T1, T2) dataset: good cases, valid-but-unusual
  controls and, with ``defects=True``, one case (or file) per defect;
- ``pretrain.yaml``: an unlabelled pretraining set in ``Pretrain/`` (leakage target; with
  ``defects=True`` one case with a label file);
- with ``defects=True`` also ``gaps.yaml`` (declared labels 0, 1, 3: not consecutive, 3 never
  occurs), ``broken.yaml`` (schema error) and ``noroot.yaml`` (data root missing).

Every :class:`Defect` says which line must name it (manifest, case, file, message fragment,
severity); every :class:`Control` lists its case and files and the warnings it may get. Decision
documented here and in the test: the 0.1 × 0.1 × 10 mm control *is* extremely anisotropic, so it
may carry the anisotropy warning (a warning keeps exit code 0) and nothing else; any error line
or other warning about a control counts as flagging it.

:func:`score_report` reads the printed report and counts defects named / made, controls clean /
made and tracebacks, so a test (or the lead, combining this with an importer run) can quote them.
Nothing here allocates more than a few kB: the oversized headers come with 2 kB of data.

Example:
    >>> corpus = build_corpus(tmp_path)  # doctest: +SKIP
    >>> out = run("mae3d manifest check " + " ".join(map(str, corpus.manifests)))  # doctest: +SKIP
    >>> score_report(corpus, out).summary()  # doctest: +SKIP
    'defects named 58/58, controls clean 17/17, tracebacks 0'
"""

from __future__ import annotations

import gzip
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import yaml

SHAPE = (8, 8, 8)
DATASET = "Dataset999_Corpus"
CHANNELS = ("T1", "T2")
LABELS = {0: "background", 1: "csf", 2: "gm"}
MAIN = "corpus"
PRETRAIN = "Pretrain"


@dataclass(frozen=True)
class Defect:
    """One defect and the report line that must name it.

    Attributes:
        name: unique name (also the case id when the defect is about one case).
        family: header, voxels, geometry, labels, pairing, dataset or naming.
        expected: fragment of the message.
        manifest: the manifest name (or file, for manifests that cannot be loaded) the line starts
            with.
        case: the case id in the line, or None for manifest-level lines.
        file: path relative to the corpus folder that the line names, or None.
        severity: ``"error"`` or ``"warning"``.
    """

    name: str
    family: str
    expected: str
    manifest: str = MAIN
    case: str | None = None
    file: str | None = None
    severity: str = "error"


@dataclass(frozen=True)
class Control:
    """A valid but unusual case: it must get no error line and only the warnings it allows."""

    name: str
    case: str
    files: tuple[str, ...]
    allowed_warnings: tuple[str, ...] = ()


@dataclass
class Corpus:
    """What :func:`build_corpus` wrote: folders, manifests (check them all in one run), records."""

    root: Path
    dataset_dir: Path
    manifests: list[Path]
    defects: list[Defect] = field(default_factory=list)
    controls: list[Control] = field(default_factory=list)


@dataclass(frozen=True)
class Score:
    """How a report fared against a corpus."""

    defects_named: int
    defects_made: int
    controls_clean: int
    controls_made: int
    tracebacks: int
    missed: tuple[Defect, ...]
    flagged: tuple[tuple[Control, str], ...]

    def summary(self) -> str:
        return (
            f"defects named {self.defects_named}/{self.defects_made}, controls clean "
            f"{self.controls_clean}/{self.controls_made}, tracebacks {self.tracebacks}"
        )


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


def _rotation(degrees_z: float, degrees_x: float) -> np.ndarray:
    z, x = math.radians(degrees_z), math.radians(degrees_x)
    rz = np.array([[math.cos(z), -math.sin(z), 0], [math.sin(z), math.cos(z), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, math.cos(x), -math.sin(x)], [0, math.sin(x), math.cos(x)]])
    return rz @ rx


# --------------------------------------------------------------------------------------------------
# The corpus


class _Writer:
    """Collects the files, cases, defects and controls of one corpus."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ds = root / DATASET
        self.cases: list[dict[str, Any]] = []
        self.pretrain_cases: list[dict[str, Any]] = []
        self.defects: list[Defect] = []
        self.controls: list[Control] = []
        self._seed = 10

    def rel(self, path: Path) -> str:
        """``path`` relative to the corpus folder (how the report, run from there, shows it)."""
        return path.relative_to(self.root).as_posix()

    def seed(self) -> int:
        self._seed += 1
        return self._seed

    def img_path(
        self, case: str, channel: int = 0, ending: str = ".nii.gz", split: str = "train"
    ) -> Path:
        folder = "imagesTs" if split == "test" else "imagesTr"
        return self.ds / folder / f"{case}_{channel:04d}{ending}"

    def lab_path(self, case: str, ending: str = ".nii.gz", split: str = "train") -> Path:
        return self.ds / ("labelsTs" if split == "test" else "labelsTr") / f"{case}{ending}"

    def case(
        self,
        cid: str,
        *,
        t1: Path | None = None,
        t2: Path | None = None,
        seg: Path | None | bool = True,
        split: str = "train",
        subject: str | None = None,
        write: bool = True,
    ) -> dict[str, Any]:
        """Add a case; missing files default to good ones named nnU-Net style.

        Test cases live in imagesTs/labelsTs, the others in imagesTr/labelsTr.
        """
        t1 = t1 or self.img_path(cid, 0, split=split)
        t2 = t2 or self.img_path(cid, 1, split=split)
        for path, ch in ((t1, 0), (t2, 1)):
            if write and path == self.img_path(cid, ch, split=split) and not path.exists():
                save(path, image(self.seed()))
        entry: dict[str, Any] = {"id": cid, "subject": subject or cid}
        entry["images"] = {"T1": self.manifest_path(t1), "T2": self.manifest_path(t2)}
        if seg is True:
            seg = self.lab_path(cid, split=split)
            if write and not seg.exists():
                save(seg, label())
        if isinstance(seg, Path):
            entry["label"] = self.manifest_path(seg)
        entry["split"] = split
        self.cases.append(entry)
        return entry

    def manifest_path(self, path: Path) -> str:
        return path.relative_to(self.ds).as_posix()

    def defect(self, name: str, family: str, expected: str, **kw: Any) -> None:
        file = kw.pop("file", None)
        if isinstance(file, Path):
            file = self.rel(file)
        self.defects.append(Defect(name, family, expected, file=file, **kw))

    def control(self, name: str, case: dict[str, Any], allowed: tuple[str, ...] = ()) -> None:
        files = [*case["images"].values()] + ([case["label"]] if "label" in case else [])
        rel = tuple(f"{DATASET}/{f}" for f in dict.fromkeys(files))
        self.controls.append(Control(name, case["id"], rel, allowed))


def build_corpus(root: Path, *, defects: bool = True) -> Corpus:
    """Write the corpus under ``root`` (created) and return what must be found in its report.

    Args:
        root: an empty or new folder; run the check from here so files show relative to it.
        defects: False writes only the good cases and the controls (the report must be clean).

    Returns:
        The manifests to check in one ``mae3d manifest check`` run, the defects, the controls.
    """
    w = _Writer(Path(root))
    w.ds.mkdir(parents=True, exist_ok=True)
    for i in range(3):
        w.case(f"good_{i:03d}")
    # The pretraining set lives next to the nnU-Net folder, not in it (an importer sees only
    # the layout defects made on purpose).
    w.pretrain_cases = [
        {"id": f"pre_{i}", "subject": f"pre-subject-{i}", "images": f"pre_{i}.nii.gz"}
        for i in range(2)
    ]
    for i in range(2):
        save(w.root / PRETRAIN / f"pre_{i}.nii.gz", image(100 + i))
    _controls(w)
    manifests = [w.root / "corpus.yaml", w.root / "pretrain.yaml"]
    if defects:
        _header_defects(w)
        _voxel_defects(w)
        _geometry_defects(w)
        _label_defects(w)
        _pairing_and_naming_defects(w)
        manifests += _dataset_defects(w)
    _write_manifest(w.root / "corpus.yaml", MAIN, w.cases, labels=LABELS)
    _write_manifest(
        w.root / "pretrain.yaml", "pretrain", w.pretrain_cases, channels=("T1",), root=PRETRAIN
    )
    _write_dataset_json(w)
    names = [d.name for d in w.defects]
    assert len(names) == len(set(names)), "defect names must be unique"
    return Corpus(w.root, w.ds, manifests, w.defects, w.controls)


def _write_manifest(
    path: Path,
    name: str,
    cases: list[dict[str, Any]],
    *,
    labels: Mapping[int, str] | None = None,
    channels: Sequence[str] = CHANNELS,
    root: str = DATASET,
) -> None:
    data: dict[str, Any] = {"name": name, "root": root, "channels": list(channels)}
    if labels is not None:
        data["labels"] = dict(labels)
    data["cases"] = cases
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")


def _write_dataset_json(w: _Writer) -> None:
    spec = {
        "channel_names": {str(i): ch for i, ch in enumerate(CHANNELS)},
        "labels": {name: value for value, name in LABELS.items()},
        # nnU-Net counts training cases by their files, not by manifest entries.
        "numTraining": len(
            {p.name.rsplit("_", 1)[0] for p in (w.ds / "imagesTr").iterdir() if "_" in p.name}
        ),
        "file_ending": ".nii.gz",
    }
    (w.ds / "dataset.json").write_text(json.dumps(spec, indent=2))


# --------------------------------------------------------------------------------------------------
# Controls: valid but unusual; none may be flagged


def _controls(w: _Writer) -> None:
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
    oblique[:3, :3] = _rotation(30.0, 15.0) @ np.diag([1.0, 1.2, 0.9])
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

    t1 = save(w.img_path("ctl_plain_nii", 0, ".nii"), image(w.seed()))
    t2 = save(w.img_path("ctl_plain_nii", 1, ".nii"), image(w.seed()))
    seg = save(w.lab_path("ctl_plain_nii", ".nii"), label())
    w.control("uncompressed .nii", w.case("ctl_plain_nii", t1=t1, t2=t2, seg=seg))

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


# --------------------------------------------------------------------------------------------------
# Defects, by family. Each bad file is channel T1 (or the label) of its own case; the rest is good.


def _bad_t1(w: _Writer, cid: str, make: Callable[[Path], object], ending: str = ".nii.gz") -> Path:
    path = w.img_path(cid, 0, ending)
    path.parent.mkdir(parents=True, exist_ok=True)
    make(path)
    w.case(cid, t1=path)
    return path


def _header_defects(w: _Writer) -> None:
    small = image(1).tobytes(order="F")

    def header(cid: str, expected: str, ending: str = ".nii.gz", **fields: Any) -> None:
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

    trunc_nii = _bad_t1(w, "vox_truncated_nii", truncate_nii, ".nii")
    w.defect(
        "vox_truncated_nii",
        "voxels",
        "truncated or corrupt voxel data (the file has",
        case="vox_truncated_nii",
        file=trunc_nii,
    )


def _voxel_defects(w: _Writer) -> None:
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


def _geometry_defects(w: _Writer) -> None:
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


def _label_defects(w: _Writer) -> None:
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


def _pairing_and_naming_defects(w: _Writer) -> None:
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


def _dataset_defects(w: _Writer) -> list[Path]:
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
    _write_manifest(w.root / "gaps.yaml", "gaps", gaps, labels=labels, root=".")
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
    _write_manifest(
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


# --------------------------------------------------------------------------------------------------
# Scoring a report


def score_report(corpus: Corpus, output: str) -> Score:
    """Compare the printed report of one check run (stdout + stderr) with the corpus.

    A defect is named when one line starts with its manifest (after ``"warning: "`` for
    warnings), names its case (``"case ID: "``) and file, and holds its fragment. A control is
    flagged by any error line naming its case or one of its files, or any warning about it that
    is not in :attr:`Control.allowed_warnings`.
    """
    lines = output.splitlines()

    def names(d: Defect, line: str) -> bool:
        prefix = "warning: " if d.severity == "warning" else ""
        if not line.startswith(prefix + d.manifest + ":"):
            return False
        if d.case is not None and f": case {d.case}: " not in line:
            return False
        if d.file is not None and f": file {d.file}: " not in line:
            return False
        return d.expected in line

    missed = tuple(d for d in corpus.defects if not any(names(d, line) for line in lines))
    flagged: list[tuple[Control, str]] = []
    for c in corpus.controls:
        for line in lines:
            about = f": case {c.case}: " in line or any(f": file {f}: " in line for f in c.files)
            if not about:
                continue
            if line.startswith("warning: ") and any(a in line for a in c.allowed_warnings):
                continue
            flagged.append((c, line))
    flagged_names = {c.name for c, _ in flagged}
    return Score(
        defects_named=len(corpus.defects) - len(missed),
        defects_made=len(corpus.defects),
        controls_clean=sum(c.name not in flagged_names for c in corpus.controls),
        controls_made=len(corpus.controls),
        tracebacks=output.count("Traceback (most recent call last)"),
        missed=missed,
        flagged=tuple(flagged),
    )
