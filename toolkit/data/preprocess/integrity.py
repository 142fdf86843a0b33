"""Integrity of cache entries: sizes and checksums recorded at write time, checked on read.

A cache entry is one case folder (``cases/<dir>/``). Its ``done.json`` marker, written last, lists
every file of the entry with its size in bytes and a CRC-32 of its bytes. Two levels of checking:

* **size** (a ``stat`` per file): catches truncated and missing files; done by everything that
  opens an entry, every time.
* **checksum** (reads every byte): also catches flipped bytes. CRC-32 (``zlib``, in the standard
  library) hashes about 1.8 GB/s on one core of the 2-core development VM, i.e. ~15 ms for the
  27 MB image of a 180x210x180 float32 brain at 1 mm, where blake2b takes ~97 ms (xxhash is not a
  dependency). That is less than reading three 160^3 patches, so :class:`~toolkit.data.cache.Cache`
  verifies each entry's checksum once per process, the first time it is opened, before any patch
  of it is returned; ``mae3d preprocess`` verifies every finished entry it would reuse (a re-run
  re-makes corrupt entries); ``mae3d preprocess --verify CACHE`` checks a whole cache.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> d = Path(tempfile.mkdtemp()); _ = (d / "a.bin").write_bytes(b"abc")
    >>> record = entry_record(d, ["a.bin"])
    >>> record["files"], check_entry_files(d, record, checksums=True)
    ({'a.bin': 3}, None)
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from toolkit.errors import ToolkitError

PathLike = str | os.PathLike[str]

#: The completion marker of an entry (the writer's ``DONE_FILE``), written last.
DONE_FILE_NAME = "done.json"
#: Name of the checksum recorded in ``done.json`` (``checksums`` maps file name -> 8 hex digits).
CHECKSUM_ALGORITHM = "crc32"
#: Bytes read per step while hashing (bounded memory for any file size).
_CHUNK = 8 << 20
#: errno values that mean "no space left" (ENOSPC) or "quota exceeded" (EDQUOT).
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)})


class CacheDiskFullError(ToolkitError):
    """The disk holding the cache filled up; the message says where and about how much is needed."""


def file_checksum(path: PathLike) -> str:
    """CRC-32 of a file's bytes as 8 lowercase hex digits, read in 8 MiB chunks."""
    crc = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            crc = zlib.crc32(chunk, crc)
    return f"{crc:08x}"


def entry_record(folder: Path, names: Sequence[str]) -> dict[str, Any]:
    """Sizes and checksums of ``names`` inside ``folder`` (the integrity part of ``done.json``)."""
    return {
        "files": {name: (folder / name).stat().st_size for name in names},
        "checksum": CHECKSUM_ALGORITHM,
        "checksums": {name: file_checksum(folder / name) for name in names},
    }


def check_entry_files(folder: Path, done: Mapping[str, Any], *, checksums: bool) -> str | None:
    """Compare the files of an entry with its ``done.json`` record.

    Args:
        folder: the entry (case folder).
        done: its parsed ``done.json``.
        checksums: also hash every file (else sizes only). Markers written before checksums were
            recorded pass on sizes alone.

    Returns:
        None when the entry matches, else one line saying which file is wrong and how.
    """
    try:
        files = {str(k): int(v) for k, v in done["files"].items()}
    except (KeyError, TypeError, ValueError, AttributeError):
        return f"{DONE_FILE_NAME} has no file list"
    for name, size in files.items():
        try:
            actual = (folder / name).stat().st_size
        except FileNotFoundError:
            return f"{name} is missing"
        except OSError as exc:
            return f"{name} cannot be read ({exc.strerror})"
        if actual != size:
            what = "truncated" if actual < size else "longer than written"
            return f"{name} has {actual} bytes, {size} were written ({what})"
    recorded = done.get("checksums")
    if not checksums or not isinstance(recorded, dict):
        return None
    if done.get("checksum") != CHECKSUM_ALGORITHM:
        return f"unknown checksum algorithm {done.get('checksum')!r}"
    for name in files:
        want = recorded.get(name)
        if want is None:
            return f"{name} has no recorded checksum"
        try:
            got = file_checksum(folder / name)
        except OSError as exc:
            return f"{name} cannot be read ({exc.strerror})"
        if got != want:
            return f"{name} checksum {got} differs from the {want} written (bytes changed)"
    return None


def read_entry(folder: Path, *, checksums: bool) -> tuple[dict[str, Any] | None, str | None]:
    """Read and check an entry's ``done.json``.

    Returns:
        ``(done, None)`` for a good entry; ``(None, problem)`` with a one-line problem otherwise
        (``problem`` is ``"not finished"`` when there is no marker at all).
    """
    try:
        done = json.loads((folder / DONE_FILE_NAME).read_text())
    except FileNotFoundError:
        return None, "not finished (no done.json)"
    except (OSError, ValueError) as exc:
        return None, f"{DONE_FILE_NAME} unreadable ({type(exc).__name__})"
    if not isinstance(done, dict):
        return None, f"{DONE_FILE_NAME} is not an object"
    problem = check_entry_files(folder, done, checksums=checksums)
    if problem is None and "checksums" not in done:
        # older markers: the properties file carried a CRC of its own
        try:
            crc = zlib.crc32((folder / "properties.json").read_bytes())
            if "properties_crc32" in done and crc != done["properties_crc32"]:
                problem = "properties.json checksum differs (bytes changed)"
        except OSError:
            problem = "properties.json cannot be read"
    return (None, problem) if problem else (done, None)


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` is an OSError meaning the disk (or the user's quota) is full."""
    return isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS


def disk_full_error(
    where: Path, needed_bytes: int, what: str, needed_for: str = ""
) -> CacheDiskFullError:
    """The one-line error for a full disk: where, how much is free, about how much is needed."""
    try:
        free = shutil.disk_usage(where if where.exists() else where.parent).free
        free_text = f"{_mb(free)} free now"
    except OSError:
        free_text = "free space unknown"
    needed_for = f" {needed_for}" if needed_for else ""
    return CacheDiskFullError(
        f"{where}: disk full while writing {what} ({free_text}); about {_mb(needed_bytes)} more "
        f"are needed{needed_for} - free space there (or choose another --out) and rerun to "
        "resume; finished cache entries are kept"
    )


def _mb(num_bytes: float) -> str:
    if num_bytes >= 10 * 2**30:
        return f"{num_bytes / 2**30:.0f} GiB"
    if num_bytes >= 2**30:
        return f"{num_bytes / 2**30:.1f} GiB"
    if num_bytes >= 2**20:
        return f"{num_bytes / 2**20:.1f} MiB"
    return f"{max(num_bytes, 0) / 2**10:.0f} KiB"


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to ``path`` through a temp file and ``os.replace``; no partial file is left."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
