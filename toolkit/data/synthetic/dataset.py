"""Synthetic data sets: subject seeds, manifests, and the NIfTI files ``mae3d synth`` writes."""

from __future__ import annotations

import csv
import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from toolkit.data.io import save_volume
from toolkit.data.manifest import Case, Manifest, save_manifest
from toolkit.data.synthetic.anatomy import LABEL_NAMES, LESION
from toolkit.data.synthetic.subject import _as_spacing, synthesize_subject
from toolkit.errors import ConfigError

PathLike = str | os.PathLike[str]

CHANNEL = "image"  # one channel of mixed contrasts, as in the paper's pretraining data

# Defaults of the demo data set written by ``mae3d synth`` and described by data_manifests/.
DEMO_NUM_SUBJECTS = 12
DEMO_NUM_LABELLED = 8
DEMO_SEED = 0
DEMO_SPACING_MM = 2.0
DEMO_TEST_FRACTION = 0.25
DEMO_NAME = "demo"
DEMO_ROOT = "${MAE3D_DEMO_DATA:-../demo_out/data}"


@dataclass(frozen=True)
class _Job:
    subject: str
    role: str  # "pretrain" or "labelled"
    seed: int
    split: str | None


def subject_seed(seed: int, role: str, index: int) -> int:
    """The seed of subject ``index`` (0-based) of ``role`` in a data set drawn with ``seed``.

    Pretraining and labelled subjects come from separate streams, so changing the number of one
    leaves the other's subjects unchanged.
    """
    stream = {"pretrain": 0, "labelled": 1}[role]
    return int(np.random.SeedSequence([seed, stream, index]).generate_state(1)[0])


def _plan(num_subjects: int, num_labelled: int, seed: int, test_fraction: float) -> list[_Job]:
    if isinstance(num_subjects, bool) or not isinstance(num_subjects, int) or num_subjects < 0:
        raise ConfigError(f"num_subjects: must be an integer >= 0, got {num_subjects!r}")
    if isinstance(num_labelled, bool) or not isinstance(num_labelled, int) or num_labelled < 0:
        raise ConfigError(f"num_labelled: must be an integer >= 0, got {num_labelled!r}")
    if num_labelled == 1:
        raise ConfigError("num_labelled: must be 0 or >= 2 (at least one train and one test case)")
    if num_subjects + num_labelled == 0:
        raise ConfigError("num_subjects, num_labelled: nothing to write (both are 0)")
    if not (0.0 < test_fraction < 1.0):
        raise ConfigError(f"test_fraction: must be in (0, 1), got {test_fraction!r}")
    width = max(3, len(str(num_subjects + num_labelled)))
    jobs = [
        _Job(f"sub-{i + 1:0{width}d}", "pretrain", subject_seed(seed, "pretrain", i), None)
        for i in range(num_subjects)
    ]
    num_test = min(num_labelled - 1, max(1, round(test_fraction * num_labelled)))
    test = set(np.random.default_rng([seed, 2]).permutation(num_labelled)[:num_test].tolist())
    jobs += [
        _Job(
            f"sub-{num_subjects + j + 1:0{width}d}",
            "labelled",
            subject_seed(seed, "labelled", j),
            "test" if j in test else "train",
        )
        for j in range(num_labelled)
    ]
    return jobs


_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _image_path(subject: str) -> Path:
    return Path("images") / f"{subject}.nii.gz"


def _label_path(subject: str) -> Path:
    return Path("labels") / f"{subject}.nii.gz"


def synthetic_manifests(
    num_subjects: int,
    num_labelled: int,
    seed: int,
    *,
    lesions: bool = False,
    test_fraction: float = DEMO_TEST_FRACTION,
    name: str = "synth",
    root: str = ".",
) -> dict[str, Manifest]:
    """The manifests :func:`write_synthetic_dataset` writes, without drawing any image.

    Returns:
        ``{"pretrain": ..., "labelled": ...}`` (a key is absent when its count is 0). The
        pretraining manifest is unlabelled and has no splits; the labelled one has splits train
        and test. The two share no subject.
    """
    jobs = _plan(num_subjects, num_labelled, seed, test_fraction)
    labels = {k: v for k, v in LABEL_NAMES.items() if lesions or k != LESION}
    out: dict[str, Manifest] = {}
    pre = [j for j in jobs if j.role == "pretrain"]
    lab = [j for j in jobs if j.role == "labelled"]
    if pre:
        out["pretrain"] = Manifest(
            name=f"{name}_pretrain",
            root=Path(root),
            root_spec=root,
            channels=(CHANNEL,),
            cases=tuple(
                Case(case_id=j.subject, subject=j.subject, images={CHANNEL: _image_path(j.subject)})
                for j in pre
            ),
            extra={"description": f"Synthetic unlabelled brain MRI (mae3d synth, seed {seed})."},
        )
    if lab:
        out["labelled"] = Manifest(
            name=f"{name}_labelled",
            root=Path(root),
            root_spec=root,
            channels=(CHANNEL,),
            labels=labels,
            cases=tuple(
                Case(
                    case_id=j.subject,
                    subject=j.subject,
                    images={CHANNEL: _image_path(j.subject)},
                    label=_label_path(j.subject),
                    split=j.split,
                )
                for j in lab
            ),
            extra={"description": f"Synthetic labelled brain MRI (mae3d synth, seed {seed})."},
        )
    return out


def _write_one(
    job: _Job,
    out_dir: Path,
    lesions: bool,
    spacing_mm: float | Sequence[float] | None,
    heads: bool = False,
) -> dict[str, Any]:
    subject = synthesize_subject(job.seed, lesions=lesions, spacing_mm=spacing_mm, head=heads)
    save_volume(subject.image, subject.affine, out_dir / _image_path(job.subject))
    if job.role == "labelled":
        save_volume(subject.label, subject.affine, out_dir / _label_path(job.subject))
    return {
        "subject": job.subject,
        "role": job.role,
        "split": job.split or "",
        "seed": job.seed,
        "contrast": subject.contrast,
        "spacing_mm": "x".join(f"{s:.3f}" for s in subject.spacing_mm),
        "shape": "x".join(str(n) for n in subject.image.shape),
    }


def write_synthetic_dataset(
    out_dir: PathLike,
    num_subjects: int,
    num_labelled: int,
    seed: int,
    *,
    lesions: bool = False,
    heads: bool = False,
    spacing_mm: float | Sequence[float] | None = None,
    test_fraction: float = DEMO_TEST_FRACTION,
    name: str = "synth",
    workers: int | None = None,
    progress: bool = True,
) -> dict[str, Path]:
    """Write a synthetic data set: NIfTI images and labels, a subject table and two manifests.

    ``num_subjects`` unlabelled pretraining subjects and ``num_labelled`` other, labelled subjects
    (no subject is in both) go to ``out_dir/images/sub-XXX.nii.gz`` and, for labelled subjects,
    ``out_dir/labels/sub-XXX.nii.gz``. ``subjects.tsv`` lists each subject's seed, contrast,
    spacing and shape. The manifests ``pretrain.yaml`` and ``labelled.yaml`` (root ``.``) are
    removed first and written last, so an interrupted run never leaves a manifest that points at
    missing files.

    Args:
        out_dir: output folder (created).
        num_subjects: unlabelled pretraining subjects.
        num_labelled: labelled subjects, 0 or >= 2; ``round(test_fraction * num_labelled)`` of
            them (at least one) are split ``test``, the others ``train``.
        seed: data set seed; subject seeds are derived from it (:func:`subject_seed`).
        lesions: white-matter lesions (label 4) in every subject.
        heads: wrap every brain in a head (skull, scalp, eyes, neck; labels unchanged), like a
            raw scan before skull stripping (:mod:`toolkit.data.synthetic.head`).
        spacing_mm: voxel spacing for every subject, or ``None`` to draw it per subject.
        test_fraction: fraction of labelled subjects in the test split.
        name: manifests are named ``{name}_pretrain`` and ``{name}_labelled``.
        workers: processes (default: CPU count, at most one per subject); 1 runs in-process.
        progress: show a tqdm progress bar.

    Returns:
        Paths keyed ``pretrain``, ``labelled`` (when written) and ``subjects`` (the table).

    Example:
        >>> import tempfile
        >>> paths = write_synthetic_dataset(tempfile.mkdtemp(), 2, 2, seed=0, spacing_mm=4.0,
        ...                                 workers=1, progress=False)
        >>> sorted(paths)
        ['labelled', 'pretrain', 'subjects']
    """
    from tqdm.auto import tqdm

    out = Path(out_dir)
    manifests = synthetic_manifests(
        num_subjects, num_labelled, seed, lesions=lesions, test_fraction=test_fraction, name=name
    )
    spacing = None if spacing_mm is None else _as_spacing(spacing_mm)
    jobs = _plan(num_subjects, num_labelled, seed, test_fraction)
    if workers is not None and (isinstance(workers, bool) or workers < 1):
        raise ConfigError(f"workers: must be an integer >= 1, got {workers!r}")
    out.mkdir(parents=True, exist_ok=True)
    for key in ("pretrain", "labelled"):
        (out / f"{key}.yaml").unlink(missing_ok=True)

    rows: dict[str, dict[str, Any]] = {}
    num_workers = min(len(jobs), workers if workers is not None else (os.cpu_count() or 1))
    bar = tqdm(total=len(jobs), desc="synth", unit="subject", disable=not progress)
    if num_workers <= 1:
        for job in jobs:
            rows[job.subject] = _write_one(job, out, lesions, spacing, heads)
            bar.update()
    else:
        # spawn, not fork: the caller may hold torch's thread pools, which fork can deadlock.
        # Workers start with one BLAS thread each, so that W workers use W cores, not W x cores.
        context = multiprocessing.get_context("spawn")
        saved = {k: os.environ.get(k) for k in _THREAD_VARS}
        os.environ.update({k: "1" for k in _THREAD_VARS})
        try:
            with ProcessPoolExecutor(num_workers, mp_context=context) as pool:
                futures: list[Future[dict[str, Any]]] = [
                    pool.submit(_write_one, job, out, lesions, spacing, heads) for job in jobs
                ]
                for fut in as_completed(futures):
                    row = fut.result()
                    rows[row["subject"]] = row
                    bar.update()
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
    bar.close()

    table = out / "subjects.tsv"
    tmp = table.with_name(table.name + ".tmp")
    with tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(next(iter(rows.values()))), delimiter="\t")
        writer.writeheader()
        writer.writerows(rows[j.subject] for j in jobs)
    tmp.replace(table)
    paths = {key: save_manifest(m, out / f"{key}.yaml") for key, m in manifests.items()}
    paths["subjects"] = table
    return paths


def write_demo_manifests(directory: PathLike, root: str = DEMO_ROOT) -> dict[str, Path]:
    """Write ``demo_pretrain.yaml``, ``demo_labelled.yaml`` and ``mni152.yaml`` into ``directory``.

    They list what ``mae3d synth`` writes with its default arguments, with ``root`` pointing at
    that folder; the copies in data_manifests/ are made by this function.
    """
    from toolkit.data.mni import mni152_manifest

    manifests = synthetic_manifests(
        DEMO_NUM_SUBJECTS, DEMO_NUM_LABELLED, DEMO_SEED, name=DEMO_NAME, root=root
    )
    directory = Path(directory)
    paths = {
        key: save_manifest(m, directory / f"{DEMO_NAME}_{key}.yaml") for key, m in manifests.items()
    }
    paths["mni152"] = save_manifest(mni152_manifest(root), directory / "mni152.yaml")
    return paths
