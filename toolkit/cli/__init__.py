"""Command-line front door ``mae3d``: thin typer commands over the library functions.

Every :class:`~toolkit.errors.ToolkitError` is printed as one ``error: ...`` line (exit code 2);
other exceptions are bugs and keep their traceback.
"""

from __future__ import annotations

import os

# Before anything loads torch: libgomp reads OMP_WAIT_POLICY once, when it initialises. Its
# default lets idle OpenMP threads spin, which on a busy CPU makes every step wait for threads
# that spin on cores other processes need (a 25-70x slower step on 2 cores). Library users who
# import torch themselves: export OMP_WAIT_POLICY=PASSIVE in the shell.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import importlib  # noqa: E402
import sys  # noqa: E402

from toolkit.cli.app import app  # noqa: E402
from toolkit.errors import ToolkitError  # noqa: E402

# Command modules register themselves on ``app`` when imported.
COMMAND_MODULES = (
    "manifest",
    "synth",
    "preprocess",
    "pretrain",
    "finetune",
    "probe",
    "predict",
    "view",
    "sweep",
    "science",
)
for _name in COMMAND_MODULES:
    importlib.import_module(f"toolkit.cli.{_name}")


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``mae3d`` console script."""
    try:
        app(args=argv, prog_name="mae3d")
    except ToolkitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


__all__ = ["app", "main"]
