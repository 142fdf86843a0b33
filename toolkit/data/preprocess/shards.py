"""One cache filled by N processes or machines: shards, done markers, the merge, SLURM arrays.

``mae3d preprocess MANIFEST --out CACHE --shard I/N`` (I is 0-based, like
``SLURM_ARRAY_TASK_ID`` with ``--array=0-N-1``) makes the entries of the cases whose
``crc32(case_id) % N == I`` - a rule that depends on the case id alone, so every shard agrees
without talking to the others and adding cases to the manifest moves no existing case. Shards
never clash:

* each entry is written into a temp folder of its own and renamed into place (a shard only ever
  cleans up temp folders of its own cases);
* every shard removes ``plan.json`` when it starts, and on success writes ``.shards/I-of-N.json``
  carrying a *run key* (a hash of N, the settings and every case's settings hash, i.e. of the
  input files' paths, sizes and mtimes);
* the shard that finds all N markers carrying its run key checks every entry's marker and writes
  ``plan.json`` with an exclusive create (``os.link`` of a finished temp file, which fails if the
  plan exists), so exactly one shard writes it, complete, even when several finish together.
  ``--merge`` does the same check and write by hand (e.g. after a shard was rerun alone).

The cache (``plan.json`` and every entry) is byte-identical to one unsharded run's:
``plan.json`` holds no timings or counts.

``--executor slurm --shards N`` submits the N shards as one SLURM job array through ``submitit``
(``--executor local`` runs them as local subprocesses through submitit's local executor).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolkit.data.manifest import Manifest, load_manifest
from toolkit.data.preprocess.entry import CASES_DIR, PLAN_FILE, case_dirs
from toolkit.data.preprocess.integrity import disk_full_error, is_disk_full, write_json_atomic
from toolkit.data.preprocess.plan import Plan
from toolkit.data.preprocess.writer import (
    CacheSettings,
    RunOutcome,
    build_plan,
    cache_lock,
    case_jobs,
    plan_bytes,
    process_cases,
    remove_temp_dirs,
)
from toolkit.errors import ConfigError, DataError

PathLike = str | os.PathLike[str]

#: Folder (inside the cache) of the per-shard done markers and locks; not part of the cache.
SHARDS_DIR = ".shards"
#: Executors ``--executor`` accepts.
EXECUTORS = ("slurm", "local")


def parse_shard(text: str) -> tuple[int, int]:
    """``"2/8"`` -> (2, 8): shard index (0-based) and number of shards.

    Raises:
        ConfigError: not ``I/N`` with ``0 <= I < N``.
    """
    parts = text.split("/")
    try:
        index, count = int(parts[0]), int(parts[1])
        if len(parts) != 2:
            raise ValueError
    except (ValueError, IndexError):
        raise ConfigError(f"--shard: expected I/N such as 0/4, got {text!r}") from None
    if count < 1:
        raise ConfigError(f"--shard: N must be >= 1, got {text!r}")
    if not 0 <= index < count:
        raise ConfigError(
            f"--shard: index {index} must be in 0..{count - 1} for {count} shards (0-based, like "
            f"SLURM_ARRAY_TASK_ID with --array=0-{count - 1})"
        )
    return index, count


def shard_of(case_id: str, count: int) -> int:
    """The shard (0..count-1) that makes ``case_id``'s entry: ``crc32(case_id) % count``."""
    return zlib.crc32(case_id.encode("utf-8")) % count


@dataclass(frozen=True)
class ShardResult:
    """What one shard did.

    Attributes:
        index: the shard (0-based).
        count: number of shards.
        num_cases: cases this shard owns.
        outcome: processed / reused / remade counts and seconds.
        plan: the plan if this shard wrote it (it was the last to finish), else None.
        waiting_for: shards whose done marker (for this run) is not there yet.
    """

    index: int
    count: int
    num_cases: int
    outcome: RunOutcome
    plan: Plan | None
    waiting_for: tuple[int, ...]


def preprocess_shard(
    manifest: Manifest | PathLike,
    out_dir: PathLike,
    shard: tuple[int, int],
    *,
    target_spacing_mm: Sequence[float] = (1.0, 1.0, 1.0),
    image_order: int = 3,
    workers: int = 2,
    progress: bool = True,
    brain_extraction: str = "none",
) -> ShardResult:
    """Make the entries of one shard of the manifest; the last shard to finish writes the plan.

    Args:
        manifest: a :class:`~toolkit.data.manifest.Manifest` or the path of its YAML file.
        out_dir: the cache folder every shard writes into.
        shard: ``(index, count)``, index 0-based.
        target_spacing_mm, image_order, workers, progress, brain_extraction: as
            :func:`~toolkit.data.preprocess.writer.preprocess_manifest` (every shard must get the
            same settings; different settings give a different run key, so no plan is written
            from mixed shards).

    Returns:
        A :class:`ShardResult`.

    Raises:
        DataError: cases of this shard failed (listed one per line), or the final check found an
            entry missing.
        CacheDiskFullError: the disk filled up.
        ToolkitError: this shard is already running, or an unsharded run holds the cache.
    """
    index, count = parse_shard(f"{shard[0]}/{shard[1]}")
    m = manifest if isinstance(manifest, Manifest) else load_manifest(manifest)
    settings = CacheSettings.checked(target_spacing_mm, image_order, brain_extraction)
    out = Path(out_dir)
    started = time.perf_counter()
    (out / CASES_DIR).mkdir(parents=True, exist_ok=True)
    (out / SHARDS_DIR).mkdir(exist_ok=True)
    dirs = case_dirs(m.case_ids)
    mine = [cid for cid in m.case_ids if shard_of(cid, count) == index]
    marker = _marker_path(out, index, count)
    with (
        cache_lock(out, shared=True),
        cache_lock(out, shared=False, name=f"{SHARDS_DIR}/{index}-of-{count}.lock"),
    ):
        (out / PLAN_FILE).unlink(missing_ok=True)
        marker.unlink(missing_ok=True)
        remove_temp_dirs(out / CASES_DIR, {dirs[cid] for cid in mine})
        key = run_key(m, out, settings, dirs, count)
        outcome = process_cases(
            m, out, settings, dirs, mine, workers, progress, desc=f"shard {index}/{count}"
        )
        outcome.seconds = time.perf_counter() - started
        record = {"run_key": key, "index": index, "count": count, "cases": len(mine)}
        try:
            write_json_atomic(marker, record)
        except OSError as exc:
            if is_disk_full(exc):
                raise disk_full_error(out, 4096, f"shard marker {marker.name}") from None
            raise
        waiting = _missing_shards(out, count, key)
        plan = None
        if not waiting:
            plan = _write_plan_once(m, out, settings, dirs, outcome)
    return ShardResult(index, count, len(mine), outcome, plan, waiting)


def merge_shards(
    manifest: Manifest | PathLike,
    out_dir: PathLike,
    *,
    target_spacing_mm: Sequence[float] = (1.0, 1.0, 1.0),
    image_order: int = 3,
    brain_extraction: str = "none",
) -> Plan:
    """Write ``plan.json`` of a cache filled by shards, after checking every entry's marker.

    Needed only when the automatic merge did not happen (a shard rerun alone, a marker lost);
    replaces an existing plan.

    Raises:
        DataError: entries missing or made with other settings (listed, at most 20 lines).
        ToolkitError: a shard or an unsharded run is writing the cache right now.
    """
    m = manifest if isinstance(manifest, Manifest) else load_manifest(manifest)
    settings = CacheSettings.checked(target_spacing_mm, image_order, brain_extraction)
    out = Path(out_dir)
    if not (out / CASES_DIR).is_dir():
        raise DataError(f"{out}: no cache entries to merge (no {CASES_DIR}/ folder)")
    with cache_lock(out, shared=False):
        plan = build_plan(m, out, settings, case_dirs(m.case_ids), RunOutcome(), check_entries=True)
        try:
            write_json_atomic(out / PLAN_FILE, plan.to_dict())
        except OSError as exc:
            if is_disk_full(exc):
                raise disk_full_error(out, plan_bytes(plan), PLAN_FILE) from None
            raise
    return plan


def run_key(
    m: Manifest, out: Path, settings: CacheSettings, dirs: dict[str, str], count: int
) -> str:
    """Hash of the shard count, the settings and every case's settings hash (inputs' stat)."""
    jobs, failures = case_jobs(m, out, settings, dirs)
    h = hashlib.sha1(f"{count}|{settings}".encode())
    for job in jobs:
        h.update(f"{job['case_id']}={job['settings_hash']};".encode())
    for cid, error in failures:
        h.update(f"{cid}!{error};".encode())
    return h.hexdigest()


def _marker_path(out: Path, index: int, count: int) -> Path:
    return out / SHARDS_DIR / f"{index}-of-{count}.json"


def _missing_shards(out: Path, count: int, key: str) -> tuple[int, ...]:
    missing = []
    for i in range(count):
        try:
            record = json.loads(_marker_path(out, i, count).read_text())
        except (OSError, ValueError):
            missing.append(i)
            continue
        if not isinstance(record, dict) or record.get("run_key") != key:
            missing.append(i)
    return tuple(missing)


def _write_plan_once(
    m: Manifest, out: Path, settings: CacheSettings, dirs: dict[str, str], outcome: RunOutcome
) -> Plan | None:
    """Check every entry and create ``plan.json`` exclusively; None if another shard won."""
    plan = build_plan(m, out, settings, dirs, outcome, check_entries=True)
    final = out / PLAN_FILE
    if final.exists():
        return None
    tmp = out / f".{PLAN_FILE}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        write_json_atomic(tmp, plan.to_dict())
        try:
            os.link(tmp, final)  # atomic, fails if the plan exists: one writer, never partial
        except FileExistsError:
            return None
        except OSError as exc:
            if is_disk_full(exc):
                raise
            # no hard links here (some FUSE/SMB mounts): an exclusive create instead
            try:
                fd = os.open(final, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return None
            with os.fdopen(fd, "wb") as fh:
                fh.write(tmp.read_bytes())
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full_error(out, plan_bytes(plan), PLAN_FILE) from None
        raise
    finally:
        tmp.unlink(missing_ok=True)
    return plan


# --------------------------------------------------------------------------------------------------
# Submitting the N shards as one job array (submitit)


def slurm_parameters(
    count: int,
    *,
    partition: str | None = None,
    cpus_per_task: int = 4,
    mem_gb: float = 16.0,
    timeout_min: int = 240,
    max_parallel: int | None = None,
    account: str | None = None,
    job_name: str = "mae3d-preprocess",
) -> dict[str, Any]:
    """``submitit.SlurmExecutor.update_parameters`` arguments for an N-shard array.

    Args:
        count: number of shards (array tasks).
        partition: SLURM partition (None: the cluster's default).
        cpus_per_task: CPUs per shard; the shard uses that many preprocessing workers.
        mem_gb: memory per shard in GB (a 1 mm brain needs ~2 GB per worker with cubic resampling).
        timeout_min: wall-clock limit per shard in minutes.
        max_parallel: at most this many shards at once (SLURM's ``--array=0-N%K``; None: all).
        account: SLURM account to charge, if the cluster needs one.
        job_name: job name in ``squeue``.

    Raises:
        ConfigError: a non-positive count, CPU, memory, time or parallelism.
    """
    for name, value in (
        ("--shards", count),
        ("--cpus-per-task", cpus_per_task),
        ("--mem-gb", mem_gb),
        ("--timeout-min", timeout_min),
        ("--max-parallel", 1 if max_parallel is None else max_parallel),
    ):
        if value < 1:
            raise ConfigError(f"{name}: must be >= 1, got {value}")
    params: dict[str, Any] = {
        "job_name": job_name,
        "time": int(timeout_min),
        "cpus_per_task": int(cpus_per_task),
        "mem": f"{int(round(mem_gb))}GB",
        "ntasks_per_node": 1,
        "array_parallelism": int(count if max_parallel is None else min(max_parallel, count)),
    }
    if partition:
        params["partition"] = partition
    if account:
        params["account"] = account
    return params


def run_shard_job(manifest: str, out: str, index: int, count: int, options: dict[str, Any]) -> str:
    """Body of one array task: run shard ``index`` and return its one-line summary."""
    result = preprocess_shard(manifest, out, (index, count), progress=False, **options)
    return describe_shard(result)


def submit_shards(
    manifest: PathLike,
    out_dir: PathLike,
    count: int,
    *,
    executor: str = "slurm",
    log_dir: PathLike | None = None,
    slurm: dict[str, Any] | None = None,
    options: dict[str, Any] | None = None,
) -> list[Any]:
    """Submit ``count`` shards as one job array through submitit; returns its jobs.

    Args:
        manifest: manifest path (read by each task; must be visible from the compute nodes).
        out_dir: cache folder on a shared file system.
        count: number of shards.
        executor: ``slurm`` (``sbatch`` array) or ``local`` (subprocesses on this machine).
        log_dir: submitit's folder for job scripts and logs (default ``OUT/.shards/submitit``).
        slurm: :func:`slurm_parameters` output (slurm only; default ``slurm_parameters(count)``).
        options: keyword arguments of :func:`preprocess_shard` (spacing, workers, ...).

    Raises:
        ConfigError: unknown executor.
        ToolkitError: submitit is not installed or ``sbatch`` is not available.
    """
    from toolkit.errors import ToolkitError

    if executor not in EXECUTORS:
        raise ConfigError(f"--executor: expected one of {EXECUTORS}, got {executor!r}")
    try:
        import submitit
    except ImportError:
        raise ToolkitError("--executor needs the 'submitit' package") from None
    out = Path(out_dir).resolve()
    folder = Path(log_dir) if log_dir is not None else out / SHARDS_DIR / "submitit"
    folder = folder / "%j"
    ex: Any
    if executor == "slurm":
        try:
            ex = submitit.SlurmExecutor(folder=folder)
        except RuntimeError as exc:
            raise ToolkitError(f"--executor slurm: {exc}") from None
        ex.update_parameters(**(slurm if slurm is not None else slurm_parameters(count)))
    else:
        ex = submitit.LocalExecutor(folder=folder)
        ex.update_parameters(timeout_min=24 * 60)
    path = str(Path(manifest).resolve())
    indices = list(range(count))
    return list(
        ex.map_array(
            run_shard_job,
            [path] * count,
            [str(out)] * count,
            indices,
            [count] * count,
            [dict(options or {})] * count,
        )
    )


def describe_shard(result: ShardResult) -> str:
    """One line: what the shard did and whether it wrote the plan."""
    run = result.outcome
    head = (
        f"shard {result.index}/{result.count}: {result.num_cases} cases ({run.processed} "
        f"preprocessed, {run.reused} reused) in {run.seconds:.1f} s"
    )
    if result.plan is not None:
        return f"{head}; all {result.count} shards done, plan.json written"
    if not result.waiting_for:
        return f"{head}; all {result.count} shards done, plan.json written by another shard"
    shown = ", ".join(str(i) for i in result.waiting_for[:10])
    more = " ..." if len(result.waiting_for) > 10 else ""
    return (
        f"{head}; waiting for shard(s) {shown}{more} - the last one writes plan.json "
        "(or run 'mae3d preprocess MANIFEST --out CACHE --merge')"
    )


__all__ = [
    "EXECUTORS",
    "SHARDS_DIR",
    "ShardResult",
    "describe_shard",
    "merge_shards",
    "parse_shard",
    "preprocess_shard",
    "run_key",
    "shard_of",
    "slurm_parameters",
    "submit_shards",
]
