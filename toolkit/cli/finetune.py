"""Fine-tuning commands: ``finetune``, ``evaluate``, ``check-transfer``, ``export``,
``label-efficiency`` and ``demo``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from toolkit.cli.app import app
from toolkit.errors import ConfigError


@app.command("check-transfer")
def check_transfer_command(
    checkpoint: Annotated[
        Path,
        typer.Argument(
            help="pretraining checkpoint: toolkit, nnssl (e.g. OpenMind ResEnc-L) or "
            "nnU-Net network_weights"
        ),
    ],
    config: Annotated[str, typer.Argument(help="fine-tuning preset name or YAML file")],
    overrides: Annotated[
        list[str] | None, typer.Argument(help="config overrides, e.g. model.in_channels=2")
    ] = None,
    num_classes: Annotated[
        int | None, typer.Option(help="classes of the target (default: from the manifest)")
    ] = None,
) -> None:
    """Print what a pretrained checkpoint transfers into a fine-tuning config (exit 1: no fit).

    An nnssl checkpoint's adaptation plan chooses the network.
    """
    from toolkit.config import load_config
    from toolkit.transfer import inspect_transfer

    cfg = load_config(config, overrides or [])
    report = inspect_transfer(checkpoint, cfg, num_classes=num_classes)
    typer.echo(report.format())
    if not report.ok:
        raise typer.Exit(1)


@app.command("export")
def export_command(
    checkpoint: Annotated[Path, typer.Argument(help="toolkit pretraining checkpoint")],
    out: Annotated[Path, typer.Option("--out", "-o", help="file to write")],
    fmt: Annotated[
        str,
        typer.Option("--format", help="nnssl (adaptation plan) or nnunet (-pretrained_weights)"),
    ] = "nnssl",
) -> None:
    """Export a pretraining checkpoint for nnssl / nnU-Net fine-tuning."""
    from toolkit.transfer import export_checkpoint

    path = export_checkpoint(checkpoint, out, fmt=fmt)
    typer.echo(f"wrote {path} ({fmt} format, {path.stat().st_size / 1e6:.1f} MB)")


@app.command("finetune")
def finetune_command(
    config: Annotated[str, typer.Argument(help="preset name or YAML file")],
    overrides: Annotated[
        list[str] | None, typer.Argument(help="config overrides, e.g. finetune.steps=500")
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="run folder")] = Path("runs/finetune"),
    pretrained: Annotated[
        Path | None,
        typer.Option(
            help="pretraining checkpoint to start from: toolkit, nnssl (its adaptation plan "
            "chooses the network) or nnU-Net network_weights"
        ),
    ] = None,
    scratch: Annotated[bool, typer.Option("--scratch", help="train from random weights")] = False,
    resume: Annotated[
        bool, typer.Option(help="continue from RUN_DIR/checkpoints/latest.pt")
    ] = False,
) -> None:
    """Fine-tune a segmentation network from pretrained weights or from scratch."""
    from toolkit.config import load_config
    from toolkit.finetune import finetune

    if (pretrained is None) == (not scratch):
        raise ConfigError("finetune: give exactly one of --pretrained CKPT or --scratch")
    cfg = load_config(config, overrides or [])
    run_dir = finetune(cfg, out, pretrained=pretrained, resume=resume)
    typer.echo(f"fine-tuning finished: {run_dir}")


@app.command("evaluate")
def evaluate_command(
    run_dir: Annotated[Path, typer.Argument(help="fine-tuning run folder")],
    manifest: Annotated[Path, typer.Option(help="labelled manifest of the cases to score")],
    split: Annotated[
        str | None, typer.Option(help="only cases of this split (e.g. test); default: all")
    ] = None,
    checkpoint: Annotated[str, typer.Option(help="best, final or latest")] = "best",
    out: Annotated[
        Path | None, typer.Option(help="output folder (default RUN_DIR/evaluation/<dataset>)")
    ] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, ... (default: run config)")] = None,
) -> None:
    """Segment a manifest's cases with a fine-tuned run and write Dice / HD95 tables."""
    from toolkit.evaluate import evaluate, format_summary, summarize

    df = evaluate(run_dir, manifest, checkpoint=checkpoint, split=split, out_dir=out, device=device)
    typer.echo(format_summary(summarize(df)))


@app.command("label-efficiency")
def label_efficiency_command(
    config: Annotated[str, typer.Argument(help="preset name or YAML file")],
    overrides: Annotated[list[str] | None, typer.Argument(help="config overrides")] = None,
    pretrained: Annotated[Path, typer.Option(help="pretraining checkpoint")] = Path(),
    out: Annotated[Path, typer.Option("--out", "-o", help="output folder")] = Path(
        "runs/label_efficiency"
    ),
    ks: Annotated[
        str, typer.Option(help="labelled training cases per run, e.g. 1,3,10,0 (0 = all)")
    ] = "1,3,0",
    seeds: Annotated[str, typer.Option(help="seeds, e.g. 0,1")] = "0,1",
    split: Annotated[str, typer.Option(help="manifest split to score")] = "test",
) -> None:
    """Fine-tune pretrained vs scratch on k labelled cases x seeds; table and Dice-vs-k plot."""
    from toolkit.config import load_config
    from toolkit.label_efficiency import run_label_efficiency

    if not str(pretrained) or not pretrained.is_file():
        raise ConfigError(f"--pretrained: checkpoint {pretrained} not found")
    from toolkit.transfer import config_for_source, read_pretrained

    # Both arms train the network an nnssl checkpoint names, so scratch is the same network.
    cfg, note = config_for_source(load_config(config, overrides or []), read_pretrained(pretrained))
    if note:
        typer.echo(note)
    table = run_label_efficiency(
        cfg,
        pretrained,
        ks=_ints(ks, "--ks"),
        seeds=_ints(seeds, "--seeds"),
        out_dir=out,
        split=split,
    )
    summary = table.groupby(["k", "arm"])["dice"].agg(["mean", "std", "count"]).reset_index()
    typer.echo(summary.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    typer.echo(f"table and plot in {out}")


@app.command("demo")
def demo_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="demo folder")] = Path("demo_out"),
    quick: Annotated[
        bool, typer.Option(help="a much shorter run (smoke test, not a result)")
    ] = False,
) -> None:
    """End to end on synthetic data + MNI152: pretrain, fine-tune vs scratch, evaluate, report."""
    from toolkit.demo import run_demo

    # run_demo prints the table and the chosen schedules as it finishes.
    result = run_demo(out, quick=quick)
    typer.echo(
        f"report: {result.report}  ({result.seconds:.0f} s wall, {result.cpu_seconds:.0f} s CPU)"
    )


def _ints(text: str, name: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values or any(v < 0 for v in values):
        raise ConfigError(f"{name}: expected comma-separated non-negative integers, got {text!r}")
    return values
