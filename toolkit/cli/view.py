"""``mae3d view RUN_DIR``: open a run in napari, or write its figures when there is no display.

The library never imports the front-ends (``lint-imports`` checks it), so this command loads the
``widgets`` package by name at call time, the way a plugin host would. Without the ``gui`` extra
installed it says how to get it.

Examples::

    mae3d view runs/mae_tiny                       # latest reconstruction snapshot in napari
    mae3d view runs/ft --manifest data/labelled.yaml --case sub-101
    mae3d view runs/mae_tiny --png figures/        # no display: loss curves + snapshot as PNG
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import Annotated

import typer

from toolkit.cli.app import app
from toolkit.errors import ToolkitError


def _front_end(module: str) -> ModuleType:
    try:
        return importlib.import_module(f"widgets.{module}")
    except ModuleNotFoundError as exc:
        raise ToolkitError(
            f"mae3d view needs the front-ends ({exc.name} is missing): "
            "pip install 'mae3d-toolkit[gui]'"
        ) from None


@app.command("view")
def view_command(
    run_dir: Annotated[Path, typer.Argument(help="a pretraining or (evaluated) fine-tuning run")],
    step: Annotated[
        int | None, typer.Option(help="pretraining snapshot step (default: latest)")
    ] = None,
    manifest: Annotated[
        Path | None, typer.Option(help="fine-tuning: the evaluated manifest (default: the run's)")
    ] = None,
    case: Annotated[
        str | None, typer.Option(help="fine-tuning: case id (default: the first)")
    ] = None,
    png: Annotated[
        Path | None,
        typer.Option(help="write the figures as PNG into this folder instead of opening napari"),
    ] = None,
) -> None:
    """Open a run folder in napari (reconstructions or segmentations); PNG figures if headless."""
    from toolkit.visualize import save_figure

    if not run_dir.is_dir():
        raise ToolkitError(f"{run_dir}: no such run folder")
    inline = _front_end("inline")
    if png is None and inline.choose_backend() == "napari":
        _front_end("napari_views").view_run(run_dir, step=step, manifest=manifest, case=case)
        return
    out = png if png is not None else run_dir / "figures"
    figures = inline.run_figures(run_dir, step=step, manifest=manifest, case=case)
    for name, fig in figures.items():
        typer.echo(f"wrote {save_figure(fig, out / f'{name}.png')}")
    if png is None:
        typer.echo("no display for napari (DISPLAY unset): wrote the figures instead")
