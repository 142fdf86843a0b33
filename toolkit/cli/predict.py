"""``mae3d predict``: segment unlabelled scans with one fine-tuned run or an ensemble."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from toolkit.cli.app import app

#: Exit statuses above this mean "killed by a signal" to shells; more failures are capped here.
MAX_EXIT_STATUS = 125


@app.command("predict")
def predict_command(
    runs: Annotated[
        list[Path], typer.Argument(help="fine-tuning run folder(s); several = an ensemble")
    ],
    input_spec: Annotated[
        str,
        typer.Option(
            "--input", "-i", help="folder of NIfTI files, glob, manifest or nnU-Net imagesTs"
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="output folder")],
    checkpoint: Annotated[str, typer.Option(help="best or final")] = "best",
    overlap: Annotated[
        float | None, typer.Option(help="sliding-window overlap (default: run config)")
    ] = None,
    mirror_tta: Annotated[
        bool | None,
        typer.Option(
            "--mirror-tta/--no-mirror-tta",
            help="mirror test-time augmentation (default: run config)",
        ),
    ] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, ... (default: run config)")] = None,
    save_probabilities: Annotated[
        bool, typer.Option("--save-probabilities", help="also write <case>.npz (float16)")
    ] = False,
    skip_existing: Annotated[
        bool, typer.Option("--skip-existing", help="leave cases already in OUT untouched")
    ] = False,
    workers: Annotated[
        int, typer.Option(help="threads reading/writing while the network runs (0 = none)")
    ] = 1,
) -> None:
    """Segment new scans with fine-tuned run(s); label maps on each scan's own grid.

    Writes OUT/<case>.nii.gz (and <case>.npz with --save-probabilities) and OUT/volumes.csv.
    Bad files are skipped with one line each; the exit status is the number of failed cases.
    """
    from toolkit.errors import ConfigError
    from toolkit.predict_batch import predict

    if checkpoint not in ("best", "final"):
        raise ConfigError(f"--checkpoint: expected best or final, got {checkpoint!r}")
    if workers < 0:
        raise ConfigError(f"--workers: must be >= 0, got {workers}")
    report = predict(
        runs,
        input_spec,
        out,
        checkpoint=checkpoint,
        overlap=overlap,
        mirror_tta=mirror_tta,
        device=device,
        save_probabilities=save_probabilities,
        skip_existing=skip_existing,
        workers=workers,
    )
    typer.echo(report.summary(out))
    if report.failed:
        raise typer.Exit(code=min(len(report.failed), MAX_EXIT_STATUS))
