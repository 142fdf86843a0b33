"""Atomic checkpoints, weights_only loading and clear errors for bad files."""

from __future__ import annotations

from pathlib import Path

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
