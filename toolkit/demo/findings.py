"""Sentences the demo writes from its numbers: the in-fill check, the probe gap, the findings.

The demo's summary (printed, top of ``report.md``, ``demo_result.json``) leads with two answers
that fine-tuning Dice alone cannot give: did the MAE beat a parameter-free in-fill of the masked
blocks (:func:`infill_finding`), and do its frozen features beat random ones
(:func:`probe_finding`)?
Only then comes the fine-tuning table (:func:`summary_lines`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from toolkit.study import ARMS, format_dice_table, format_pm, verdict

if TYPE_CHECKING:
    import pandas as pd

#: The probe verdict (``toolkit.probe.verdict``) that counts as "the MAE features help".
_MAE_AHEAD = "MAE ahead of random by more than the spread"


def infill_finding(infill: Mapping[str, Any] | None, reason: str = "") -> str:
    """One sentence on the pretraining run's in-fill margin.

    Args:
        infill: :func:`toolkit.infill_gate.infill_verdict` of the pretraining run, or None when
            it has none (then ``reason`` says why).
        reason: why there is no verdict.

    Example:
        >>> v = {"step": 8, "val_loss": 0.4, "infill_loss": 0.5, "infill_margin": 0.1,
        ...      "message": "val_loss 0.4 vs in-fill 0.5: MAE beats in-fill by 0.1"}
        >>> infill_finding(v).split(": ", 1)[1].split(" (")[0]
        'val_loss 0.4 vs in-fill 0.5: MAE beats in-fill by 0.1; margin +0.1'
    """
    if infill is None:
        return f"In-fill check (MAE pretraining): no verdict ({reason or 'no validation'})."
    return (
        f"In-fill check (MAE pretraining, step {infill['step']}, validation crops): "
        f"{infill['message']}; margin {float(infill['infill_margin']):+.3g} (positive = the MAE "
        "beats the parameter-free Gaussian in-fill of the masked blocks)."
    )


def probe_finding(gaps: pd.DataFrame | None) -> str | None:
    """One sentence on the feature probe: MAE - random encoder validation Dice per probe.

    Args:
        gaps: :attr:`toolkit.probe.ProbeResult.gaps` (``probe``, ``gap``, ``sd``, ``n``,
            ``verdict``), or None without a probe.

    Returns:
        The sentence, or None without a probe. With one seed no spread is shown.

    Example:
        >>> import pandas as pd
        >>> gaps = pd.DataFrame([("linear", 0.1, 0.02, 3, _MAE_AHEAD)],
        ...                     columns=["probe", "gap", "sd", "n", "verdict"])
        >>> probe_finding(gaps).split(": ", 1)[1].split(";")[0]
        'linear +0.100 ± 0.020 (MAE ahead of random by more than the spread)'
    """
    if gaps is None or gaps.empty:
        return None
    n = int(gaps["n"].max())
    parts = [
        f"{r['probe']} {format_pm(float(r['gap']), float(r['sd']), sign=True)} ({r['verdict']})"
        for r in gaps.to_dict(orient="records")
    ]
    verdicts = set(gaps["verdict"])
    if all(math.isnan(float(sd)) for sd in gaps["sd"]):
        meaning = "one seed cannot tell a gap from noise (the full demo runs 3)"
    elif _MAE_AHEAD in verdicts:
        meaning = "the MAE features carry something a classifier reads better than random features"
    else:
        meaning = (
            "at this size the MAE has not learnt features a classifier reads better than random "
            "ones"
        )
    return (
        f"Feature probe (frozen encoder, voxel classifiers, validation Dice, MAE - random encoder, "
        f"{n} seed{'s' if n != 1 else ''}): " + "; ".join(parts) + f"; {meaning}."
    )


def table_findings(table: pd.DataFrame, sweep: pd.DataFrame) -> list[str]:
    """Sentences on the fine-tuning Dice table and the sweep (written from them)."""
    lines = []
    for row in table[table["label"] == "mean"].to_dict(orient="records"):
        if "difference" not in row:
            continue
        spread = max(row["pretrained_sd"], row["scratch_sd"])
        words = verdict(row["difference"], spread, "pretrained", "scratch")
        sd_text = "" if math.isnan(spread) else f", largest seed sd {spread:.3f}"
        lines.append(
            f"{row['dataset']}: mean Dice pretrained {row['pretrained']:.3f} vs scratch "
            f"{row['scratch']:.3f} ({row['difference']:+.3f}; {words}{sd_text})."
        )
    pivot = sweep.pivot_table(index=["schedule", "lr"], columns="arm", values="val_dice")
    if set(ARMS) <= set(pivot.columns):
        diffs = (pivot["pretrained"] - pivot["scratch"]).dropna()
        parts = [f"{sched} lr {lr:g}: {d:+.3f}" for (sched, lr), d in diffs.items()]
        lines.append(
            "Validation Dice in the sweep, pretrained - scratch, per setting: "
            + "; ".join(parts)
            + "."
        )
    return lines


def contrast_finding(gaps: pd.DataFrame | None, table: pd.DataFrame) -> str | None:
    """A sentence when the probe and the fine-tuning table disagree, else None.

    The probe asks whether the frozen features are there; fine-tuning asks whether a short run
    turns them into test Dice. When the probe finds the MAE ahead and no test set has the
    pretrained arm ahead (or the other way round), the reader should not have to spot it.

    Args:
        gaps: :attr:`toolkit.probe.ProbeResult.gaps` (None without a probe).
        table: :func:`toolkit.study.dice_table` of the final runs.
    """
    if gaps is None or gaps.empty or "difference" not in table:
        return None
    probe_ahead = _MAE_AHEAD in set(gaps["verdict"])
    means = table[table["label"] == "mean"].to_dict(orient="records")
    words = [
        verdict(r["difference"], max(r["pretrained_sd"], r["scratch_sd"]), "pretrained", "scratch")
        for r in means
    ]
    finetune_ahead = "pretrained ahead" in words
    if probe_ahead and not finetune_ahead:
        return (
            "The probe finds features in the MAE encoder that random encoders lack, but this "
            "short fine-tuning does not turn them into a higher test Dice than training from "
            "scratch: the pretraining learnt something; the transfer at this size does not show it."
        )
    if finetune_ahead and not probe_ahead:
        return (
            "The pretrained arm is ahead on a test set although the probe finds no feature gap "
            "beyond its spread: the gain may come from the initialisation's scale or from noise "
            "rather than from learnt features."
        )
    return None


def summary_lines(
    infill_line: str,
    probe_line: str | None,
    table: pd.DataFrame,
    num_seeds: int,
    chosen: Mapping[str, Mapping[str, Any]],
) -> list[str]:
    """The demo's summary: in-fill check, probe gap, then the fine-tuning Dice table.

    Args:
        infill_line: from :func:`infill_finding`.
        probe_line: from :func:`probe_finding` (None: no probe was run).
        table: :func:`toolkit.study.dice_table` of the final runs.
        num_seeds: seeds per arm in ``table``.
        chosen: arm -> ``{"lr", "schedule", "val_dice"}`` picked by the sweep.
    """
    spread = f"± sd over {num_seeds} seeds" if num_seeds > 1 else "1 seed, no spread"
    lines = [infill_line, probe_line or "Feature probe: not run (probe_seeds = 0)."]
    lines += [
        "",
        f"Fine-tuning Dice on the test sets (mean over cases, {spread}; "
        "difference = pretrained - scratch):",
        *format_dice_table(table).splitlines(),
    ]
    lines += [
        f"{arm}: schedule {c['schedule']}, peak lr {c['lr']:g} "
        f"(chosen on validation Dice {c['val_dice']:.3f})"
        for arm, c in chosen.items()
    ]
    return lines


__all__ = ["contrast_finding", "infill_finding", "probe_finding", "summary_lines", "table_findings"]
