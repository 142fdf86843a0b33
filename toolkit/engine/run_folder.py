"""Claiming a run folder before any work starts: writable, and fresh or resumable as asked.

A run that cannot write its folder would otherwise find out at its first checkpoint, after data
loading, preprocessing and model building. :func:`claim_run_folder` checks up front, by really
creating and removing a probe file (permission bits say nothing when running as root, on
read-only mounts or on network file systems), in the folder, in its ``checkpoints/`` and, for a
folder that does not exist yet, in the nearest parent that does (where it will be created).

It also applies the loop's fresh/resume rules early (see :func:`toolkit.engine.loop.train`), with
one addition that makes "rerun the same command with ``--resume``" always work after a crash: a
folder whose run was started (``run.json`` written) but killed before its first checkpoint has
nothing to resume, so it starts again from step 0 with a note.

Example:
    >>> import tempfile
    >>> claim_run_folder(Path(tempfile.mkdtemp()) / "run", resume=False)
    False
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from toolkit.engine.checkpoint import CHECKPOINT_DIR, DISK_FULL_ERRNOS, checkpoint_path
from toolkit.errors import DiskFullError, StorageError, TrainingError

PathLike = str | os.PathLike[str]

#: Written first into a run folder; marks a run that was started.
RUN_INFO = "run.json"
PROBE_PREFIX = ".mae3d-write-probe-"


def _probe(folder: Path, run_dir: Path) -> None:
    probe = folder / f"{PROBE_PREFIX}{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, b"0")
        finally:
            os.close(fd)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        if exc.errno in DISK_FULL_ERRNOS:
            raise DiskFullError(
                f"disk full: cannot write in the run folder {run_dir} ({folder}: {reason}); "
                "free space on that disk or choose another --out"
            ) from None
        raise StorageError(
            f"{run_dir}: the run folder cannot be written ({folder}: {reason}); choose another "
            "--out or make it writable"
        ) from None
    finally:
        try:
            probe.unlink()
        except OSError:
            pass


def check_writable(run_dir: PathLike) -> None:
    """Raise unless files can be created in ``run_dir`` (or where it will be created).

    Raises:
        StorageError: the folder, its ``checkpoints/`` or the parent it would be made in is
            read-only / not permitted, or a path component is a file.
        DiskFullError: the probe file could not be written for lack of space.
    """
    run_dir = Path(run_dir)
    existing = run_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise StorageError(f"{run_dir}: cannot be a run folder ({existing} is a file)")
    folders = [existing]
    ckpts = run_dir / CHECKPOINT_DIR
    if ckpts.is_dir():
        folders.append(ckpts)
    for folder in folders:
        _probe(folder, run_dir)


def claim_run_folder(
    run_dir: PathLike, *, resume: bool, echo: Callable[[str], None] | None = None
) -> bool:
    """Check ``run_dir`` before any work: writable, and fit for a fresh run or a resume.

    Args:
        run_dir: the run folder (need not exist).
        resume: the caller wants to continue the run in it.
        echo: where the note about a restart from step 0 goes (default: ``tqdm.write``).

    Returns:
        Whether to resume: ``resume``, except False for a started run that wrote no checkpoint.

    Raises:
        StorageError, DiskFullError: see :func:`check_writable`.
        TrainingError: a fresh run into a folder holding a checkpoint, or a resume of a folder in
            which no run was started.
    """
    run_dir = Path(run_dir)
    check_writable(run_dir)
    latest = checkpoint_path(run_dir, "latest")
    if not resume:
        if latest.is_file():
            raise TrainingError(
                f"{run_dir}: already holds a run ({latest.name}); resume it (--resume / "
                "resume=True) or choose another folder"
            )
        return False
    if latest.is_file():
        return True
    if (run_dir / RUN_INFO).is_file():
        if echo is None:
            from tqdm.auto import tqdm

            echo = tqdm.write
        echo(
            f"note: {run_dir} has no checkpoint yet (the run stopped before its first one); "
            "starting it again from step 0"
        )
        return False
    raise TrainingError(f"{latest}: nothing to resume (no latest checkpoint in {run_dir})")


__all__ = ["RUN_INFO", "check_writable", "claim_run_folder"]
