"""Pretraining commands: ``pretrain``, ``bench pretrain`` and ``estimate``.

Examples::

    mae3d pretrain tiny data.cache_dir=cache/demo_pretrain --out runs/mae_tiny
    mae3d pretrain tiny --out runs/mae_tiny --resume
    mae3d bench pretrain --model resenc_l --patch 160 --batch 2 --steps 20
    mae3d bench contention --steps 10
    mae3d bench gpu --out bench_gpu      # the prepared GPU check (tiny on CPU)
    mae3d estimate paper data.cache_dir=cache/brains --steps 3
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from toolkit.cli.app import app

if TYPE_CHECKING:
    from toolkit.config import Config

bench_app = typer.Typer(
    help="Measure training speed, memory, FLOP/s and loader throughput.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(bench_app, name="bench")


@app.command("pretrain")
def pretrain_command(
    config: Annotated[str, typer.Argument(help="preset name (tiny, paper) or YAML file")],
    overrides: Annotated[
        list[str] | None,
        typer.Argument(help="config overrides, e.g. data.cache_dir=cache/x mask.ratio=0.6"),
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="run folder")] = Path("runs/pretrain"),
    resume: Annotated[
        bool, typer.Option("--resume", help="continue from RUN_DIR/checkpoints/latest.pt")
    ] = False,
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
) -> None:
    """MAE-pretrain a network on a preprocessed cache (create RUN_DIR/STOP to stop cleanly).

    The last line compares the final val_loss with the parameter-free in-fill baseline.
    """
    from toolkit.config import load_config
    from toolkit.errors import DataError
    from toolkit.infill_gate import infill_verdict
    from toolkit.models import mae_geometry_warnings
    from toolkit.pretrain import pretrain

    cfg = load_config(config, overrides or [])
    for warning in mae_geometry_warnings(cfg):
        typer.echo(f"warning: {warning}", err=True)
    run_dir = pretrain(cfg, out, resume=resume, progress=progress)
    typer.echo(f"pretraining run: {run_dir} (weights in {run_dir / 'checkpoints'})")
    # The last line is the in-fill sanity gate: did the MAE learn more than a blur?
    try:
        typer.echo(infill_verdict(run_dir)["message"])
    except DataError as exc:
        typer.echo(f"in-fill check unavailable: {exc}")


@app.command("check-config")
def check_config_command(
    config: Annotated[str, typer.Argument(help="preset name (tiny, paper) or YAML file")],
    overrides: Annotated[
        list[str] | None,
        typer.Argument(help="config overrides, e.g. mask.block_size=8"),
    ] = None,
) -> None:
    """Check a config: errors fail with one line; departures from the paper's mask geometry warn."""
    import torch

    from toolkit.config import load_config
    from toolkit.models import build_mae, mae_geometry_warnings

    cfg = load_config(config, overrides or [])
    with torch.device("meta"):
        build_mae(cfg)  # patch, block and network must fit (no memory, no time on "meta")
    warnings = mae_geometry_warnings(cfg)
    for warning in warnings:
        typer.echo(f"warning: {warning}")
    typer.echo(f"config ok ({len(warnings)} warning(s))")


def _bench_config(
    config: str | None,
    overrides: list[str] | None,
    *,
    model: str | None,
    patch: int | None,
    batch: int | None,
    variant: str | None,
    workers: int | None,
    precision: str | None,
    device: str | None,
) -> Config:
    from toolkit.config import load_config
    from toolkit.engine.runtime import accelerator_available

    cfg = load_config(config or ("paper" if accelerator_available() else "tiny"))
    pairs: dict[str, object] = {}
    if model is not None:
        pairs["model.name"] = model
    if patch is not None:
        pairs["data.patch_size"] = [patch, patch, patch]
    if batch is not None:
        pairs["pretrain.batch_size"] = batch
    if variant is not None:
        pairs["mask.variant"] = variant
    if workers is not None:
        pairs["data.num_workers"] = workers
    if precision is not None:
        pairs["runtime.precision"] = precision
    if device is not None:
        pairs["runtime.device"] = device
    if pairs:
        cfg = cfg.replace(pairs)
    return cfg.replace(overrides) if overrides else cfg


@bench_app.command("pretrain")
def bench_pretrain_command(
    overrides: Annotated[
        list[str] | None, typer.Argument(help="extra config overrides, e.g. mask.block_size=32")
    ] = None,
    config: Annotated[
        str | None,
        typer.Option(help="preset or YAML to start from (default: paper on a GPU, tiny on CPU)"),
    ] = None,
    model: Annotated[str | None, typer.Option(help="network, e.g. resenc_l")] = None,
    patch: Annotated[int | None, typer.Option(min=8, help="cubic patch edge in voxels")] = None,
    batch: Annotated[int | None, typer.Option(min=1, help="batch size")] = None,
    steps: Annotated[int, typer.Option(min=1, help="timed steps")] = 20,
    warmup: Annotated[int, typer.Option(min=0, help="untimed steps first")] = 2,
    variant: Annotated[str | None, typer.Option(help="dense or s3d")] = None,
    cache: Annotated[
        Path | None, typer.Option(help="cache for the loader rate (default: in-memory volumes)")
    ] = None,
    workers: Annotated[int | None, typer.Option(min=0, help="loader worker processes")] = None,
    loader_batches: Annotated[int, typer.Option(min=1, help="batches for the loader rate")] = 10,
    precision: Annotated[str | None, typer.Option(help="bf16, fp16 or fp32")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda or cuda:N")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Time pretraining steps; print steps/s, voxels/s, peak memory, TFLOP/s and loader rate."""
    from toolkit.bench import bench_pretrain

    cfg = _bench_config(
        config,
        overrides,
        model=model,
        patch=patch,
        batch=batch,
        variant=variant,
        workers=workers,
        precision=precision,
        device=device,
    )
    report = bench_pretrain(
        cfg, steps=steps, warmup=warmup, cache=cache, loader_batches=loader_batches
    )
    if as_json:
        typer.echo(json.dumps(report.to_dict()))
    else:
        typer.echo("\n".join(report.lines()))


@bench_app.command("contention")
def bench_contention_command(
    overrides: Annotated[
        list[str] | None, typer.Argument(help="config overrides, e.g. runtime.threads=2")
    ] = None,
    config: Annotated[str, typer.Option(help="preset or YAML to time")] = "tiny",
    steps: Annotated[int, typer.Option(min=1, help="timed steps per measurement")] = 10,
    burners: Annotated[int, typer.Option(min=1, help="CPU-burning processes beside it")] = 1,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Time the tiny pretraining step alone and beside CPU-burning processes; print the ratio."""
    from toolkit.bench_contention import measure_contention
    from toolkit.config import load_config

    cfg = load_config(config, list(overrides or []) + ["runtime.device=cpu"])
    report = measure_contention(cfg, steps=steps, burners=burners)
    if as_json:
        typer.echo(json.dumps(report.to_dict()))
    else:
        typer.echo("\n".join(report.lines()))


@bench_app.command("gpu")
def bench_gpu_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="folder for report.md / report.json")],
    budget: Annotated[
        float, typer.Option(min=0, help="wall-clock budget in seconds (stages past it skip)")
    ] = 480.0,
) -> None:
    """The whole GPU check in one go (tiny sizes on CPU); writes DIR/report.md and report.json."""
    from toolkit.bench_gpu import run_gpu_bench

    run_gpu_bench(out, budget_s=budget, log=typer.echo)
    typer.echo(f"report: {out / 'report.md'}")


@app.command("estimate")
def estimate_command(
    config: Annotated[str, typer.Argument(help="preset name or YAML file of the planned run")],
    overrides: Annotated[
        list[str] | None, typer.Argument(help="config overrides, e.g. pretrain.steps=100000")
    ] = None,
    steps: Annotated[int, typer.Option(min=1, help="steps to measure")] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Measure a few steps of a config and extrapolate memory and run time."""
    from dataclasses import asdict

    from toolkit.bench import estimate_run
    from toolkit.config import load_config

    cfg = load_config(config, overrides or [])
    estimate = estimate_run(cfg, steps=steps)
    if as_json:
        typer.echo(json.dumps(asdict(estimate)))
    else:
        typer.echo("\n".join(estimate.lines()))
