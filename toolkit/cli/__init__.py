"""Command-line front door ``mae3d``: thin typer commands over the library functions.

Every :class:`~toolkit.errors.ToolkitError` is printed as one ``error: ...`` line (exit code 2);
other exceptions are bugs and keep their traceback.
"""

from __future__ import annotations

import importlib
import sys

from toolkit.cli.app import app
from toolkit.errors import ToolkitError

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
