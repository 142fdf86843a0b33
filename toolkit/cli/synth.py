"""``mae3d synth``: write the synthetic demo data set (and the MNI152 test case) into a folder.

With its defaults it writes exactly the data that data_manifests/demo_*.yaml and mni152.yaml
describe (``mae3d synth --out demo_out/data``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from toolkit.cli.app import app
from toolkit.errors import ConfigError

# Literal copies of toolkit.data.synthetic.DEMO_* so `mae3d --help` does not import numpy/scipy;
# tests/data/test_synthetic.py checks they agree.
_DEMO_NUM_SUBJECTS = 12
_DEMO_NUM_LABELLED = 8
_DEMO_SEED = 0
_DEMO_SPACING = "2.0"
_DEMO_NAME = "demo"
_DEMO_TEST_FRACTION = 0.25


def parse_spacing(text: str) -> float | tuple[float, float, float] | None:
    """``"random"`` -> None (drawn per subject), ``"2"`` -> 2.0, ``"1,1,3"`` -> (1.0, 1.0, 3.0)."""
    if text.strip().lower() == "random":
        return None
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) == 1:
        return values[0]
    if len(values) == 3:
        return (values[0], values[1], values[2])
    raise ConfigError(
        f"--spacing: expected 'random', one number or three (x,y,z) in mm, got {text!r}"
    )


@app.command("synth")
def synth(
    out: Annotated[Path, typer.Option("--out", "-o", help="output folder", file_okay=False)],
    subjects: Annotated[
        int, typer.Option("--subjects", min=0, help="unlabelled pretraining subjects")
    ] = _DEMO_NUM_SUBJECTS,
    labelled: Annotated[
        int,
        typer.Option("--labelled", min=0, help="other, labelled subjects (train/test split)"),
    ] = _DEMO_NUM_LABELLED,
    seed: Annotated[int, typer.Option("--seed", help="data set seed")] = _DEMO_SEED,
    lesions: Annotated[
        bool, typer.Option("--lesions", help="add white-matter lesions (label 4)")
    ] = False,
    heads: Annotated[
        bool,
        typer.Option(
            "--heads",
            help="wrap brains in a head (skull, scalp, eyes, neck; labels unchanged), as a raw "
            "scan before skull stripping",
        ),
    ] = False,
    spacing: Annotated[
        str,
        typer.Option(
            "--spacing", help="voxel spacing in mm: one number, x,y,z, or 'random' (per subject)"
        ),
    ] = _DEMO_SPACING,
    test_fraction: Annotated[
        float, typer.Option("--test-fraction", help="fraction of labelled subjects split 'test'")
    ] = _DEMO_TEST_FRACTION,
    name: Annotated[str, typer.Option("--name", help="manifest name prefix")] = _DEMO_NAME,
    workers: Annotated[
        int | None, typer.Option("--workers", min=1, help="processes (default: CPU count)")
    ] = None,
    with_mni: Annotated[
        bool, typer.Option("--with-mni/--no-mni", help="also write the MNI152 test case")
    ] = True,
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
) -> None:
    """Write synthetic brain MRI with exact labels (and the MNI152 case) plus their manifests."""
    from toolkit.data.synthetic import write_synthetic_dataset

    spacing_mm = parse_spacing(spacing)
    start = time.perf_counter()
    paths = write_synthetic_dataset(
        out,
        subjects,
        labelled,
        seed,
        lesions=lesions,
        heads=heads,
        spacing_mm=spacing_mm,
        test_fraction=test_fraction,
        name=name,
        workers=workers,
        progress=progress,
    )
    seconds = time.perf_counter() - start
    total = subjects + labelled
    extra = ""
    if with_mni:
        from toolkit.data.mni import write_mni152_case

        paths["mni152"] = write_mni152_case(out)
        extra = " + MNI152 case"
    manifests = ", ".join(p.name for key, p in paths.items() if key != "subjects")
    typer.echo(
        f"wrote {total} subjects ({subjects} pretrain, {labelled} labelled){extra} to {out} "
        f"in {seconds:.1f} s ({total / max(seconds, 1e-9):.2f} subjects/s); manifests: {manifests}"
    )
