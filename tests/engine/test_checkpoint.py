"""Atomic checkpoints, weights_only loading and clear errors for bad files."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from toolkit.engine import checkpoint as ckpt
from toolkit.engine.checkpoint import (
    checkpoint_path,
    clean_state_dict,
    load_checkpoint,
    save_checkpoint,
)
from toolkit.errors import DataError


def test_round_trip_with_weights_only(tmp_path: Path) -> None:
    state = {"step": 3, "model": {"w": torch.arange(4.0)}, "config": {"a": [1, 2]}, "note": None}
    path = save_checkpoint(checkpoint_path(tmp_path, "latest"), state)
    assert path == tmp_path / "checkpoints" / "latest.pt"
    loaded = load_checkpoint(path)
    assert loaded["step"] == 3 and loaded["config"] == {"a": [1, 2]}
    assert torch.equal(loaded["model"]["w"], torch.arange(4.0))
    assert list(path.parent.iterdir()) == [path]  # no temp files left


def test_killed_save_leaves_the_previous_checkpoint_valid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "latest.pt"
    save_checkpoint(path, {"step": 1, "w": torch.ones(3)})

    def dying_save(obj: object, fh) -> None:  # type: ignore[no-untyped-def]
        fh.write(b"PK\x03\x04 half a zip file")
        raise KeyboardInterrupt  # the process is killed mid-write

    monkeypatch.setattr(ckpt.torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"step": 2, "w": torch.zeros(3)})
    monkeypatch.undo()

    assert load_checkpoint(path)["step"] == 1
    assert list(tmp_path.iterdir()) == [path]


def test_missing_corrupt_and_unsafe_files_raise_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nope.pt: checkpoint not found"):
        load_checkpoint(tmp_path / "nope.pt")

    good = save_checkpoint(tmp_path / "good.pt", {"w": torch.ones(1000)})
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:300])
    with pytest.raises(DataError, match="truncated.pt: corrupt or truncated"):
        load_checkpoint(truncated)

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(DataError, match="garbage.pt"):
        load_checkpoint(garbage)

    unsafe = tmp_path / "unsafe.pt"
    torch.save({"obj": Path("x")}, unsafe)  # a pickled class: refused by weights_only
    with pytest.raises(DataError, match="unsafe.pt: refused to load .* refers to pathlib"):
        load_checkpoint(unsafe)

    not_dict = tmp_path / "list.pt"
    torch.save([1, 2], not_dict)
    with pytest.raises(DataError, match="expected a checkpoint dict"):
        load_checkpoint(not_dict)


def test_clean_state_dict_strips_wrapper_prefixes() -> None:
    state = {"_orig_mod.module.encoder.w": torch.ones(1), "decoder.b": torch.zeros(1)}
    assert list(clean_state_dict(state)) == ["encoder.w", "decoder.b"]


def test_checkpoint_path_names() -> None:
    assert checkpoint_path("r", "best") == Path("r/checkpoints/best.pt")
    with pytest.raises(ValueError, match="which"):
        checkpoint_path("r", "newest")


def test_numpy_plain_data_loads(tmp_path: Path) -> None:
    # nnssl plans and older checkpoints hold numpy scalars and arrays: plain data, allowed.
    path = tmp_path / "numpy.pt"
    torch.save({"spacing": np.float64(1.5), "patch": np.array([160, 160, 160])}, path)
    state = load_checkpoint(path)
    assert state["spacing"] == 1.5 and state["patch"].tolist() == [160, 160, 160]


# --------------------------------------------------------------------------------------------------
# A real pickle payload is refused by every loader, and never runs


class _Payload:
    """Unpickling this writes ``marker``: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (exec, (f"open({self.marker!r}, 'w').write('the payload ran')",))


def _poisoned(path: Path, marker: Path) -> Path:
    """A checkpoint that looks like a fine-tuning run's, with the payload inside."""
    from toolkit.config import load_config

    state = {
        "config": load_config("tiny").to_dict(),
        "model": {"w": torch.ones(2)},
        "network_weights": {"w": torch.ones(2)},
        "step": 3,
        "hook": _Payload(marker),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def test_the_payload_is_live(tmp_path: Path) -> None:
    # Guards the test below: loaded without the restriction, the file does run its code.
    marker = tmp_path / "ran"
    path = _poisoned(tmp_path / "bad.pt", marker)
    torch.load(path, weights_only=False)
    assert marker.read_text() == "the payload ran"


def _run_dir(root: Path, marker: Path) -> Path:
    run = root / "run"
    for which in ("best", "final", "latest"):
        _poisoned(checkpoint_path(run, which), marker)
    (run / "run.json").write_text('{"task": "finetune"}')
    return run


def _cli(argv: list[str]) -> None:
    from toolkit.cli import main

    main(argv)


def _entry_point(name: str, root: Path, marker: Path) -> tuple[Path, Callable[[], object]]:
    """(the poisoned file the loader meets, a call of that loader)."""
    from tests.test_finetune import _write_dataset

    bad = _poisoned(root / "downloaded" / "checkpoint_final.pth", marker)
    run = _run_dir(root, marker)
    if name == "finetune --pretrained":
        return bad, lambda: _cli(["finetune", "tiny", "--pretrained", str(bad), "-o", str(root)])
    if name == "check-transfer":
        return bad, lambda: _cli(["check-transfer", str(bad), "tiny"])
    if name == "export":
        return bad, lambda: _cli(["export", str(bad), "--out", str(root / "x.pth")])
    best = checkpoint_path(run, "best")
    if name == "evaluate":
        labelled, _ = _write_dataset(root / "data")
        return best, lambda: _cli(["evaluate", str(run), "--manifest", str(labelled)])
    if name == "predict":
        labelled, _ = _write_dataset(root / "data")
        return best, lambda: _cli(["predict", str(run), "-i", str(labelled), "-o", str(root / "p")])
    if name == "napari reconstruction":
        from widgets.plugin import reconstruction_job

        image = np.zeros((8, 8, 8), np.float32)
        return bad, lambda: reconstruction_job(
            bad, image, scale=(1, 1, 1), translate=(0, 0, 0), ratio=0.5, block_size=4, seed=0
        )
    if name == "napari segmentation":
        from widgets.plugin import segmentation_job

        return best, lambda: segmentation_job(best, np.zeros((8, 8, 8), np.float32))
    raise AssertionError(name)


LOADERS = (
    "finetune --pretrained",
    "check-transfer",
    "export",
    "evaluate",
    "predict",
    "napari reconstruction",
    "napari segmentation",
)


@pytest.mark.parametrize("loader", LOADERS)
def test_pickle_payload_is_refused_by_every_loader(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], loader: str
) -> None:
    marker = tmp_path / "ran"
    path, call = _entry_point(loader, tmp_path, marker)
    if loader.startswith("napari"):
        with pytest.raises(DataError) as info:
            call()
        message = str(info.value)
    else:
        with pytest.raises(SystemExit) as done:
            call()
        assert done.value.code == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1, lines
        message = lines[0].removeprefix("error: ")
    assert message.startswith(f"{path}: refused to load - it carries pickled Python objects")
    assert "(it refers to exec)" in message and "nothing in the file was run" in message
    assert not marker.exists()


def test_view_reads_no_checkpoint_so_the_payload_never_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # mae3d view shows NIfTI snapshots / predictions only; a poisoned run folder stays inert.
    marker = tmp_path / "ran"
    run = _run_dir(tmp_path, marker)
    with pytest.raises(SystemExit):
        _cli(["view", str(run), "--png", str(tmp_path / "png")])
    assert not marker.exists()


def test_torch_load_is_called_in_one_place_only() -> None:
    # Every checkpoint goes through load_checkpoint; a second torch.load (or pickle.load) would be a
    # loader this file's tests do not cover.
    root = Path(__file__).resolve().parents[2]
    calls = re.compile(
        r"(?<!`)\btorch\.load\(|\bpickle\.loads?\(|weights_only\s*=\s*False|allow_pickle\s*=\s*True"
    )
    found = [
        f"{path.relative_to(root)}:{number}"
        for folder in ("toolkit", "widgets")
        for path in sorted((root / folder).rglob("*.py"))
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if calls.search(line) and not line.lstrip().startswith(("#", ">>>"))
    ]
    assert found == ["toolkit/engine/checkpoint.py:" + str(_line_of_torch_load(root))], found


def _line_of_torch_load(root: Path) -> int:
    lines = (root / "toolkit/engine/checkpoint.py").read_text(encoding="utf-8").splitlines()
    return next(i for i, line in enumerate(lines, 1) if "torch.load(path" in line)
