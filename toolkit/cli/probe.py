"""The ``probe`` command: frozen-encoder feature probes of a pretraining run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from toolkit.cli.app import app
from toolkit.errors import ConfigError


@app.command("probe")
def probe_command(
    run_dir: Annotated[Path, typer.Argument(help="pretraining run folder")],
    manifest: Annotated[
        Path, typer.Option(help="labelled manifest (train cases fit, val cases score)")
    ],
    seeds: Annotated[int, typer.Option(help="random encoders and probe seeds")] = 3,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="output folder (default RUN_DIR/probe)")
    ] = None,
    checkpoint: Annotated[str, typer.Option(help="best or final")] = "best",
    device: Annotated[
        str | None, typer.Option(help="cpu, cuda, ... for the encoders (default: run config)")
    ] = None,
    steps: Annotated[
        int | None, typer.Option(help="Adam steps per classifier (default: ProbeSettings)")
    ] = None,
    voxels_per_class: Annotated[
        int | None,
        typer.Option(help="training voxels per class, all train cases (default: ProbeSettings)"),
    ] = None,
) -> None:
    """Probe a pretraining run's frozen encoder (linear / MLP per voxel) against random encoders.

    Prints mean Dice ± sd over seeds per label and the MAE - random gap with a verdict; writes
    probe.json, probe.md and probe.png.
    """
    from dataclasses import replace

    from toolkit.probe import ProbeSettings, probe_run

    given: dict[str, Any] = {"steps": steps, "voxels_per_class": voxels_per_class}
    for name, value in given.items():
        if value is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')}: must be at least 1, got {value}")
    settings = replace(ProbeSettings(), **{k: v for k, v in given.items() if v is not None})
    result = probe_run(
        run_dir,
        manifest,
        seeds=seeds,
        out_dir=out,
        checkpoint=checkpoint,
        settings=settings,
        device=device,
    )
    typer.echo(result.format())
    typer.echo(f"written to {result.out_dir}")
