"""Cache integrity: corrupt entries are caught before use and re-made; a full disk is survivable."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.data.test_preprocess import _write_dataset
from toolkit.cli import main
from toolkit.data.cache import open_cache
from toolkit.data.preprocess import PLAN_FILE, CacheDiskFullError, preprocess_manifest
from toolkit.data.preprocess import entry as entry_module
from toolkit.data.preprocess.integrity import read_entry
from toolkit.errors import DataError


def _build(tmp_path: Path, num_cases: int = 3) -> tuple[Path, Path]:
    manifest = _write_dataset(tmp_path / "src", num_cases=num_cases)
    out = tmp_path / "cache"
    preprocess_manifest(manifest, out, target_spacing_mm=(1, 1, 1), workers=0, progress=False)
    return manifest, out


def _corrupt(out: Path) -> dict[str, bytes]:
    """Truncate case-0's image, flip 4 bytes (same size) of case-1's; return the originals."""
    originals = {}
    for cid in ("case-0", "case-1"):
        path = out / "cases" / cid / "image.npy"
        originals[cid] = path.read_bytes()
    (out / "cases/case-0/image.npy").write_bytes(originals["case-0"][:-100])
    flipped = bytearray(originals["case-1"])
    flipped[-40:-36] = bytes(b ^ 0xFF for b in flipped[-40:-36])
    (out / "cases/case-1/image.npy").write_bytes(bytes(flipped))
    return originals


def test_corrupt_entries_are_caught_before_any_voxel_is_used_and_remade_on_rerun(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest, out = _build(tmp_path)
    originals = _corrupt(out)

    cache = open_cache(out)
    with pytest.raises(DataError) as err:
        cache.read_patch("case-0", (0, 0, 0), (4, 4, 4))
    message = str(err.value)
    assert "\n" not in message and "cases/case-0: case case-0 is incomplete or corrupt" in message
    assert "image.npy has" in message and "(truncated)" in message
    with pytest.raises(DataError, match=r"case-1 .*image\.npy checksum .* \(bytes changed\)"):
        cache.read_patch("case-1", (0, 0, 0), (4, 4, 4))
    with pytest.raises(DataError, match="case-1"):  # also for the other readers of an entry
        cache.properties("case-1")
    cache.read_patch("case-2", (0, 0, 0), (4, 4, 4))  # the good entry reads
    # sizes only: flipped bytes pass (the cost/coverage choice open_cache documents)
    open_cache(out, verify="size").read_patch("case-1", (0, 0, 0), (4, 4, 4))

    with pytest.raises(SystemExit) as exit_:
        main(["preprocess", "--verify", str(out)])
    assert exit_.value.code == 1
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    assert len(lines) == 2 and "case case-0: image.npy has" in lines[0]
    assert "case case-1: image.npy checksum" in lines[1]
    assert "2 of 3 entries are bad" in captured.err

    plan = preprocess_manifest(manifest, out, workers=0, progress=False)
    assert (plan.last_run["processed"], plan.last_run["reused"]) == (2, 1)
    assert [line.split(":")[0] for line in plan.last_run["remade"]] == ["case-0", "case-1"]
    for cid, data in originals.items():
        assert (out / "cases" / cid / "image.npy").read_bytes() == data
    main_ok = _run_cli(["preprocess", "--verify", str(out)])
    assert main_ok == 0 and "all 3 entries match" in capsys.readouterr().out

    # --verify --repair re-makes them from the plan's manifest and settings
    _corrupt(out)
    assert _run_cli(["preprocess", "--verify", str(out), "--repair", "--workers", "0"]) == 0
    assert "re-made 2 bad entries" in capsys.readouterr().out
    for cid, data in originals.items():
        assert (out / "cases" / cid / "image.npy").read_bytes() == data


def _run_cli(args: list[str]) -> int:
    try:
        main(args)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def _fill_disk_on(monkeypatch: pytest.MonkeyPatch, nth: int) -> None:
    """The ``nth`` np.save of the entry writer writes half its bytes, then the disk is full."""
    real_save = np.save
    calls = {"n": 0}

    def save(path: Any, array: np.ndarray, *args: Any, **kwargs: Any) -> None:
        calls["n"] += 1
        if calls["n"] == nth:
            Path(path).write_bytes(b"\x93NUMPY" + b"\0" * (array.nbytes // 2))
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real_save(path, array, *args, **kwargs)

    monkeypatch.setattr(entry_module.np, "save", save)


def test_a_full_disk_keeps_finished_entries_leaves_no_partial_file_and_says_what_to_free(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = _write_dataset(tmp_path / "src", num_cases=4)
    out = tmp_path / "cache"
    _fill_disk_on(monkeypatch, nth=3)  # image + label of case-0, then case-1's image
    with pytest.raises(SystemExit) as exit_:
        main(["preprocess", str(manifest), "--out", str(out), "--workers", "0", "--no-progress"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith(f"error: {out}: disk full while writing case case-1")
    assert "free" in err and "more are needed" in err and "rerun to resume" in err

    assert read_entry(out / "cases" / "case-0", checksums=True)[1] is None  # intact
    left = sorted(p.name for p in (out / "cases").iterdir())
    assert left == ["case-0"], left  # no temp folder, no partial entry, nothing started after
    assert not (out / PLAN_FILE).exists() and not list(out.glob("*.tmp"))

    monkeypatch.undo()
    plan = preprocess_manifest(manifest, out, workers=0, progress=False)
    assert (plan.last_run["processed"], plan.last_run["reused"]) == (3, 1)
    assert len(open_cache(out)) == 4


def test_a_full_disk_while_writing_the_plan_leaves_no_partial_plan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest, out = _build(tmp_path, num_cases=2)
    (out / PLAN_FILE).unlink()
    real_write_text = Path.write_text

    def write_text(self: Path, data: str, *args: Any, **kwargs: Any) -> int:
        if self.name.startswith(PLAN_FILE):
            real_write_text(self, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write_text(self, data, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", write_text)
    with pytest.raises(CacheDiskFullError, match=r"disk full while writing plan\.json"):
        preprocess_manifest(manifest, out, target_spacing_mm=(1, 1, 1), workers=0, progress=False)
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(PLAN_FILE)) == []
    monkeypatch.undo()
    preprocess_manifest(manifest, out, target_spacing_mm=(1, 1, 1), workers=0, progress=False)
    assert len(open_cache(out)) == 2
    shutil.rmtree(out)
