"""``mae3d view RUN_DIR``: open a run in napari, or write its figures when there is no display.

The library never imports the front-ends (``lint-imports`` checks it), so this command loads the
``widgets`` package by name at call time, the way a plugin host would. Without the ``gui`` extra
installed it says how to get it.

A fine-tuning run is shown with its predictions of a manifest, found wherever the command that
evaluated it wrote them (:func:`toolkit.evaluate.find_predictions`). A run without predictions
for that manifest is an error naming ``--evaluate``, which segments the manifest's cases first
(into ``RUN_DIR/evaluation/<dataset>``) and then shows them.

Examples::

    mae3d view runs/mae_tiny                       # latest reconstruction snapshot in napari
    mae3d view runs/ft --manifest data/labelled.yaml --case sub-101
    mae3d view runs/ft --manifest data/mni152.yaml --evaluate   # predict first, then show
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
    evaluate: Annotated[
        bool,
        typer.Option(
            "--evaluate", help="fine-tuning: segment the manifest's cases first if not yet done"
        ),
    ] = False,
    split: Annotated[
        str | None, typer.Option(help="with --evaluate: only cases of this split (default: all)")
    ] = None,
    checkpoint: Annotated[
        str, typer.Option(help="with --evaluate: best, final or latest")
    ] = "best",
) -> None:
    """Open a run folder in napari (reconstructions or segmentations); PNG figures if headless."""
    from toolkit.visualize import save_figure

    if not run_dir.is_dir():
        raise ToolkitError(f"{run_dir}: no such run folder")
    inline = _front_end("inline")
    if _front_end("runs").run_kind(run_dir) == "finetune":
        from toolkit.evaluate import evaluated_manifest

        manifest = evaluated_manifest(run_dir, manifest)
        _ensure_predictions(run_dir, manifest, evaluate, split=split, checkpoint=checkpoint)
    elif evaluate:
        raise ToolkitError(
            f"{run_dir}: --evaluate is for fine-tuning runs; this is a pretraining run"
        )
    if png is None and inline.choose_backend() == "napari":
        _front_end("napari_views").view_run(run_dir, step=step, manifest=manifest, case=case)
        return
    out = png if png is not None else run_dir / "figures"
    figures = inline.run_figures(run_dir, step=step, manifest=manifest, case=case)
    for name, fig in figures.items():
        typer.echo(f"wrote {save_figure(fig, out / f'{name}.png')}")
    if png is None:
        typer.echo("no display for napari (DISPLAY unset): wrote the figures instead")


def _ensure_predictions(
    run_dir: Path, manifest: Path, evaluate: bool, *, split: str | None, checkpoint: str
) -> None:
    """Make the run's predictions of ``manifest`` with ``--evaluate``, or say how to."""
    from toolkit.data.manifest import load_manifest
    from toolkit.evaluate import evaluate as evaluate_run
    from toolkit.evaluate import find_predictions, format_summary, predicted_datasets, summarize

    m = load_manifest(manifest)
    if find_predictions(run_dir, m.name) is not None:
        return
    if not evaluate:
        done = ", ".join(predicted_datasets(run_dir)) or "none"
        raise ToolkitError(
            f"{run_dir}: no predictions for dataset {m.name!r} yet (predicted: {done}); add "
            f"--evaluate to segment its cases and show them: mae3d view {run_dir} --manifest "
            f"{manifest} --evaluate"
        )
    typer.echo(
        f"{run_dir}: no predictions for {m.name!r} yet; evaluating ({checkpoint} checkpoint)"
    )
    df = evaluate_run(run_dir, m, checkpoint=checkpoint, split=split)
    typer.echo(format_summary(summarize(df)))
