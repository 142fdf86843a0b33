"""Ablation sweeps: ``sweep`` (run, resume or dry-run a grid) and ``sweep-report`` (mean ranks).

Examples::

    mae3d sweep data_manifests/sweeps/example_mask_ratio.yaml --out sweeps/mask_ratio --dry-run
    mae3d sweep data_manifests/sweeps/example_mask_ratio.yaml --out sweeps/mask_ratio
    mae3d sweep SPEC --out DIR --executor local --max-parallel 2        # 2 subprocesses at a time
    mae3d sweep SPEC --out DIR --executor slurm --slurm-partition gpu --gpus-per-run 1 \
        --max-parallel 8 --slurm-option account=lab --setup "source .venv/bin/activate"
    mae3d sweep-report sweeps/mask_ratio --baseline scratch
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from toolkit.cli.app import app
from toolkit.errors import ConfigError


@app.command("sweep")
def sweep_command(
    spec: Annotated[Path, typer.Argument(help="sweep spec YAML (base, axes, datasets, seeds)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="sweep folder (created; rerun resumes)")],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="list the runs with estimated times; run nothing")
    ] = False,
    measure_steps: Annotated[
        int,
        typer.Option(min=0, help="dry run: timed steps per distinct setting (0 = no estimate)"),
    ] = 2,
    retries: Annotated[int, typer.Option(min=0, help="extra attempts for a failing run")] = 1,
    progress: Annotated[bool, typer.Option(help="show a progress bar over runs")] = True,
    executor: Annotated[
        str,
        typer.Option(
            help="inline: one run after another in this process; local: each run a subprocess "
            "(submitit); slurm: each run an sbatch job (submitit)"
        ),
    ] = "inline",
    max_parallel: Annotated[
        int | None,
        typer.Option(min=1, help="jobs in flight at once (default: local 1, slurm no cap)"),
    ] = None,
    gpus_per_run: Annotated[int, typer.Option(min=0, help="GPUs of each job")] = 0,
    cpus_per_run: Annotated[
        int | None, typer.Option(min=1, help="slurm: --cpus-per-task of each job")
    ] = None,
    mem_gb: Annotated[float | None, typer.Option(help="slurm: memory of each job in GB")] = None,
    timeout_min: Annotated[
        int, typer.Option(min=1, help="wall-time limit of each job in minutes")
    ] = 48 * 60,
    slurm_partition: Annotated[str | None, typer.Option(help="slurm: --partition")] = None,
    slurm_option: Annotated[
        list[str] | None,
        typer.Option(help="slurm: any #SBATCH option as KEY=VALUE (repeatable), e.g. account=lab"),
    ] = None,
    setup: Annotated[
        list[str] | None,
        typer.Option(help="local/slurm: a shell line run before each job (repeatable)"),
    ] = None,
) -> None:
    """Run (or resume) a grid of pretraining and fine-tuning runs and collect results.csv."""
    from toolkit import sweep

    jobs = sweep.JobOptions(
        executor=executor,
        max_parallel=max_parallel,
        gpus_per_run=gpus_per_run,
        cpus_per_run=cpus_per_run,
        mem_gb=mem_gb,
        timeout_min=timeout_min,
        slurm_partition=slurm_partition,
        slurm_options=parse_slurm_options(slurm_option or []),
        setup=tuple(setup or ()),
    )
    parsed = sweep.load_sweep_spec(spec)
    if dry_run:
        plan = sweep.expand_sweep(parsed, out)
        estimates = sweep.estimate_sweep(plan, measure_steps=measure_steps)
        typer.echo(sweep.format_estimates(estimates, measure_steps=measure_steps))
        if executor == "slurm":
            first = plan.runs[0]
            name = sweep.executors.job_name(plan, first)
            typer.echo(f"\nsbatch script of the job of {first.name} (nothing submitted):")
            typer.echo(sweep.sbatch_script(jobs, name, plan.out_dir / sweep.JOBS_DIR))
        return
    report = sweep.run_sweep(parsed, out, jobs=jobs, retries=retries, progress=progress)
    typer.echo("\n".join(report.lines()))
    if report.failed or report.blocked:
        raise typer.Exit(1)


def parse_slurm_options(items: list[str]) -> dict[str, str]:
    """``["account=lab", "qos=high"]`` -> ``{"account": "lab", "qos": "high"}``."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().lstrip("-")
        if not sep or not key:
            raise ConfigError(f"--slurm-option: expected KEY=VALUE, got {item!r}")
        out[key.replace("-", "_")] = value
    return out


def parse_baseline(text: str) -> str | dict[str, Any]:
    """``scratch`` -> a config label; ``arm=scratch`` -> ``{"arm": "scratch"}``."""
    if "=" not in text or " " in text:
        return text
    column, _, value = text.partition("=")
    import yaml

    return {column: yaml.safe_load(value)}


@app.command("sweep-report")
def sweep_report_command(
    sweep_dir: Annotated[Path, typer.Argument(help="sweep folder or results.csv")],
    metric: Annotated[str, typer.Option(help="dice, hd95_mm, train_time_s, ...")] = "dice",
    by: Annotated[
        list[str] | None, typer.Option(help="column(s) naming a configuration (default: config)")
    ] = None,
    baseline: Annotated[
        str | None,
        typer.Option(help="baseline config (e.g. scratch) or column=value (e.g. arm=scratch)"),
    ] = None,
    match: Annotated[
        list[str] | None,
        typer.Option(help="columns pairing a config with its baseline (e.g. finetune.schedule)"),
    ] = None,
    csv: Annotated[Path | None, typer.Option(help="also write the table as CSV")] = None,
) -> None:
    """Print mean score per dataset, mean and mean rank per configuration (finished runs only)."""
    from toolkit.report import dataframe_to_markdown
    from toolkit.results import load_results, summary_table

    table = load_results(sweep_dir)
    if table.empty:
        raise ConfigError(f"{sweep_dir}: no finished fine-tuning runs yet")
    summary = summary_table(
        table,
        metric,
        by or "config",
        baseline=parse_baseline(baseline) if baseline else None,
        match=match or (),
    )
    runs = table["run"].nunique() if "run" in table.columns else len(table)
    typer.echo(
        f"{metric}: {len(summary)} configurations, {table['dataset'].nunique()} dataset(s), "
        f"{runs} fine-tuning run(s); mean rank over datasets (1 = best, ties averaged)"
    )
    typer.echo(dataframe_to_markdown(summary, float_format="{:.4f}"))
    if csv is not None:
        csv.parent.mkdir(parents=True, exist_ok=True)
        tmp = csv.with_name(f".{csv.name}.tmp")
        summary.to_csv(tmp, index=False)
        tmp.replace(csv)
        typer.echo(f"written: {csv}")
