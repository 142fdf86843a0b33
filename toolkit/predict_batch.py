"""``mae3d predict``: segment a batch of unlabelled scans, the way ``nnUNetv2_predict`` does.

Inputs (:func:`find_cases`): a folder of NIfTI files, a glob, a single file, a manifest YAML, or an
nnU-Net ``imagesTs`` folder. Files whose names all end in ``_XXXX`` (channel index, with at least
one ``_0000``) are grouped into multi-channel cases by
:func:`toolkit.data.importers.group_channel_files`, as nnU-Net does; otherwise each file is a
one-channel case named after the file.

Outputs in ``OUT``:

* ``<case>.nii.gz``: uint8 label map on the case's original grid, with the header of its first
  channel file (affine, qform/sform codes, units);
* ``<case>.npz`` with ``--save-probabilities``: ``probabilities`` (K, D, H, W) float16 on the
  original grid, ``affine`` (4, 4) and ``labels`` (K,) label values;
* ``volumes.csv``: one row per case x class (``case, label, label_name, volume_ml``), counting
  voxels of the label map times the voxel volume of the original grid;

Every file is written under a hidden temporary name and renamed into place, and stale temporaries
of a killed run are removed at the start, so ``OUT`` never holds a half-written file. A case that
cannot be read or preprocessed is skipped with one line naming it and why; the rest go on.

With ``workers`` > 0 reading + preprocessing of the next cases and inversion + writing of finished
ones run in a thread pool while the network works on the current case (numpy, scipy, zlib and
torch release the GIL for the heavy parts).
"""

from __future__ import annotations

import glob
import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from toolkit.errors import DataError, ManifestError, ToolkitError

if TYPE_CHECKING:
    import pandas as pd

    from toolkit.predict import CasePrediction, Predictor

PathLike = str | os.PathLike[str]

VOLUMES_FILE = "volumes.csv"
VOLUME_COLUMNS = ("case", "label", "label_name", "volume_ml")
_NIFTI = (".nii.gz", ".nii")
# What reading a bad file can raise besides DataError (nibabel, numpy, zlib, memory).
_CASE_ERRORS = (ToolkitError, OSError, ValueError, EOFError, MemoryError)


@dataclass(frozen=True)
class InputCase:
    """One case to segment.

    Attributes:
        case_id: output name (``OUT/<case_id>.nii.gz``).
        files: channel files in channel order.
        problem: why the case cannot be run (reported and skipped in order), or None.
    """

    case_id: str
    files: tuple[Path, ...]
    problem: str | None = None


@dataclass
class PredictReport:
    """What :func:`predict` did.

    Attributes:
        predicted: case ids segmented in this call.
        existing: case ids skipped because their output existed (``skip_existing``).
        failed: ``(case id, reason)`` of every case that was skipped for an error.
        seconds: wall time.
        volumes: the ``volumes.csv`` table.
        timings: seconds per stage (``preprocess``, ``network``, ``invert``, ``write``).
    """

    predicted: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    volumes: Any = None
    timings: dict[str, float] = field(default_factory=dict)

    def summary(self, out_dir: PathLike) -> str:
        """One line: counts, time, speed and where the results are."""
        n = len(self.predicted)
        rate = f", {self.seconds / n:.2f} s/case" if n else ""
        parts = [f"predicted {n} case(s) in {self.seconds:.1f} s{rate}"]
        if self.existing:
            parts.append(f"{len(self.existing)} already done")
        parts.append(f"{len(self.failed)} failed")
        return ", ".join(parts) + f" -> {out_dir}"


# --------------------------------------------------------------------------------------------------
# Inputs


def _strip(name: str) -> str:
    for ending in _NIFTI:
        if name.endswith(ending):
            return name[: -len(ending)]
    return name


def find_cases(spec: PathLike, num_channels: int) -> list[InputCase]:
    """The cases of an input folder, glob, file or manifest (see the module docstring).

    Args:
        spec: folder, glob pattern, NIfTI file, or manifest ``.yaml``/``.yml``.
        num_channels: channels the run expects (a case with another count gets a ``problem``).

    Raises:
        DataError: nothing matches, or a manifest that cannot be read.
    """
    from toolkit.data.importers import group_channel_files

    text = str(spec)
    path = Path(os.path.expanduser(text))
    if path.is_file() and path.suffix in (".yaml", ".yml"):
        return _manifest_cases(path, num_channels)
    if path.is_dir():
        files = [
            f
            for f in sorted(path.iterdir())
            if f.is_file() and f.name.endswith(_NIFTI) and not f.name.startswith(".")
        ]
    elif path.is_file():
        files = [path]
    elif any(ch in text for ch in "*?["):
        files = sorted(
            Path(p)
            for p in glob.glob(os.path.expanduser(text), recursive=True)
            if p.endswith(_NIFTI) and Path(p).is_file()
        )
    else:
        raise DataError(f"{spec}: no such folder, file or glob")
    if not files:
        raise DataError(f"{spec}: no .nii/.nii.gz files")

    groups = group_channel_files(files)
    if groups is not None and any(0 in ch for ch in groups.values()):
        cases = []
        for case_id, channels in groups.items():
            expected = list(range(num_channels))
            problem = None
            if sorted(channels) != expected:
                have = ", ".join(f"_{i:04d}" for i in channels)
                problem = (
                    f"{len(channels)} channel file(s) ({have}), but the run expects "
                    f"{num_channels} (_0000.._{num_channels - 1:04d})"
                )
            cases.append(InputCase(case_id, tuple(channels.values()), problem))
        return cases
    stems = [_strip(f.name) for f in files]
    if len(set(stems)) != len(stems):
        root = Path(os.path.commonpath([str(f.parent) for f in files]))
        stems = [_strip(f.relative_to(root).as_posix()).replace("/", "_") for f in files]
    problem = None
    if num_channels != 1:
        problem = (
            f"1 channel file, but the run expects {num_channels} "
            "(name them CASE_0000.nii.gz, CASE_0001.nii.gz, ... or use a manifest)"
        )
    return [InputCase(s, (f,), problem) for s, f in zip(stems, files, strict=True)]


def _manifest_cases(path: Path, num_channels: int) -> list[InputCase]:
    from toolkit.data.manifest import load_manifest

    try:
        m = load_manifest(path)
    except ManifestError as exc:
        raise DataError(str(exc)) from None
    problem = None
    if len(m.channels) != num_channels:
        problem = f"manifest has {len(m.channels)} channel(s), the run expects {num_channels}"
    return [
        InputCase(c.case_id.replace("/", "_"), tuple(m.image_paths(c)), problem) for c in m.cases
    ]


# --------------------------------------------------------------------------------------------------
# Outputs


def label_volumes(
    labels: np.ndarray, affine: np.ndarray, names: dict[int, str], case_id: str
) -> list[dict[str, Any]]:
    """Volume in ml of every class of a label map (voxel count x voxel volume).

    Args:
        labels: (D, H, W) integer label map.
        affine: (4, 4) its affine.
        names: label value -> name (every class gets a row, absent ones 0 ml).
        case_id: value of the ``case`` column.
    """
    voxel_ml = abs(float(np.linalg.det(np.asarray(affine, float)[:3, :3]))) / 1000.0
    counts = np.bincount(np.asarray(labels, np.uint8).ravel(), minlength=256)
    return [
        {
            "case": case_id,
            "label": value,
            "label_name": name,
            "volume_ml": float(counts[value]) * voxel_ml,
        }
        for value, name in sorted(names.items())
    ]


def _save_probabilities(pred: CasePrediction, labels: Sequence[int], path: Path) -> None:
    assert pred.probabilities is not None
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
    try:
        np.savez_compressed(
            tmp,
            probabilities=pred.probabilities,
            affine=np.asarray(pred.affine, np.float64),
            labels=np.asarray(labels, np.int64),
        )
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _remove_stale_temporaries(out: Path) -> None:
    for stale in [*out.glob(".*.tmp.nii.gz"), *out.glob(".*.tmp.nii"), *out.glob(".*.tmp.npz")]:
        stale.unlink(missing_ok=True)


def _write_csv(df: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    df.to_csv(tmp, index=False)
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------------
# The batch


def predict(
    runs: Sequence[PathLike],
    input_spec: PathLike,
    out_dir: PathLike,
    *,
    checkpoint: str = "best",
    overlap: float | None = None,
    mirror_tta: bool | None = None,
    device: str | None = None,
    save_probabilities: bool = False,
    skip_existing: bool = False,
    workers: int = 1,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    predictor: Predictor | None = None,
) -> PredictReport:
    """Segment every case of ``input_spec`` with one run or an ensemble, into ``out_dir``.

    Args:
        runs: fine-tuning run folders (or checkpoint files); several = an ensemble.
        input_spec: folder, glob, NIfTI file, manifest or nnU-Net ``imagesTs`` folder.
        out_dir: output folder (created).
        checkpoint: ``best`` or ``final``.
        overlap: sliding-window overlap (default: the run's ``evaluate.overlap``).
        mirror_tta: mirror test-time augmentation (default: the run's ``evaluate.mirror_tta``).
        device: ``cpu``, ``cuda``, ... (default: the run's ``runtime.device``).
        save_probabilities: also write ``<case>.npz`` with float16 probabilities.
        skip_existing: leave cases whose outputs exist untouched.
        workers: threads reading and writing in the background (0 = all in this thread).
        progress: tqdm progress bar (cases/s).
        log: where the one-line messages about skipped cases go (default: ``tqdm.write``).
        predictor: an already loaded :class:`~toolkit.predict.Predictor` (then ``runs``,
            ``checkpoint``, ``overlap``, ``mirror_tta`` and ``device`` are not used).

    Returns:
        A :class:`PredictReport`; ``volumes.csv`` is written to ``out_dir``.

    Raises:
        DataError: unloadable runs, an ensemble that disagrees, or no input files at all. Bad
            individual cases never raise: they are listed in ``PredictReport.failed``.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    from toolkit.predict import load_predictor

    started = time.perf_counter()
    if predictor is None:
        predictor = load_predictor(
            runs, checkpoint=checkpoint, device=device, overlap=overlap, mirror_tta=mirror_tta
        )
    say = log if log is not None else tqdm.write
    cases = find_cases(input_spec, predictor.num_channels)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(out)
    report = PredictReport()
    volumes: dict[str, list[dict[str, Any]]] = {}
    names = predictor.labels
    label_values = sorted(names)
    write_seconds = [0.0]

    def outputs(case: InputCase) -> list[Path]:
        paths = [out / f"{case.case_id}.nii.gz"]
        if save_probabilities:
            paths.append(out / f"{case.case_id}.npz")
        return paths

    def fail(case: InputCase, reason: str) -> None:
        report.failed.append((case.case_id, reason))
        say(f"skipped {case.case_id}: {reason}")

    todo: list[InputCase] = []
    for case in cases:
        if case.problem is not None:
            fail(case, case.problem)
        elif skip_existing and all(p.is_file() for p in outputs(case)):
            report.existing.append(case.case_id)
        else:
            todo.append(case)

    def read(case: InputCase) -> tuple[np.ndarray, dict[str, Any]]:
        return predictor.preprocess(list(case.files))

    def finish(case: InputCase, labels: np.ndarray, prob: np.ndarray | None, props: Any) -> None:
        pred = predictor.invert(labels, prob, props)
        t0 = time.perf_counter()
        save_label_map_for(case, pred)
        if prob is not None:
            _save_probabilities(pred, label_values, out / f"{case.case_id}.npz")
        write_seconds[0] += time.perf_counter() - t0
        volumes[case.case_id] = label_volumes(pred.labels, pred.affine, names, case.case_id)

    def save_label_map_for(case: InputCase, pred: CasePrediction) -> None:
        from toolkit.predict import save_label_map

        save_label_map(
            pred.labels, pred.affine, out / f"{case.case_id}.nii.gz", reference=case.files[0]
        )

    pool = ThreadPoolExecutor(max_workers=workers) if workers > 0 else None
    bar = tqdm(total=len(todo), desc="predict", unit="case", disable=not progress)
    try:
        writes: deque[tuple[InputCase, Future[None]]] = deque()
        for case, loaded in _prefetch(todo, read, pool, ahead=max(workers, 1)):
            if isinstance(loaded, BaseException):
                fail(case, _reason(loaded))
                bar.update(1)
                continue
            image, props = loaded
            try:
                labels, prob = predictor.segment(image, with_probabilities=save_probabilities)
            except _CASE_ERRORS as exc:
                fail(case, _reason(exc))
                bar.update(1)
                continue
            del image
            if pool is None:
                try:
                    finish(case, labels, prob, props)
                    report.predicted.append(case.case_id)
                except _CASE_ERRORS as exc:
                    fail(case, _reason(exc))
            else:
                writes.append((case, pool.submit(finish, case, labels, prob, props)))
                # Bound memory: at most `workers` finished cases wait for their writes.
                while len(writes) > workers:
                    _collect(writes.popleft(), report, fail)
            bar.update(1)
        while writes:
            _collect(writes.popleft(), report, fail)
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    for case_id in report.existing:
        existing = out / f"{case_id}.nii.gz"
        try:
            from toolkit.data.io import load_volume

            vol = load_volume(existing, dtype=np.uint8)
            volumes[case_id] = label_volumes(vol.array, vol.affine, names, case_id)
        except ToolkitError as exc:
            say(f"volumes.csv: {case_id}: {exc}")
    order = {c.case_id: i for i, c in enumerate(cases)}
    rows = [row for cid in sorted(volumes, key=order.__getitem__) for row in volumes[cid]]
    report.volumes = pd.DataFrame(rows, columns=list(VOLUME_COLUMNS))
    _write_csv(report.volumes, out / VOLUMES_FILE)
    report.seconds = time.perf_counter() - started
    report.timings = {**predictor.timings, "write": write_seconds[0]}
    return report


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _collect(
    item: tuple[InputCase, Future[None]],
    report: PredictReport,
    fail: Callable[[InputCase, str], None],
) -> None:
    case, future = item
    try:
        future.result()
        report.predicted.append(case.case_id)
    except _CASE_ERRORS as exc:
        fail(case, _reason(exc))


def _prefetch(
    cases: Sequence[InputCase],
    read: Callable[[InputCase], Any],
    pool: ThreadPoolExecutor | None,
    ahead: int,
) -> Iterator[tuple[InputCase, Any]]:
    """``(case, read(case) or the exception it raised)`` in order, reading ``ahead`` in advance."""

    def safe(case: InputCase) -> Any:
        try:
            return read(case)
        except _CASE_ERRORS as exc:
            return exc

    if pool is None:
        for case in cases:
            yield case, safe(case)
        return
    pending: deque[tuple[InputCase, Future[Any]]] = deque()
    it = iter(cases)
    for case in it:
        pending.append((case, pool.submit(safe, case)))
        if len(pending) >= ahead:
            break
    while pending:
        case, future = pending.popleft()
        nxt = next(it, None)
        if nxt is not None:
            pending.append((nxt, pool.submit(safe, nxt)))
        yield case, future.result()


__all__ = [
    "VOLUMES_FILE",
    "VOLUME_COLUMNS",
    "InputCase",
    "PredictReport",
    "find_cases",
    "label_volumes",
    "predict",
]
