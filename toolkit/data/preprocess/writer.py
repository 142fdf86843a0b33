"""Writing a patch cache: every case of a manifest, resumable, in worker processes."""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import os
import re
import shutil
import time
import uuid
import zlib
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import numpy as np

from toolkit.data.manifest import Manifest, load_manifest
from toolkit.data.preprocess.case import CACHE_FORMAT_VERSION, _check_spacing, preprocess_case
from toolkit.data.preprocess.plan import Plan, _fingerprint
from toolkit.errors import DataError, ToolkitError

PathLike = str | os.PathLike[str]

#: Per label value, how many foreground voxel coordinates are stored (nnU-Net stores 10 000).
NUM_FOREGROUND_SAMPLES = 10_000
#: ...but never fewer than this fraction of the label's voxels (nnU-Net: 1 %).
MIN_FOREGROUND_COVERAGE = 0.01

PLAN_FILE = "plan.json"
CASES_DIR = "cases"
DONE_FILE = "done.json"
TMP_PREFIX = ".tmp-"
LOCK_FILE = ".preprocess.lock"
IMAGE_FILE = "image.npy"
LABEL_FILE = "label.npy"
FOREGROUND_FILE = "foreground.npz"
PROPERTIES_FILE = "properties.json"


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
    ``done.json`` marker, so a killed run never leaves a case that reads as valid; leftover temp
    folders are discarded on the next run. Cases whose marker matches the current settings and
    input files (path, size, mtime) are reused untouched. ``plan.json`` is removed at the start and
    written only when every case succeeded, so an interrupted or failed run leaves no readable
    cache.

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
        The :class:`Plan` also written to ``out_dir/plan.json``.

    Raises:
        DataError: one or more cases failed (the message lists each case with its file and
            problem; the other cases stay cached and valid), or label values outside the manifest's
            ``labels``.
        ToolkitError: another preprocess holds the cache lock, or a worker process died.
        ConfigError: unknown ``brain_extraction``.
    """
    from tqdm.auto import tqdm

    import toolkit
    from toolkit.data.brain_mask import check_brain_extraction

    m = manifest if isinstance(manifest, Manifest) else load_manifest(manifest)
    target = _check_spacing(target_spacing_mm)
    check_brain_extraction(brain_extraction, "brain_extraction")
    if not 0 <= int(image_order) <= 5:
        raise DataError(f"image_order must be in 0..5 (spline order), got {image_order!r}")
    out = Path(out_dir)
    cases_root = out / CASES_DIR
    cases_root.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    with _cache_lock(out):
        (out / PLAN_FILE).unlink(missing_ok=True)
        for stale in cases_root.glob(TMP_PREFIX + "*"):
            shutil.rmtree(stale, ignore_errors=True)

        dirs = _case_dirs(m.case_ids)
        jobs: list[dict[str, Any]] = []
        reused: list[str] = []
        failures: list[tuple[str, str]] = []
        for case in m.cases:
            image_paths = [str(p) for p in m.image_paths(case)]
            label = m.label_path(case)
            job: dict[str, Any] = {
                "case_id": case.case_id,
                "dir": str(cases_root / dirs[case.case_id]),
                "images": image_paths,
                "label": None if label is None else str(label),
                "target": list(target),
                "image_order": int(image_order),
                "labels": None if m.labels is None else sorted(int(k) for k in m.labels),
                "brain_extraction": brain_extraction,
            }
            try:
                job["settings_hash"] = _settings_hash(job)
            except DataError as exc:
                failures.append((case.case_id, str(exc)))
                continue
            if _case_is_valid(Path(job["dir"]), job["settings_hash"]):
                reused.append(case.case_id)
            else:
                jobs.append(job)

        bar = tqdm(
            total=len(m.cases), desc=f"preprocess {m.name}", unit="case", disable=not progress
        )
        bar.update(len(reused))
        for case_id, error in _run_jobs(jobs, workers):
            if error is not None:
                failures.append((case_id, error))
            bar.update(1)
        bar.close()

        if failures:
            order = {cid: i for i, cid in enumerate(m.case_ids)}
            failures.sort(key=lambda f: order[f[0]])
            lines = "\n".join(f"  case {cid}: {msg}" for cid, msg in failures)
            raise DataError(
                f"{m.name}: {len(failures)} of {len(m.cases)} cases failed to preprocess "
                f"(the other cases are cached; fix the files and rerun to resume):\n{lines}"
            )

        entries, props_by_case = [], {}
        for case in m.cases:
            case_dir = cases_root / dirs[case.case_id]
            props = json.loads((case_dir / PROPERTIES_FILE).read_text())
            props_by_case[case.case_id] = props
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
        plan = Plan(
            dataset=m.name,
            manifest=str(m.path) if m.path else "",
            channels=tuple(m.channels),
            labels=None if m.labels is None else dict(m.labels),
            target_spacing_mm=target,
            image_order=int(image_order),
            cases=tuple(entries),
            brain_extraction=brain_extraction,
            fingerprint=_fingerprint(props_by_case, m.channels),
            toolkit_version=toolkit.__version__,
            last_run={
                "processed": len(jobs),
                "reused": len(reused),
                "seconds": round(time.perf_counter() - started, 3),
            },
        )
        _write_json_atomic(out / PLAN_FILE, plan.to_dict())
    return plan


# --------------------------------------------------------------------------------------------------
# Worker side


def _process_case_job(job: dict[str, Any]) -> tuple[str, str | None]:
    """Preprocess one case into its folder. Returns (case_id, error message or None)."""
    case_id = job["case_id"]
    final = Path(job["dir"])
    tmp = final.parent / f"{TMP_PREFIX}{final.name}-{uuid.uuid4().hex[:8]}"
    try:
        image, label, props = preprocess_case(
            job["images"],
            job["label"],
            job["target"],
            job["image_order"],
            job.get("brain_extraction", "none"),
        )
        allowed = job["labels"]
        if label is not None and allowed is not None:
            unknown = sorted(set(props["label_values"]) - set(allowed))
            if unknown:
                raise DataError(
                    f"{job['label']}: label values {unknown} are not in the manifest's labels "
                    f"{allowed}"
                )
        props["case_id"] = case_id
        tmp.mkdir(parents=True)
        np.save(tmp / IMAGE_FILE, image)
        files = [IMAGE_FILE]
        if label is not None:
            np.save(tmp / LABEL_FILE, label)
            seed = zlib.crc32(case_id.encode())
            locations = sample_foreground_locations(label, seed=seed)
            arrays: dict[str, Any] = {f"label_{v}": loc for v, loc in locations.items()}
            np.savez(tmp / FOREGROUND_FILE, **arrays)
            props["foreground_samples"] = {str(v): int(len(loc)) for v, loc in locations.items()}
            files += [LABEL_FILE, FOREGROUND_FILE]
        (tmp / PROPERTIES_FILE).write_text(json.dumps(props, indent=1))
        files.append(PROPERTIES_FILE)
        done = {
            "case_id": case_id,
            "settings_hash": job["settings_hash"],
            "files": {name: (tmp / name).stat().st_size for name in files},
            "properties_crc32": zlib.crc32((tmp / PROPERTIES_FILE).read_bytes()),
        }
        _write_json_atomic(tmp / DONE_FILE, done)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        return case_id, None
    except ToolkitError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        return case_id, str(exc)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _run_jobs(jobs: list[dict[str, Any]], workers: int) -> Iterator[tuple[str, str | None]]:
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            yield _process_case_job(job)
        return
    # spawn: workers must not inherit torch/CUDA or thread-pool state from the parent.
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=ctx) as pool:
        futures: dict[Future[tuple[str, str | None]], str] = {
            pool.submit(_process_case_job, job): job["case_id"] for job in jobs
        }
        for fut in as_completed(futures):
            try:
                yield fut.result()
            except BrokenProcessPool:
                raise ToolkitError(
                    f"a preprocessing worker died (out of memory?) while working on case "
                    f"{futures[fut]}; finished cases are kept - rerun with fewer --workers"
                ) from None


def sample_foreground_locations(
    label: np.ndarray,
    *,
    num_samples: int = NUM_FOREGROUND_SAMPLES,
    min_coverage: float = MIN_FOREGROUND_COVERAGE,
    seed: int = 0,
) -> dict[int, np.ndarray]:
    """Sample voxel coordinates of every non-zero label value (for foreground oversampling).

    Args:
        label: (D, H, W) integer label map.
        num_samples: coordinates kept per value (all of them if the value has fewer voxels).
        min_coverage: keep at least this fraction of the value's voxels.
        seed: seed of the sampling generator (preprocessing uses a hash of the case id).

    Returns:
        value -> (N, 3) int32 array of (d, h, w) coordinates, sorted in C order.
    """
    rng = np.random.default_rng(seed)
    flat = label.ravel()
    out: dict[int, np.ndarray] = {}
    for value in np.unique(flat):
        if value == 0:
            continue
        idx = np.flatnonzero(flat == value)
        n = max(min(num_samples, idx.size), int(np.ceil(idx.size * min_coverage)))
        if n < idx.size:
            idx = np.sort(rng.choice(idx, size=n, replace=False))
        out[int(value)] = np.stack(np.unravel_index(idx, label.shape), axis=1).astype(np.int32)
    return out


_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _case_dirs(case_ids: Sequence[str]) -> dict[str, str]:
    """A distinct, filesystem-safe folder name per case id."""
    used: set[str] = set()
    out = {}
    for cid in case_ids:
        base = _SAFE.sub("_", cid).lstrip(".") or "case"
        name, k = base, 1
        while name.lower() in used:  # lower(): case-insensitive file systems
            k += 1
            name = f"{base}-{k}"
        used.add(name.lower())
        out[cid] = name
    return out


def _settings_hash(job: Mapping[str, Any]) -> str:
    """Hash of everything a cached case depends on; a change means the case is redone."""
    inputs = []
    for p in [*job["images"], *([job["label"]] if job["label"] else [])]:
        try:
            st = os.stat(p)
        except FileNotFoundError:
            raise DataError(f"{p}: file not found") from None
        except OSError as exc:
            raise DataError(f"{p}: cannot read ({exc.strerror})") from None
        inputs.append([str(Path(p).resolve()), st.st_size, st.st_mtime_ns])
    key = {
        "format_version": CACHE_FORMAT_VERSION,
        "target": job["target"],
        "image_order": job["image_order"],
        "labels": job["labels"],
        "num_foreground_samples": NUM_FOREGROUND_SAMPLES,
        "inputs": inputs,
    }
    if job.get("brain_extraction", "none") != "none":  # caches without it keep their hash
        key["brain_extraction"] = job["brain_extraction"]
    return hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()


def read_done_marker(case_dir: Path) -> dict[str, Any] | None:
    """The parsed ``done.json`` of a case folder if every file it lists has its recorded size."""
    try:
        done = json.loads((case_dir / DONE_FILE).read_text())
        files = done["files"]
        for name, size in files.items():
            if (case_dir / name).stat().st_size != int(size):
                return None
        if zlib.crc32((case_dir / PROPERTIES_FILE).read_bytes()) != done["properties_crc32"]:
            return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return done if isinstance(done, dict) else None


def _case_is_valid(case_dir: Path, settings_hash: str) -> bool:
    done = read_done_marker(case_dir)
    return done is not None and done.get("settings_hash") == settings_hash


def _write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


@contextlib.contextmanager
def _cache_lock(out: Path) -> Iterator[None]:
    """Refuse a second concurrent preprocess of the same cache (advisory ``flock``, POSIX)."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory lock, one writer is the user's responsibility
        yield
        return
    with open(out / LOCK_FILE, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ToolkitError(
                f"{out}: another 'mae3d preprocess' is writing this cache (lock {LOCK_FILE})"
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
