"""``mae3d bench science``: the CPU science benchmark (in-fill margin, probe gap, fine-tuning).

Examples::

    mae3d bench science --out science_out                  # the full run, <= 60 min on 2 cores
    mae3d bench science --out science_out                  # again: reuses finished runs, resumes
    mae3d bench science --out smoke --smoke                # every stage in about a minute
    mae3d bench science --out s2 --pretrain-steps 1000 --set mask.ratio=0.6
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from toolkit.cli.pretrain import bench_app


@bench_app.command("science")
def bench_science_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="benchmark folder")] = Path(
        "science_out"
    ),
    smoke: Annotated[
        bool, typer.Option(help="every stage at smoke size (a test of the machinery, no result)")
    ] = False,
    pretrain_steps: Annotated[
        int | None, typer.Option(min=1, help="MAE steps (default: the settings')")
    ] = None,
    finetune_steps: Annotated[
        int | None, typer.Option(min=1, help="steps of each fine-tuning run")
    ] = None,
    model: Annotated[str | None, typer.Option(help="registered network, e.g. resenc_tiny")] = None,
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", help="extra config override for every run, e.g. mask.ratio=0.6"),
    ] = None,
    progress: Annotated[bool, typer.Option(help="progress bars inside stages")] = False,
) -> None:
    """Does the MAE learn, and does it help? In-fill margin, probe gap, fine-tuning vs scratch."""
    from toolkit.science import SMOKE, ScienceSettings, run_science

    settings = SMOKE if smoke else ScienceSettings()
    settings = replace(
        settings,
        pretrain_steps=pretrain_steps or settings.pretrain_steps,
        finetune_steps=finetune_steps or settings.finetune_steps,
        model=model or settings.model,
        extra_overrides=tuple(overrides or settings.extra_overrides),
    )
    result = run_science(out, settings=settings, progress=progress)
    typer.echo(
        f"report: {result.report}  ({result.seconds:.0f} s wall, {result.cpu_seconds:.0f} s CPU)"
    )
