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
