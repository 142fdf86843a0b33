"""``mae3d preprocess``: turn a manifest into a patch cache (reorient, crop, z-score, resample)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from toolkit.cli.app import app
from toolkit.errors import ConfigError


def parse_spacing(text: str) -> tuple[float, float, float]:
    """``"1"`` -> (1, 1, 1); ``"1,1,1.5"`` -> (1, 1, 1.5). Raises ConfigError otherwise."""
    parts = [p for p in text.replace("x", ",").split(",") if p.strip()]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) == 1:
        values *= 3
    if len(values) != 3 or not all(v > 0 for v in values):
        raise ConfigError(f"--spacing: expected one or three positive numbers in mm, got {text!r}")
    return values[0], values[1], values[2]


@app.command("preprocess")
def preprocess_command(
    manifest: Annotated[Path, typer.Argument(help="dataset manifest (YAML)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="cache folder to write")],
    spacing: Annotated[
        str | None,
        typer.Option(help="target spacing in mm: one number or D,H,W (default: config, 1 mm)"),
    ] = None,
    workers: Annotated[int, typer.Option(min=0, help="worker processes (0/1: in-process)")] = 2,
    config: Annotated[
        str | None,
        typer.Option(help="preset name or YAML whose data.target_spacing_mm / image_order apply"),
    ] = None,
    brain_extraction: Annotated[
        str | None,
        typer.Option(
            "--brain-extraction",
            help="none or otsu (brain mask for raw heads; default: the config's "
            "data.brain_extraction)",
        ),
    ] = None,
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
) -> None:
    """Preprocess a manifest into a patch cache (resumes; reuses finished cases)."""
    from toolkit.config import load_config
    from toolkit.data.preprocess import preprocess_manifest

    cfg = load_config(config) if config is not None else load_config("paper")
    target = parse_spacing(spacing) if spacing is not None else cfg.data.target_spacing_mm
    plan = preprocess_manifest(
        manifest,
        out,
        target_spacing_mm=target,
        image_order=cfg.data.image_order,
        workers=workers,
        progress=progress,
        brain_extraction=(
            cfg.data.brain_extraction if brain_extraction is None else brain_extraction
        ),
    )
    run = plan.last_run
    seconds = max(float(run["seconds"]), 1e-9)
    rate = run["processed"] / seconds if run["processed"] else 0.0
    shape = "x".join(f"{s:g}" for s in plan.fingerprint["median_resampled_shape"])
    spacing_text = "x".join(f"{s:g}" for s in plan.target_spacing_mm)
    typer.echo(
        f"{plan.dataset}: {len(plan.cases)} cases in {out} "
        f"({run['processed']} preprocessed, {run['reused']} reused) in {seconds:.1f} s "
        f"= {rate:.2f} cases/s; spacing {spacing_text} mm, median shape {shape}"
    )
