"""``report.md`` of the science benchmark: verdicts first, then the tables and figures."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from toolkit.probe import ProbeResult


def write_science_report(
    out: Path,
    *,
    settings: Mapping[str, Any],
    summary: Sequence[str],
    infill: Mapping[str, Any],
    probe: ProbeResult,
    finetune: pd.DataFrame,
    comparisons: pd.DataFrame,
    mae_run: Path,
    stage_seconds: Mapping[str, float],
    seconds: float,
    cpu_seconds: float,
) -> Path:
    """Write ``out/report.md`` with ``out/figures/*.png``; return the report's path."""
    import pandas as pd

    from toolkit.report import MarkdownReport
    from toolkit.visualize import plot_label_count_dice

    doc = MarkdownReport(out, "Science benchmark: does the MAE learn, and does it help?")
    doc.heading("Verdicts")
    doc.bullets(list(summary))

    doc.heading("1. In-fill gate (pretraining validation crops and masks)")
    doc.table(
        pd.DataFrame(
            [
                ("val_loss (MAE), last validation", infill.get("val_loss")),
                ("infill_loss (Gaussian in-fill)", infill.get("infill_loss")),
                ("margin (positive = MAE better)", infill.get("infill_margin")),
                ("best validation: margin", infill.get("best_margin")),
            ],
            columns=["quantity", "value"],
        )
    )
    if (mae_run / "loss.png").is_file():
        doc.image(mae_run / "loss.png", "MAE training and validation loss with the in-fill line")

    doc.heading("2. Frozen-encoder probes (validation subjects only)")
    doc.text(f"```\n{probe.format()}\n```")
    if probe.out_dir is not None and (probe.out_dir / "probe.png").is_file():
        doc.image(probe.out_dir / "probe.png", "Probe Dice per seed: MAE vs random encoders")

    doc.heading("3. Fine-tuning (test subjects and MNI152; differences paired by seed)")
    doc.table(comparisons)
    if len(finetune):
        fig = plot_label_count_dice(finetune, title="Fine-tuning: pretrained vs scratch")
        doc.figure(fig, "finetune_dice", "Mean test Dice per run against labelled subjects")
        doc.text("Every run (mean Dice over test cases and labels):")
        doc.table(finetune.drop(columns=["run"], errors="ignore"))

    doc.heading("Settings and cost")
    doc.table(
        pd.DataFrame([(k, str(v)) for k, v in settings.items()], columns=["setting", "value"])
    )
    doc.text(
        f"Wall time {seconds:.0f} s, CPU time {cpu_seconds:.0f} s. Stages (wall): "
        + ", ".join(f"{k} {v:.0f} s" for k, v in stage_seconds.items())
        + "."
    )
    return doc.write()


__all__ = ["write_science_report"]
