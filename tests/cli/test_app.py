"""The ``mae3d`` front door: every command listed with one line, user errors as one line."""

from __future__ import annotations

import subprocess
import sys

import pytest
import typer

from toolkit.cli import app, main


def _commands() -> set[str]:
    group = typer.main.get_command(app)
    return set(group.commands)  # type: ignore[attr-defined]


def test_help_lists_every_command_with_one_line() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "toolkit.cli", "--help"], capture_output=True, text=True, check=True
    ).stdout
    listed = {}
    in_commands = False
    for line in out.splitlines():
        if line.startswith("Commands:"):
            in_commands = True
            continue
        if in_commands and line.strip():
            name, _, text = line.strip().partition(" ")
            listed[name] = text.strip()
    assert set(listed) == _commands()
    for name, text in listed.items():
        assert text and not text.endswith("..."), f"{name}: help line missing or cut: {text!r}"


def test_user_error_is_one_line(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["pretrain", "tiny", "mask.ratio=2", "--out", str(tmp_path / "run")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: mask.ratio: must be in [0, 1], got 2.0"]
    assert not (tmp_path / "run").exists()


def test_check_config_warns_about_the_mask_geometry(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["check-config", "tiny"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip().splitlines() == ["config ok (0 warning(s))"]
    with pytest.raises(SystemExit) as done:
        main(["check-config", "tiny", "data.patch_size=[48,48,48]", "mask.block_size=8"])
    assert done.value.code == 0  # warnings do not fail the check
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 3 and out[-1] == "config ok (2 warning(s))"
    assert "blocks per axis" in out[0] and "bottleneck is masked" in out[1]


def test_pretrain_prints_geometry_warnings_once(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SystemExit):  # no data configured: fails right after the warnings
        main(["pretrain", "tiny", "mask.block_size=8", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    warnings = [line for line in err if line.startswith("warning: ")]
    assert len(warnings) == 2 and len(set(warnings)) == 2
    assert err[-1].startswith("error: ")


def test_old_shared_optim_override_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["check-config", "tiny", "optim.lr=0.1"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: optim.lr: there is no shared optim section any more; "
        "set pretrain.optim.lr and/or finetune.optim.lr"
    ]
