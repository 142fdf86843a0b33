"""Frozen-encoder feature probes: did pretraining learn features a classifier can read?

Fine-tuning Dice alone cannot tell "no gain" from "nothing learnt". A probe freezes the encoder,
reads its features at every voxel and trains only a small classifier on them:

1. **Encoder.** The pretraining run's plain network (``network_weights``: stem + stages, the way
   fine-tuning receives them — S3D runs densely, their mask tokens and densification convs unused)
   is compared with *random* encoders of the same architecture at the same initialisation
   (:func:`~toolkit.voxel_probe.random_encoder_weights`, one per seed).
2. **Features.** Every encoder stage's output (or ``ProbeSettings.stages``), upsampled trilinearly
   to the voxel grid and concatenated: (F, D, H, W) per case, F = sum of the stages' channels.
   Volumes are the labelled manifest preprocessed with the run's plan (the cache evaluation uses),
   zero-padded to a multiple of the encoder's total stride; whole volumes, no sliding window.
3. **Classifiers** (:mod:`toolkit.voxel_probe`). Per voxel, a linear layer (multinomial logistic
   regression) and a one-hidden-layer MLP, trained with Adam on a class-balanced voxel sample of
   the manifest's *train* cases, features standardised with that sample's statistics.
4. **Score.** Hard Dice per label on the *validation* cases, on the cache grid. Validation is the
   manifest's ``val`` split; without one, the subjects fine-tuning holds out
   (:func:`toolkit.data.sampling.split_by_subject`, seed 0, ``data.val_fraction``) — the ``test``
   split is never read.

With ``seeds=N`` the MAE encoder is probed with probe seeds 0..N-1 (voxel sample and classifier
init) and random encoder *s* with probe seed *s*, so the gap MAE - random is paired by seed.

Example:
    >>> result = probe_run("runs/mae", "data_manifests/demo_labelled.yaml")  # doctest: +SKIP
    >>> print(result.format())  # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from toolkit.config import Config, from_dict
from toolkit.errors import ConfigError, DataError
from toolkit.voxel_probe import (
    PROBE_KINDS,
    Case,
    EncoderArm,
    ProbeSettings,
    encoder_features,
    frozen_encoder,
    probe_encoders,
    random_encoder_weights,
)

PathLike = str | os.PathLike[str]
#: Default output folder inside the pretraining run.
PROBE_DIR = "probe"
#: Encoder names in the result tables.
MAE, RANDOM = "mae", "random"
#: Random encoder ``s`` is drawn with runtime seed ``cfg.runtime.seed + RANDOM_SEED_OFFSET + s``,
#: never the pretraining run's own seed (that would be the MAE encoder's starting point).
RANDOM_SEED_OFFSET = 1


@dataclass
class ProbeResult:
    """Everything a probe found; ``probe_run`` also writes it to ``out_dir``.

    Attributes:
        table: one row per probe x encoder x seed x label: ``probe``, ``encoder``, ``seed``,
            ``label``, ``label_name``, ``dice`` (mean over validation cases); ``label`` is
            ``"mean"`` for the mean over labels.
        summary: ``probe``, ``encoder``, ``label_name``, ``mean``, ``sd``, ``n`` over seeds.
        gaps: per probe: ``gap`` (MAE - random mean-label Dice, mean over paired seeds),
            ``sd`` (spread of the per-seed gaps), ``n`` and ``verdict``.
        info: run, checkpoint, manifest, cases, feature count and settings.
        out_dir: where probe.json / probe.md / probe.png went (None if not written).
    """

    table: pd.DataFrame
    summary: pd.DataFrame
    gaps: pd.DataFrame
    info: dict[str, Any] = field(default_factory=dict)
    out_dir: Path | None = None

    def format(self) -> str:
        """The printed table (probe x encoder, mean Dice ± sd per label) and the verdicts."""
        return format_probe(self.summary, self.gaps)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (what probe.json holds)."""
        return {
            "info": self.info,
            "rows": _records(self.table),
            "summary": _records(self.summary),
            "gaps": _records(self.gaps),
        }


# --------------------------------------------------------------------------------------------------
# Runs


def load_run(run_dir: PathLike, checkpoint: str = "best") -> tuple[Config, dict[str, Any], Path]:
    """Read a pretraining run: its config, checkpoint state and checkpoint path.

    Raises:
        DataError: not a run folder, no such checkpoint, or not a pretraining checkpoint.
        ConfigError: ``checkpoint`` is not ``best`` or ``final``.
    """
    from toolkit.engine.checkpoint import checkpoint_path, load_checkpoint

    run = Path(run_dir)
    if checkpoint not in ("best", "final"):
        raise ConfigError(f"--checkpoint: must be best or final, got {checkpoint!r}")
    if not (run / "checkpoints").is_dir():
        raise DataError(f"{run}: not a pretraining run folder (no checkpoints/ inside)")
    ckpt = checkpoint_path(run, checkpoint)
    if not ckpt.is_file():
        other = "final" if checkpoint == "best" else "best"
        raise DataError(
            f"{ckpt}: no {checkpoint} checkpoint in this run (try --checkpoint {other})"
        )
    state = load_checkpoint(ckpt)
    if "config" not in state or "network_weights" not in state:
        raise DataError(f"{ckpt}: not a pretraining checkpoint (needs config and network_weights)")
    try:
        cfg = from_dict(state["config"], source=str(ckpt))
    except ConfigError as exc:
        raise DataError(f"{ckpt}: the stored config is not valid here ({exc})") from None
    return cfg, state, ckpt


def summarize_probe(table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Mean ± sd over seeds per probe x encoder x label, and the MAE - random gap per probe.

    The gap is paired by seed on the mean-label Dice; its ``sd`` is the spread of the per-seed
    gaps, and the verdict says whether the MAE encoder is ahead or behind by more than that.
    """
    summary = (
        table.groupby(["probe", "encoder", "label_name"], sort=False)["dice"]
        .agg(mean="mean", sd="std", n="count")
        .reset_index()
    )
    gap_rows = []
    means = table[table["label"] == "mean"]
    for kind, part in means.groupby("probe", sort=False):
        wide = part.pivot_table(index="seed", columns="encoder", values="dice")
        if not {MAE, RANDOM} <= set(wide.columns):
            continue
        diff = (wide[MAE] - wide[RANDOM]).dropna()
        gap = float(diff.mean())
        sd = float(diff.std()) if len(diff) > 1 else float("nan")
        gap_rows.append(
            {"probe": kind, "gap": gap, "sd": sd, "n": len(diff), "verdict": verdict(gap, sd)}
        )
    gaps = pd.DataFrame(gap_rows, columns=["probe", "gap", "sd", "n", "verdict"])
    return summary, gaps


def verdict(gap: float, sd: float) -> str:
    """Words for a gap MAE - random and its spread over seeds.

    Example:
        >>> verdict(0.10, 0.02)
        'MAE ahead of random by more than the spread'
        >>> verdict(-0.01, 0.02)
        'MAE within the spread of random'
    """
    if math.isnan(sd):
        return "one seed: no spread to judge the gap against"
    if gap > sd:
        return "MAE ahead of random by more than the spread"
    if gap < -sd:
        return "MAE behind random by more than the spread"
    return "MAE within the spread of random"


def format_probe(summary: pd.DataFrame, gaps: pd.DataFrame, *, markdown: bool = False) -> str:
    """A probe x encoder table of ``mean ± sd`` Dice per label, then one gap line per probe.

    With one seed there is no sd, and the cells show the mean alone.
    """
    cols = list(dict.fromkeys(summary["label_name"]))
    cell = summary.assign(
        text=[_pm(m, s) for m, s in zip(summary["mean"], summary["sd"], strict=True)]
    )
    wide = cell.pivot_table(
        index=["probe", "encoder"], columns="label_name", values="text", aggfunc="first", sort=False
    )[cols]
    header = ["probe", "encoder", *cols]
    body = [[p, e, *row] for (p, e), row in zip(wide.index, wide.to_numpy().tolist(), strict=True)]
    gap_lines = [
        f"{r.probe}: MAE - random = {_pm(r.gap, r.sd, sign=True)} (n={r.n}): {r.verdict}"
        for r in gaps.itertuples()
    ]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(map(str, r)) + " |" for r in body]
        return "\n".join([*lines, "", *[f"- {g}" for g in gap_lines]])
    widths = [max(len(str(r[i])) for r in [header, *body]) for i in range(len(header))]
    lines = [
        "  ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=True)).rstrip()
        for r in [header, *body]
    ]
    return "\n".join([*lines, "", *gap_lines])


def _pm(mean: float, sd: float, *, sign: bool = False) -> str:
    text = f"{mean:+.3f}" if sign else f"{mean:.3f}"
    return text if math.isnan(sd) else f"{text} ± {sd:.3f}"


# --------------------------------------------------------------------------------------------------
# Front door


def probe_cases(
    cfg: Config, manifest: Any, val_fraction: float | None = None
) -> tuple[list[str], list[str]]:
    """Train and validation case ids of a labelled manifest (``test`` never included).

    The manifest's ``val`` split if it has one; otherwise the subjects fine-tuning holds out
    (:func:`toolkit.data.sampling.split_by_subject` with fine-tuning's split seed and
    ``val_fraction``, default ``data.val_fraction`` of the run).

    Raises:
        DataError: unlabelled cases, or no validation or training cases.
    """
    from toolkit.data.sampling import split_by_subject
    from toolkit.finetune import SPLIT_SEED

    where = manifest.path or manifest.name
    pool = [c for c in manifest.cases if c.split != "test"]
    unlabelled = [c.case_id for c in pool if c.label is None]
    if unlabelled:
        raise DataError(
            f"{where}: probe cases need labels; unlabelled: {', '.join(unlabelled[:5])}"
        )
    fraction = cfg.data.val_fraction if val_fraction is None else val_fraction
    subject = {c.case_id: c.subject for c in pool}
    split = {c.case_id: c.split for c in pool}
    train, val = split_by_subject(
        [c.case_id for c in pool],
        subject.__getitem__,
        fraction,
        seed=SPLIT_SEED,
        split_of=split.get,
    )
    if not val:
        raise DataError(
            f"{where}: no validation cases - give some cases 'split: val' (no val split, and "
            f"val_fraction={fraction} holds out no subject of {len(set(subject.values()))})"
        )
    if not train:
        raise DataError(f"{where}: no training cases outside the val and test splits")
    return train, val


def probe_run(
    run_dir: PathLike,
    manifest: PathLike | Any,
    *,
    seeds: int = 3,
    out_dir: PathLike | None = None,
    checkpoint: str = "best",
    settings: ProbeSettings = ProbeSettings(),
    val_fraction: float | None = None,
    device: str | None = None,
    progress: bool = True,
) -> ProbeResult:
    """Probe a pretraining run's encoder against ``seeds`` random encoders; the front door of
    ``mae3d probe``.

    Args:
        run_dir: the pretraining run folder (``checkpoints/{best,final}.pt`` with config + plan).
        manifest: labelled manifest (path or :class:`~toolkit.data.manifest.Manifest`).
        seeds: random encoders, and probe seeds per encoder (at least 1; 2+ for a spread).
        out_dir: where probe.json, probe.md and probe.png go (default ``RUN_DIR/probe``).
        checkpoint: ``best`` or ``final``.
        settings: classifier settings.
        val_fraction: held-out subject fraction when the manifest has no ``val`` split (default:
            the run's ``data.val_fraction``).
        device: ``cpu``, ``cuda``, ... for the encoders (default: the run's ``runtime.device``).
        progress: progress bars.

    Returns:
        The :class:`ProbeResult` (also written to ``out_dir``).

    Raises:
        DataError: not a run folder, a manifest without labels or validation cases, unreadable data.
        ConfigError: bad ``seeds`` / ``checkpoint``.
    """
    from toolkit.data.manifest import Manifest, load_manifest
    from toolkit.engine.runtime import setup_runtime
    from toolkit.evaluate import evaluation_cache

    if seeds < 1:
        raise ConfigError(f"--seeds: must be at least 1, got {seeds}")
    run = Path(run_dir)
    cfg, state, ckpt = load_run(run, checkpoint)
    m = manifest if isinstance(manifest, Manifest) else load_manifest(manifest)
    if not m.labels:
        raise DataError(f"{m.path or m.name}: manifest has no labels to probe")
    if len(m.channels) != cfg.model.in_channels:
        raise DataError(
            f"{m.path or m.name}: {len(m.channels)} channel(s) but the run's encoder takes "
            f"model.in_channels={cfg.model.in_channels}"
        )
    train_ids, val_ids = probe_cases(cfg, m, val_fraction)
    runtime_cfg = cfg.runtime if device is None else cfg.replace({"runtime.device": device}).runtime
    rt = setup_runtime(runtime_cfg, init_distributed=False)
    cache = evaluation_cache(m, cfg, state.get("plan"), run, progress=progress)

    def cases(ids: Sequence[str]) -> list[Case]:
        return [(c, *cache.load_case(c)) for c in ids]

    probe_seeds = tuple(range(seeds))
    encoder, stride = frozen_encoder(cfg, state["network_weights"])
    arms = [EncoderArm(MAE, None, encoder.to(rt.device), probe_seeds, stride)]
    for s in probe_seeds:
        encoder_seed = cfg.runtime.seed + RANDOM_SEED_OFFSET + s
        enc, _ = frozen_encoder(cfg, random_encoder_weights(cfg, encoder_seed))
        arms.append(EncoderArm(RANDOM, encoder_seed, enc.to(rt.device), (s,), stride))
    labels = {int(k): str(v) for k, v in m.labels.items()}
    table = probe_encoders(
        arms,
        cases(train_ids),
        cases(val_ids),
        labels,
        settings=settings,
        device=rt.device,
        progress=progress,
    )
    summary, gaps = summarize_probe(table)
    out = Path(out_dir) if out_dir is not None else run / PROBE_DIR
    info = {
        "run": str(run),
        "checkpoint": str(ckpt),
        "step": state.get("step"),
        "manifest": str(m.path or m.name),
        "train_cases": list(train_ids),
        "val_cases": list(val_ids),
        "val_source": "manifest val split"
        if any(c.split == "val" for c in m.cases)
        else ("subjects held out like fine-tuning (data.val_fraction)"),
        "device": str(rt.device),
        "model": cfg.model.name,
        "variant": cfg.mask.variant,
        "num_features": _num_features(arms[0].encoder, cfg, settings.stages, rt.device),
        "random_encoder_seeds": [a.encoder_seed for a in arms[1:]],
        "settings": asdict(settings),
    }
    result = ProbeResult(table, summary, gaps, info, out)
    write_probe(result, out)
    return result


def _num_features(
    encoder: nn.Module, cfg: Config, stages: Sequence[int] | None, device: torch.device
) -> int:
    # One small pass, only to count the kept channels.
    from toolkit.models import get_entry

    # Twice the total stride: instance norm needs more than one voxel at the coarsest stage.
    edge = 2 * get_entry(cfg.model.name).total_stride
    image = np.zeros((cfg.model.in_channels, edge, edge, edge), dtype=np.float32)
    return int(encoder_features(encoder, image, stages=stages, device=device).shape[0])


def write_probe(result: ProbeResult, out_dir: PathLike) -> Path:
    """Write ``probe.json``, ``probe.md`` and ``probe.png`` into ``out_dir``."""
    from toolkit.study import write_json
    from toolkit.visualize import plot_probe, save_figure

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # Strict JSON (a one-seed sd is null, not NaN), written atomically like every study file.
    write_json(out / "probe.json", result.to_dict())
    info = result.info
    text = [
        "# Frozen-encoder probe",
        "",
        f"Run `{info.get('run')}` ({info.get('checkpoint')}), manifest `{info.get('manifest')}`.",
        f"Validation Dice on {len(info.get('val_cases', []))} case(s) "
        f"({info.get('val_source')}); probes trained on {len(info.get('train_cases', []))}.",
        "",
        format_probe(result.summary, result.gaps, markdown=True),
        "",
    ]
    (out / "probe.md").write_text("\n".join(text))
    save_figure(plot_probe(result.table), out / "probe.png")
    return out


def _records(df: pd.DataFrame) -> list[dict[str, Any]]:
    return [
        {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
        for r in df.to_dict(orient="records")
    ]


__all__ = [
    "MAE",
    "PROBE_DIR",
    "PROBE_KINDS",
    "RANDOM",
    "EncoderArm",
    "ProbeResult",
    "ProbeSettings",
    "format_probe",
    "load_run",
    "probe_cases",
    "probe_run",
    "summarize_probe",
    "verdict",
    "write_probe",
]
