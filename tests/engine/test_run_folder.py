"""Claiming a run folder: writable, fresh or resumable, checked before any work."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from toolkit.engine import run_folder
from toolkit.engine.checkpoint import checkpoint_path
from toolkit.engine.run_folder import check_writable, claim_run_folder
from toolkit.errors import DiskFullError, StorageError, TrainingError


def test_fresh_and_resume_rules(tmp_path: Path) -> None:
    notes: list[str] = []
    run = tmp_path / "a" / "b"  # need not exist; its nearest existing parent is probed
    assert claim_run_folder(run, resume=False) is False
    assert not run.exists()  # claiming creates nothing
    with pytest.raises(TrainingError, match="nothing to resume"):
        claim_run_folder(run, resume=True)
    run.mkdir(parents=True)
    (run / "run.json").write_text("{}")  # started, killed before its first checkpoint
    assert claim_run_folder(run, resume=True, echo=notes.append) is False
    assert len(notes) == 1 and "starting it again from step 0" in notes[0]
    latest = checkpoint_path(run, "latest")
    latest.parent.mkdir()
    latest.write_bytes(b"")
    assert claim_run_folder(run, resume=True) is True
    with pytest.raises(TrainingError, match="already holds a run"):
        claim_run_folder(run, resume=False)
    assert sorted(p.name for p in run.rglob("*")) == ["checkpoints", "latest.pt", "run.json"]


def test_a_file_in_the_path_is_refused(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")
    with pytest.raises(StorageError, match="is a file"):
        check_writable(tmp_path / "f" / "run")


@pytest.mark.parametrize(
    ("code", "error", "text"),
    [
        (errno.EROFS, StorageError, "cannot be written"),
        (errno.EACCES, StorageError, "cannot be written"),
        (errno.ENOSPC, DiskFullError, "disk full"),
    ],
)
def test_probe_failures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, error: type, text: str
) -> None:
    real_open = os.open

    def failing_open(path: str, flags: int, *args: int) -> int:
        if Path(path).name.startswith(run_folder.PROBE_PREFIX):
            if code == errno.ENOSPC:  # the file is made, its one byte does not fit
                fd = real_open(path, flags, *args)
                os.close(fd)
            raise OSError(code, os.strerror(code))
        return real_open(path, flags, *args)

    monkeypatch.setattr(run_folder.os, "open", failing_open)
    with pytest.raises(error, match=text):
        check_writable(tmp_path / "run")
    assert list(tmp_path.iterdir()) == []  # the probe is removed whatever happened
