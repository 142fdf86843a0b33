"""Writing a patch cache: every case of a manifest, resumable, verified, in worker processes."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from toolkit.data.manifest import Manifest, load_manifest
from toolkit.data.preprocess.case import _check_spacing
from toolkit.data.preprocess.entry import (
    CASES_DIR,
    LOCK_FILE,
    PLAN_FILE,
    PROPERTIES_FILE,
    TMP_PREFIX,
    CaseResult,
    case_dirs,
    make_entry,
    settings_hash,
)
from toolkit.data.preprocess.integrity import (
    disk_full_error,
    is_disk_full,
    read_entry,
    write_json_atomic,
)
from toolkit.data.preprocess.plan import Plan, _fingerprint
from toolkit.errors import DataError, ToolkitError

PathLike = str | os.PathLike[str]

#: The per-case properties :func:`~toolkit.data.preprocess.plan._fingerprint` reads.
_FINGERPRINT_KEYS = (
    "original_spacing_mm",
    "original_shape",
    "resampled_shape",
    "intensity",
    "label_values",
)


@dataclass(frozen=True)
class CacheSettings:
    """What every entry of a cache is made with (part of each entry's settings hash).

    Attributes:
        target_spacing_mm: (3,) spacing of the cache grid in mm.
        image_order: spline order for images (3 = cubic).
        brain_extraction: ``none`` or a brain-extraction method.
    """

    target_spacing_mm: tuple[float, float, float]
    image_order: int = 3
    brain_extraction: str = "none"

    @classmethod
    def checked(
        cls, target_spacing_mm: Sequence[float], image_order: int, brain_extraction: str
    ) -> CacheSettings:
        """Validated settings (DataError / ConfigError naming the bad value)."""
        from toolkit.data.brain_mask import check_brain_extraction

        target = _check_spacing(target_spacing_mm)
        check_brain_extraction(brain_extraction, "brain_extraction")
        if not 0 <= int(image_order) <= 5:
            raise DataError(f"image_order must be in 0..5 (spline order), got {image_order!r}")
        return cls(target, int(image_order), brain_extraction)


@dataclass
class RunOutcome:
    """Counts of one pass over a set of cases (``last_run`` of the plan)."""

    processed: int = 0
    reused: int = 0
    remade: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "processed": self.processed,
            "reused": self.reused,
            "remade": [f"{cid}: {why}" for cid, why in self.remade],
            "seconds": round(self.seconds, 3),
        }


def preprocess_manifest(
    manifest: Manifest | PathLike,
    out_dir: PathLike,
    *,
    target_spacing_mm: Sequence[float] = (1.0, 1.0, 1.0),
    image_order: int = 3,
    workers: int = 2,
    progress: bool = True,
    brain_extraction: str = "none",
) -> Plan:
    """Preprocess every case of a manifest into a patch cache, resuming where a run stopped.

    Cases run in ``workers`` processes (a ``spawn`` pool, safe next to torch and CUDA; 0 or 1 runs
    in this process). A case is written into ``cases/.tmp-*`` and renamed into place with its
    ``done.json`` marker (file sizes and CRC-32 checksums, :mod:`.integrity`), so a killed run
    never leaves a case that reads as valid; leftover temp folders are discarded on the next run.
    Cases whose marker matches the current settings and input files (path, size, mtime) and whose
    files still match their sizes and checksums are reused untouched; a corrupt entry is re-made
    (and listed in ``last_run["remade"]``). ``plan.json`` is removed at the start and written only
    when every case succeeded, so an interrupted or failed run leaves no readable cache. For
    several processes or machines filling one cache see :func:`~.shards.preprocess_shard`.

    Args:
        manifest: a :class:`~toolkit.data.manifest.Manifest` or the path of its YAML file.
        out_dir: cache folder (created if needed).
        target_spacing_mm: (3,) spacing of the cache grid in mm (paper: 1 mm isotropic).
        image_order: spline order for images (3 = cubic).
        workers: number of worker processes.
        progress: show a tqdm progress bar.
        brain_extraction: ``none`` or a brain-extraction method applied to every case
            (:func:`~toolkit.data.preprocess.case.preprocess_case`); recorded in the plan.

    Returns:
        The :class:`Plan` also written to ``out_dir/plan.json`` (its ``last_run`` counts are not
        written, so the same inputs give the same bytes).

    Raises:
        DataError: one or more cases failed (the message lists each case with its file and
            problem; the other cases stay cached and valid), or label values outside the manifest's
            ``labels``.
        CacheDiskFullError: the disk filled up (finished entries are kept, no partial file).
        ToolkitError: another preprocess holds the cache lock, or a worker process died.
        ConfigError: unknown ``brain_extraction``.
    """
    m = manifest if isinstance(manifest, Manifest) else load_manifest(manifest)
    settings = CacheSettings.checked(target_spacing_mm, image_order, brain_extraction)
    out = Path(out_dir)
    started = time.perf_counter()
    _make_cache_dirs(out)
    with cache_lock(out, shared=False):
        _remove_plan(out)
        dirs = case_dirs(m.case_ids)
        remove_temp_dirs(out / CASES_DIR, None)
        outcome = process_cases(m, out, settings, dirs, m.case_ids, workers, progress)
        outcome.seconds = time.perf_counter() - started
        plan = build_plan(m, out, settings, dirs, outcome)
        _guard_disk(
            out,
            lambda: write_json_atomic(out / PLAN_FILE, plan.to_dict()),
            PLAN_FILE,
            lambda: plan_bytes(plan),
        )
    return plan


# --------------------------------------------------------------------------------------------------
# Shared by the unsharded run and the shards


def _make_cache_dirs(out: Path) -> None:
    try:
        (out / CASES_DIR).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ToolkitError(f"{out}: cannot create the cache folder ({exc.strerror})") from None


def _remove_plan(out: Path) -> None:
    (out / PLAN_FILE).unlink(missing_ok=True)


def _guard_disk(out: Path, write: Callable[[], None], what: str, needed: Callable[[], int]) -> None:
    """Run ``write``; a full disk becomes one :class:`CacheDiskFullError` line."""
    try:
        write()
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full_error(out, needed(), what) from None
        raise


def plan_bytes(plan: Plan) -> int:
    """Size of ``plan.json`` for ``plan`` (what a full disk must make room for)."""
    return len(json.dumps(plan.to_dict(), indent=1).encode())


def remove_temp_dirs(cases_root: Path, owners: set[str] | None) -> None:
    """Delete leftover ``.tmp-<dir>-<hex>`` folders (only those of the case folders ``owners``).

    A shard passes its own case folders, so it never deletes a folder another shard is writing.
    """
    with os.scandir(cases_root) as it:
        for entry in it:
            if not entry.name.startswith(TMP_PREFIX):
                continue
            owner = entry.name[len(TMP_PREFIX) : -9]  # strip "-<8 hex>"
            if owners is None or owner in owners:
                shutil.rmtree(entry.path, ignore_errors=True)


def case_jobs(
    m: Manifest,
    out: Path,
    settings: CacheSettings,
    dirs: Mapping[str, str],
    case_ids: Sequence[str] | None = None,
) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """One job dict per case (with its settings hash) and the cases whose inputs cannot be read."""
    wanted = None if case_ids is None else set(case_ids)
    jobs: list[dict[str, Any]] = []
    failures: list[tuple[str, str]] = []
    for case in m.cases:
        if wanted is not None and case.case_id not in wanted:
            continue
        label = m.label_path(case)
        job: dict[str, Any] = {
            "case_id": case.case_id,
            "dir": str(out / CASES_DIR / dirs[case.case_id]),
            "images": [str(p) for p in m.image_paths(case)],
            "label": None if label is None else str(label),
            "target": list(settings.target_spacing_mm),
            "image_order": settings.image_order,
            "labels": None if m.labels is None else sorted(int(k) for k in m.labels),
            "brain_extraction": settings.brain_extraction,
        }
        try:
            job["settings_hash"] = settings_hash(job)
        except DataError as exc:
            failures.append((case.case_id, str(exc)))
            continue
        jobs.append(job)
    return jobs, failures


def process_cases(
    m: Manifest,
    out: Path,
    settings: CacheSettings,
    dirs: Mapping[str, str],
    case_ids: Sequence[str],
    workers: int,
    progress: bool,
    desc: str | None = None,
) -> RunOutcome:
    """Make (or verify and reuse) the entries of ``case_ids``; raise if any case failed.

    Raises:
        DataError: the failing cases, one line each.
        CacheDiskFullError: the disk filled up; the remaining cases are not started.
    """
    from tqdm.auto import tqdm

    jobs, failures = case_jobs(m, out, settings, dirs, case_ids)
    outcome = RunOutcome()
    bar = tqdm(
        total=len(case_ids), desc=desc or f"preprocess {m.name}", unit="case", disable=not progress
    )
    sizes: list[int] = []
    for result in run_jobs(jobs, workers):
        bar.update(1)
        if result.status == "disk_full":
            bar.close()
            left = len(jobs) - outcome.processed - outcome.reused - len(failures)
            per_case = int(np.mean(sizes)) if sizes else result.num_bytes
            raise disk_full_error(
                out,
                per_case * max(left, 1),
                f"case {result.case_id}",
                f"for the {left} case(s) not written yet",
            )
        if result.status == "failed":
            failures.append((result.case_id, result.message or "failed"))
        elif result.status == "reused":
            outcome.reused += 1
        else:
            outcome.processed += 1
            sizes.append(result.num_bytes)
            if result.status == "remade":
                outcome.remade.append((result.case_id, result.message or "corrupt"))
    bar.close()
    if failures:
        order = {cid: i for i, cid in enumerate(m.case_ids)}
        failures.sort(key=lambda f: order[f[0]])
        lines = "\n".join(f"  case {cid}: {msg}" for cid, msg in failures)
        raise DataError(
            f"{m.name}: {len(failures)} of {len(case_ids)} cases failed to preprocess "
            f"(the other cases are cached; fix the files and rerun to resume):\n{lines}"
        )
    return outcome


def build_plan(
    m: Manifest,
    out: Path,
    settings: CacheSettings,
    dirs: Mapping[str, str],
    outcome: RunOutcome,
    *,
    check_entries: bool = False,
) -> Plan:
    """The :class:`Plan` of a cache whose every case is finished (reads each ``properties.json``).

    Args:
        check_entries: also check every entry's marker (settings hash and file sizes): a merge
            of shards does, since it did not make those entries itself.

    Raises:
        DataError: with ``check_entries``, the cases that are missing or stale (one line each).
    """
    import toolkit

    cases_root = out / CASES_DIR
    if check_entries:
        jobs, failures = case_jobs(m, out, settings, dirs)
        for job in jobs:
            done, problem = read_entry(Path(job["dir"]), checksums=False)
            if done is not None and done.get("settings_hash") != job["settings_hash"]:
                problem = "made with other settings or older input files"
            if problem:
                failures.append((job["case_id"], problem))
        if failures:
            shown = "\n".join(f"  case {cid}: {why}" for cid, why in failures[:20])
            more = f"\n  ... and {len(failures) - 20} more" if len(failures) > 20 else ""
            raise DataError(
                f"{out}: {len(failures)} of {len(m.cases)} cases are not finished; run the "
                f"missing shards (or 'mae3d preprocess' without --shard):\n{shown}{more}"
            )
    entries, props_by_case = [], {}
    for case in m.cases:
        props = json.loads((cases_root / dirs[case.case_id] / PROPERTIES_FILE).read_text())
        # only what the fingerprint needs: at 100k cases whole property dicts cost ~1 GB
        props_by_case[case.case_id] = {k: props[k] for k in _FINGERPRINT_KEYS}
        entries.append(
            {
                "id": case.case_id,
                "dir": dirs[case.case_id],
                "subject": case.subject,
                "session": case.session,
                "split": case.split,
                "fold": case.fold,
                "shape": props["resampled_shape"],
                "labelled": props["label_values"] is not None,
            }
        )
    return Plan(
        dataset=m.name,
        manifest=str(m.path) if m.path else "",
        channels=tuple(m.channels),
        labels=None if m.labels is None else dict(m.labels),
        target_spacing_mm=settings.target_spacing_mm,
        image_order=settings.image_order,
        cases=tuple(entries),
        brain_extraction=settings.brain_extraction,
        fingerprint=_fingerprint(props_by_case, m.channels),
        toolkit_version=toolkit.__version__,
        last_run=outcome.as_dict(),
    )


def run_jobs(jobs: list[dict[str, Any]], workers: int) -> Iterator[CaseResult]:
    """Results of ``jobs`` as they finish; stopping the iteration cancels the jobs not started."""
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            yield make_entry(job)
        return
    # spawn: workers must not inherit torch/CUDA or thread-pool state from the parent.
    ctx = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=ctx)
    try:
        futures: dict[Future[CaseResult], str] = {
            pool.submit(make_entry, job): job["case_id"] for job in jobs
        }
        for fut in as_completed(futures):
            try:
                yield fut.result()
            except BrokenProcessPool:
                raise ToolkitError(
                    f"a preprocessing worker died (out of memory?) while working on case "
                    f"{futures[fut]}; finished cases are kept - rerun with fewer --workers"
                ) from None
    finally:
        # cancel_futures: a consumer that stops early (full disk, Ctrl-C) starts no more cases
        pool.shutdown(wait=True, cancel_futures=True)


@contextlib.contextmanager
def cache_lock(out: Path, *, shared: bool, name: str = LOCK_FILE) -> Iterator[None]:
    """Advisory ``flock`` on ``out/name`` (POSIX): exclusive for a whole-cache run, else shared.

    An unsharded run or a merge takes it exclusively; every shard takes it shared (so shards run
    side by side, but never next to an unsharded run) plus its own exclusive shard lock.
    """
    try:
        import fcntl
    except ImportError:  # Windows: no advisory lock, one writer is the user's responsibility
        yield
        return
    with open(out / name, "a+") as fh:
        try:
            fcntl.flock(fh, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ToolkitError(
                f"{out}: another 'mae3d preprocess' is writing this cache (lock {name})"
            ) from None
        except OSError:  # file systems without flock support (some NFS): proceed unlocked
            yield
            return
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_cache(
    manifest: Manifest,
    root: Path,
    *,
    target_spacing_mm: Sequence[float],
    image_order: int,
    workers: int = 0,
    progress: bool = False,
    brain_extraction: str = "none",
) -> Path:
    """Preprocess ``manifest`` into ``root`` unless a complete cache of it is already there.

    A cache whose ``plan.json`` lists exactly the manifest's cases with the same spacing and
    spline order is used untouched: preprocessing removes ``plan.json`` while it works, which
    would break other runs reading the same cache at that moment (parallel sweeps, label
    efficiency). Edited image files with an unchanged case list need ``mae3d preprocess``.

    Args:
        manifest: a :class:`~toolkit.data.manifest.Manifest`.
        root: the cache folder.
        target_spacing_mm: (3,) cache spacing.
        image_order: spline order of images.
        workers: preprocessing processes.
        progress: progress bar.
        brain_extraction: ``none`` or a brain-extraction method (part of what must match).
    """
    plan_file = root / "plan.json"
    if plan_file.is_file():
        try:
            plan = json.loads(plan_file.read_text())
        except (OSError, ValueError):
            plan = {}
        same = (
            sorted(c.get("id") for c in plan.get("cases", [])) == sorted(manifest.case_ids)
            and [float(v) for v in plan.get("target_spacing_mm", [])]
            == [float(v) for v in target_spacing_mm]
            and int(plan.get("image_order", -1)) == int(image_order)
            and str(plan.get("brain_extraction", "none")) == brain_extraction
        )
        if same:
            return root
    preprocess_manifest(
        manifest,
        root,
        target_spacing_mm=target_spacing_mm,
        image_order=image_order,
        workers=workers,
        progress=progress,
        brain_extraction=brain_extraction,
    )
    return root
