"""One cache entry (a case folder): its files, how it is made, and the names it lives under.

Made by :func:`make_entry` in a worker process: preprocess into ``cases/.tmp-<dir>-<hex>``, write
``done.json`` (settings hash, sizes, checksums) last, rename into place. An existing entry whose
marker, sizes and checksums match is reused; a corrupt one is re-made.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import uuid
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from toolkit.data.preprocess.case import CACHE_FORMAT_VERSION, preprocess_case
from toolkit.data.preprocess.integrity import (
    DONE_FILE_NAME,
    check_entry_files,
    entry_record,
    is_disk_full,
    read_entry,
    write_json_atomic,
)
from toolkit.errors import DataError, ToolkitError

#: Per label value, how many foreground voxel coordinates are stored (nnU-Net stores 10 000).
NUM_FOREGROUND_SAMPLES = 10_000
#: ...but never fewer than this fraction of the label's voxels (nnU-Net: 1 %).
MIN_FOREGROUND_COVERAGE = 0.01

PLAN_FILE = "plan.json"
CASES_DIR = "cases"
DONE_FILE = DONE_FILE_NAME
TMP_PREFIX = ".tmp-"
LOCK_FILE = ".preprocess.lock"
IMAGE_FILE = "image.npy"
LABEL_FILE = "label.npy"
FOREGROUND_FILE = "foreground.npz"
PROPERTIES_FILE = "properties.json"


class CaseResult(NamedTuple):
    """What happened to one case: ``status`` is done, reused, remade, failed or disk_full."""

    case_id: str
    status: str
    message: str | None = None
    num_bytes: int = 0


def make_entry(job: dict[str, Any]) -> CaseResult:
    """Verify a finished entry (reuse it) or preprocess the case into its folder (worker side).

    Args:
        job: ``case_id``, ``dir`` (final folder), ``images``, ``label``, ``target``,
            ``image_order``, ``labels`` (allowed values or None), ``brain_extraction`` and
            ``settings_hash`` (see :func:`settings_hash`).

    Returns:
        A :class:`CaseResult`; a full disk is a ``disk_full`` result (its temp folder removed),
        never an exception, so the caller can stop the run with one line.
    """
    case_id = job["case_id"]
    final = Path(job["dir"])
    remade_because = None
    if final.is_dir():
        done, problem = read_entry(final, checksums=False)
        if done is not None and done.get("settings_hash") == job["settings_hash"]:
            problem = check_entry_files(final, done, checksums=True)
            if problem is None:
                return CaseResult(case_id, "reused")
        if problem is not None and not problem.startswith("not finished"):
            remade_because = problem
    tmp = final.parent / f"{TMP_PREFIX}{final.name}-{uuid.uuid4().hex[:8]}"
    num_bytes = 0
    try:
        image, label, props = preprocess_case(
            job["images"],
            job["label"],
            job["target"],
            job["image_order"],
            job.get("brain_extraction", "none"),
        )
        num_bytes = image.nbytes + (0 if label is None else 2 * label.nbytes) + 4096
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
        done = {"case_id": case_id, "settings_hash": job["settings_hash"]}
        done.update(entry_record(tmp, files))
        write_json_atomic(tmp / DONE_FILE, done)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        written = sum(done["files"].values())
        if remade_because:
            return CaseResult(case_id, "remade", remade_because, written)
        return CaseResult(case_id, "done", None, written)
    except ToolkitError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        return CaseResult(case_id, "failed", str(exc))
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if is_disk_full(exc):
            return CaseResult(case_id, "disk_full", str(exc), num_bytes)
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


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


def case_dirs(case_ids: Sequence[str]) -> dict[str, str]:
    """A distinct, filesystem-safe folder name per case id (linear in the number of cases)."""
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


def settings_hash(job: Mapping[str, Any]) -> str:
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


def read_done_marker(case_dir: Path, *, checksums: bool = False) -> dict[str, Any] | None:
    """The parsed ``done.json`` of a case folder if its files match it (sizes; optionally bytes)."""
    done, _ = read_entry(case_dir, checksums=checksums)
    return done
