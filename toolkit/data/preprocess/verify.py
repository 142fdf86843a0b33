"""``mae3d preprocess --verify CACHE [--repair]``: check every entry's bytes, re-make bad ones."""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from toolkit.data.preprocess.entry import CASES_DIR, PLAN_FILE, TMP_PREFIX
from toolkit.data.preprocess.integrity import read_entry
from toolkit.data.preprocess.plan import Plan
from toolkit.errors import DataError

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class BadEntry:
    """One cache entry that failed verification."""

    case_id: str
    folder: Path
    problem: str

    def __str__(self) -> str:
        return f"{self.folder}: case {self.case_id}: {self.problem}"


def verify_cache(path: PathLike, *, workers: int = 2) -> tuple[int, list[BadEntry]]:
    """Check the size and CRC-32 of every file of every entry of a cache.

    The entries are those ``plan.json`` lists, or every case folder when there is no plan (an
    unfinished cache). Files are hashed in ``workers`` threads (``zlib.crc32`` releases the GIL).

    Args:
        path: the cache folder.
        workers: hashing threads.

    Returns:
        ``(num_entries, bad)``: how many entries were checked and those that failed, in plan order.

    Raises:
        DataError: not a cache folder, or an unreadable plan.
    """
    root = Path(path)
    cases_root = root / CASES_DIR
    if not cases_root.is_dir():
        raise DataError(f"{root}: not a preprocessed cache (no {CASES_DIR}/ folder)")
    plan_path = root / PLAN_FILE
    if plan_path.is_file():
        try:
            cases = json.loads(plan_path.read_text())["cases"]
            entries = [(str(c["id"]), cases_root / str(c["dir"])) for c in cases]
        except (OSError, ValueError, KeyError, TypeError):
            raise DataError(f"{plan_path}: unreadable plan; rerun 'mae3d preprocess'") from None
    else:
        entries = sorted(
            (p.name, p)
            for p in cases_root.iterdir()
            if p.is_dir() and not p.name.startswith(TMP_PREFIX)
        )

    def check(entry: tuple[str, Path]) -> BadEntry | None:
        case_id, folder = entry
        if not folder.is_dir():
            return BadEntry(case_id, folder, "entry folder is missing")
        _, problem = read_entry(folder, checksums=True)
        return None if problem is None else BadEntry(case_id, folder, problem)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = list(pool.map(check, entries))
    return len(entries), [bad for bad in results if bad is not None]


def repair_cache(path: PathLike, bad: list[BadEntry], *, workers: int = 2) -> Plan:
    """Delete ``bad`` entries and re-make them with the cache's own manifest and settings.

    Raises:
        DataError: the cache has no ``plan.json`` naming its manifest (rerun ``mae3d preprocess
            MANIFEST --out CACHE`` instead: it re-makes corrupt entries too).
    """
    import shutil

    from toolkit.data.preprocess.writer import preprocess_manifest

    root = Path(path)
    try:
        plan = Plan.from_dict(json.loads((root / PLAN_FILE).read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        raise DataError(
            f"{root}: --repair needs the cache's plan.json to find its manifest; rerun "
            "'mae3d preprocess MANIFEST --out CACHE' (it re-makes corrupt entries too)"
        ) from None
    if not plan.manifest or not Path(plan.manifest).is_file():
        raise DataError(
            f"{root}: the manifest {plan.manifest!r} recorded in plan.json is gone; rerun "
            "'mae3d preprocess MANIFEST --out CACHE' with its new path"
        )
    for entry in bad:
        shutil.rmtree(entry.folder, ignore_errors=True)
    return preprocess_manifest(
        plan.manifest,
        root,
        target_spacing_mm=plan.target_spacing_mm,
        image_order=plan.image_order,
        workers=workers,
        progress=False,
        brain_extraction=plan.brain_extraction,
    )
