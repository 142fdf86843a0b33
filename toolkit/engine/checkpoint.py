"""Atomic checkpoints that load with ``torch.load(weights_only=True)``.

A checkpoint is a plain dict of tensors, dicts, lists, numbers and strings — no pickled classes —
so it loads with ``weights_only=True`` (safe on files from elsewhere) and needs no toolkit code.
The training loop stores the config (as a dict), the preprocessing plan, the toolkit version, the
step, the unwrapped model weights, optimiser/scheduler/scaler state, every RNG state and the task's
own state; see :func:`toolkit.engine.loop.train` for the keys.

Writes are atomic: the dict goes to a temporary file in the same folder, is flushed and fsynced,
and then ``os.replace`` swaps it in. A save killed half-way leaves the previous file intact. A save
that runs out of disk space (ENOSPC / EDQUOT) removes its partial file and raises
:class:`~toolkit.errors.DiskFullError`, whose one-line message names the file, the space it needs
and what the run folder holds, so the command line can say what to free.

Example:
    >>> import tempfile, torch
    >>> path = Path(tempfile.mkdtemp()) / "checkpoints" / "latest.pt"
    >>> _ = save_checkpoint(path, {"step": 3, "model": {"w": torch.ones(2)}})
    >>> load_checkpoint(path)["step"]
    3
"""

from __future__ import annotations

import errno
import os
import pickle
import re
import shutil
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from toolkit.errors import DataError, DiskFullError

PathLike = str | os.PathLike[str]

CHECKPOINT_DIR = "checkpoints"
#: File names in ``RUN_DIR/checkpoints``.
LATEST, BEST, FINAL = "latest.pt", "best.pt", "final.pt"
#: Prefixes that wrappers add to state-dict keys (torch.compile, DDP / DataParallel).
WRAPPER_PREFIXES = ("_orig_mod.", "module.")
#: errno values that mean "out of space" (a full disk, or the user's quota).
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def checkpoint_path(run_dir: PathLike, which: str = "latest") -> Path:
    """``RUN_DIR/checkpoints/{latest,best,final}.pt``."""
    names = {"latest": LATEST, "best": BEST, "final": FINAL}
    if which not in names:
        raise ValueError(f"which must be one of {', '.join(names)}, got {which!r}")
    return Path(run_dir) / CHECKPOINT_DIR / names[which]


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; not every platform/file system allows opening a directory.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(path: PathLike, state: Mapping[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically (temp file, fsync, ``os.replace``).

    Args:
        path: destination file; its folder is created.
        state: plain data only (tensors, dicts, lists, tuples, numbers, strings, None) so the file
            loads with ``weights_only=True``.

    Returns:
        ``path``.

    Raises:
        DiskFullError: the disk (or quota) filled up while writing; the partial file is removed
            and an earlier ``path`` is left as it was.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        if exc.errno in DISK_FULL_ERRNOS:
            raise DiskFullError(disk_full_message(path, state_nbytes(state), exc)) from None
        raise
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(dict(state), fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
            raise DiskFullError(disk_full_message(path, state_nbytes(state), exc)) from None
        raise
    _fsync_dir(path.parent)
    return path


def _numpy_safe_globals() -> list[Any]:
    """Numpy scalars, dtypes and arrays: plain data that nnssl plans and older checkpoints hold
    (nnssl's trainers convert most of it, not every writer does). Nothing here runs code."""
    import numpy as np

    # The functions numpy itself pickles scalars and arrays with (numpy 2 moved them from
    # numpy.core to numpy._core; asking __reduce__ works for both).
    scalar = np.float64(0).__reduce__()[0]
    reconstruct = np.zeros(1).__reduce__()[0]
    dtypes = [type(np.dtype(t)) for t in np.typecodes["All"] if t not in "OMmV"]
    return [scalar, reconstruct, np.ndarray, np.dtype, *dtypes]


def state_nbytes(state: Any) -> int:
    """Bytes of tensor data in ``state`` (nested dicts/lists): about the size of its file."""
    if isinstance(state, torch.Tensor):
        return int(state.numel() * state.element_size())
    if isinstance(state, Mapping):
        return sum(state_nbytes(v) for v in state.values())
    if isinstance(state, list | tuple):
        return sum(state_nbytes(v) for v in state)
    return 0


def _tree_bytes(folder: Path) -> int:
    # Hard links (final.pt and latest.pt share one file) are counted once.
    seen: set[tuple[int, int]] = set()
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                st = os.lstat(os.path.join(root, name))
            except OSError:
                continue
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total


def format_bytes(n: float) -> str:
    """``1536`` -> ``'1.5 KB'`` (decimal units, one decimal)."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover (the loop returns)


def disk_full_message(path: PathLike, needed: int, exc: OSError | None = None) -> str:
    """One line: which checkpoint could not be written, that the previous one is intact, how
    much space it needs and what the run folder holds (so the user knows what to free)."""
    path = Path(path)
    folder = path.parent
    run_dir = folder.parent if folder.name == CHECKPOINT_DIR else folder
    reason = exc.strerror if exc is not None and exc.strerror else "no space left on device"
    existing = sorted(p.name for p in folder.glob("*.pt")) if folder.is_dir() else []
    previous = (
        f"the checkpoints already written are intact ({', '.join(existing)})"
        if existing
        else "no checkpoint had been written yet"
    )
    try:
        free = format_bytes(shutil.disk_usage(folder if folder.is_dir() else run_dir).free)
    except OSError:
        free = "unknown"
    held = [f"{format_bytes(_tree_bytes(run_dir))} in {run_dir}"]
    if folder != run_dir and folder.is_dir():
        held.append(f"{format_bytes(_tree_bytes(folder))} of it in {folder.name}/")
    snapshots = run_dir / "snapshots"
    if snapshots.is_dir():
        held.append(f"{format_bytes(_tree_bytes(snapshots))} in snapshots/")
    return (
        f"disk full: cannot write checkpoint {path} ({reason}); {previous}, no partial file "
        f"is left. Free at least "
        f"{format_bytes(needed)} ({free} free now; the run folder holds {', '.join(held)}: "
        "delete old runs, snapshots or checkpoints you no longer need), then rerun with --resume"
    )


def load_checkpoint(path: PathLike, *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``: the one loader of every ``.pt`` / ``.pth``.

    torch's restricted unpickler builds tensors, containers, numbers and strings (plus the numpy
    scalars, dtypes and arrays of :func:`_numpy_safe_globals`) and refuses any other global, so a
    file carrying a pickle payload (an object whose ``__reduce__`` calls a function) is refused
    before that function is ever looked up, let alone called.

    Args:
        path: a ``.pt`` file written by :func:`save_checkpoint`, or any plain-data torch file (an
            nnssl checkpoint, a bare ``network_weights`` file).
        map_location: where tensors go (default CPU; the loop moves state to the device).

    Raises:
        DataError: the file is missing, truncated, corrupt, not a dict, or refused because it holds
            pickled objects that are not plain data (the message names the first one).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: checkpoint not found")
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise DataError(
            f"{path}: refused to load - it carries pickled Python objects, not plain data "
            f"({_unpickler_reason(exc)}); checkpoints are read with weights_only=True, so nothing "
            "in the file was run"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{path}: corrupt or truncated checkpoint ({first})") from None
    if not isinstance(state, dict):
        raise DataError(f"{path}: expected a checkpoint dict, got {type(state).__name__}")
    return state


def _unpickler_reason(exc: Exception) -> str:
    # torch's message is a page of advice around one fact: the global it refused
    # ("... unsupported GLOBAL posix.system whose module posix is blocked" or "Unsupported global:
    # GLOBAL numpy.x was not an allowed global by default", depending on the global and version).
    text = str(exc)
    match = re.search(r"GLOBAL ([\w.]+)", text)
    if match:
        return f"it refers to {match.group(1)}"
    match = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    if match:
        return match.group(1).split(". Please")[0].strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else type(exc).__name__


def clean_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip ``_orig_mod.`` / ``module.`` prefixes so keys match the plain network (nnU-Net)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        changed = True
        while changed:
            changed = False
            for prefix in WRAPPER_PREFIXES:
                if key.startswith(prefix):
                    key = key[len(prefix) :]
                    changed = True
        out[key] = value
    return out


def require_keys(state: Mapping[str, Any], keys: tuple[str, ...], path: PathLike) -> None:
    """Raise :class:`DataError` naming ``path`` when ``state`` lacks one of ``keys``."""
    missing = [k for k in keys if k not in state]
    if missing:
        raise DataError(f"{path}: not a toolkit checkpoint (missing {', '.join(missing)})")


__all__ = [
    "BEST",
    "CHECKPOINT_DIR",
    "FINAL",
    "LATEST",
    "checkpoint_path",
    "clean_state_dict",
    "disk_full_message",
    "format_bytes",
    "load_checkpoint",
    "require_keys",
    "save_checkpoint",
    "state_nbytes",
]
