"""``mae3d preprocess``: turn a manifest into a patch cache (reorient, crop, z-score, resample)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

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
    manifest: Annotated[
        Path | None, typer.Argument(help="dataset manifest (YAML); not with --verify")
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="cache folder to write")] = None,
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
    shard: Annotated[
        str | None,
        typer.Option(
            help="I/N: make only shard I (0-based) of N; the last shard to finish writes the plan"
        ),
    ] = None,
    merge: Annotated[
        bool, typer.Option("--merge", help="write plan.json of a cache filled by shards")
    ] = False,
    executor: Annotated[
        str | None,
        typer.Option(help="slurm or local: submit --shards N shards as one job array (submitit)"),
    ] = None,
    shards: Annotated[int, typer.Option(min=1, help="number of shards for --executor")] = 1,
    slurm_partition: Annotated[str | None, typer.Option(help="SLURM partition")] = None,
    slurm_account: Annotated[str | None, typer.Option(help="SLURM account")] = None,
    cpus_per_task: Annotated[int, typer.Option(min=1, help="CPUs (and workers) per shard")] = 4,
    mem_gb: Annotated[float, typer.Option(help="memory per shard in GB")] = 16.0,
    timeout_min: Annotated[int, typer.Option(min=1, help="time limit per shard in minutes")] = 240,
    max_parallel: Annotated[
        int | None, typer.Option(min=1, help="at most this many shards at once")
    ] = None,
    verify: Annotated[
        Path | None,
        typer.Option(help="check sizes and checksums of every entry of this cache; exit 1 if bad"),
    ] = None,
    repair: Annotated[
        bool, typer.Option("--repair", help="with --verify: re-make the bad entries")
    ] = False,
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
) -> None:
    """Preprocess a manifest into a patch cache (resumes; reuses finished, verified cases)."""
    if verify is not None:
        _verify(verify, repair, workers)
        return
    if repair:
        raise ConfigError("--repair: only together with --verify CACHE")
    if manifest is None or out is None:
        raise ConfigError("preprocess: give MANIFEST and --out CACHE (or --verify CACHE)")
    from toolkit.config import load_config

    cfg = load_config(config) if config is not None else load_config("paper")
    options: dict[str, Any] = {
        "target_spacing_mm": parse_spacing(spacing)
        if spacing is not None
        else cfg.data.target_spacing_mm,
        "image_order": cfg.data.image_order,
        "brain_extraction": (
            cfg.data.brain_extraction if brain_extraction is None else brain_extraction
        ),
    }
    if sum([shard is not None, merge, executor is not None]) > 1:
        raise ConfigError("preprocess: use one of --shard, --merge and --executor")
    if executor is not None:
        _submit(manifest, out, executor, shards, workers, options, locals())
    elif merge:
        from toolkit.data.preprocess.shards import merge_shards

        plan = merge_shards(manifest, out, **options)
        typer.echo(f"{plan.dataset}: plan.json written for {len(plan.cases)} cases in {out}")
    elif shard is not None:
        from toolkit.data.preprocess.shards import describe_shard, parse_shard, preprocess_shard

        result = preprocess_shard(
            manifest, out, parse_shard(shard), workers=workers, progress=progress, **options
        )
        _print_remade(result.outcome.remade)
        typer.echo(describe_shard(result))
    else:
        _run(manifest, out, workers, progress, options)


def _run(manifest: Path, out: Path, workers: int, progress: bool, options: dict[str, Any]) -> None:
    from toolkit.data.preprocess import preprocess_manifest

    plan = preprocess_manifest(manifest, out, workers=workers, progress=progress, **options)
    run = plan.last_run
    _print_remade([tuple(line.split(": ", 1)) for line in run.get("remade", [])])
    seconds = max(float(run["seconds"]), 1e-9)
    rate = run["processed"] / seconds if run["processed"] else 0.0
    shape = "x".join(f"{s:g}" for s in plan.fingerprint["median_resampled_shape"])
    spacing_text = "x".join(f"{s:g}" for s in plan.target_spacing_mm)
    typer.echo(
        f"{plan.dataset}: {len(plan.cases)} cases in {out} "
        f"({run['processed']} preprocessed, {run['reused']} reused) in {seconds:.1f} s "
        f"= {rate:.2f} cases/s; spacing {spacing_text} mm, median shape {shape}"
    )


def _print_remade(remade: Any) -> None:
    for case_id, why in remade:
        typer.echo(f"case {case_id}: corrupt cache entry re-made ({why})")


def _submit(
    manifest: Path,
    out: Path,
    executor: str,
    count: int,
    workers: int,
    options: dict[str, Any],
    args: dict[str, Any],
) -> None:
    from toolkit.data.preprocess.shards import slurm_parameters, submit_shards

    slurm = slurm_parameters(
        count,
        partition=args["slurm_partition"],
        account=args["slurm_account"],
        cpus_per_task=args["cpus_per_task"],
        mem_gb=args["mem_gb"],
        timeout_min=args["timeout_min"],
        max_parallel=args["max_parallel"],
    )
    shard_workers = args["cpus_per_task"] if executor == "slurm" else workers
    jobs = submit_shards(
        manifest,
        out,
        count,
        executor=executor,
        slurm=slurm,
        options={**options, "workers": shard_workers},
    )
    if executor == "local":  # local jobs are this process's children: wait and report
        for job in jobs:
            typer.echo(job.result())
        return
    ids = ", ".join(str(j.job_id) for j in jobs[:4]) + (" ..." if len(jobs) > 4 else "")
    typer.echo(
        f"submitted {len(jobs)} shard(s) ({executor}): {ids}; logs in {out}/.shards/submitit; "
        "the last shard to finish writes plan.json"
    )


def _verify(cache: Path, repair: bool, workers: int) -> None:
    from toolkit.data.preprocess.verify import repair_cache, verify_cache

    checked, bad = verify_cache(cache, workers=max(workers, 1))
    for entry in bad:
        typer.echo(str(entry))
    if not bad:
        typer.echo(f"{cache}: all {checked} entries match their sizes and checksums")
        return
    if not repair:
        typer.echo(
            f"{cache}: {len(bad)} of {checked} entries are bad; rerun with --repair (or rerun "
            "'mae3d preprocess MANIFEST --out CACHE') to re-make them",
            err=True,
        )
        raise typer.Exit(1)
    repair_cache(cache, bad, workers=workers)
    typer.echo(f"{cache}: re-made {len(bad)} bad entries; all {checked} entries are good now")
