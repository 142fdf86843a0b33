"""Frozen-encoder feature probes: did pretraining learn features a classifier can read?

Fine-tuning Dice alone cannot tell "no gain" from "nothing learnt". A probe freezes the encoder,
reads its features at every voxel and trains only a small classifier on them:

1. **Encoder.** The pretraining run's plain network (``network_weights``: stem + stages, the way
   fine-tuning receives them — S3D runs densely, their mask tokens and densification convs unused)
   is compared with *random* encoders of the same architecture at the same initialisation
   (:func:`random_encoder_weights`, one per seed).
2. **Features.** Every encoder stage's output (or ``ProbeSettings.stages``), upsampled trilinearly
   to the voxel grid and concatenated: (F, D, H, W) per case, F = sum of the stages' channels.
   Volumes are the labelled manifest preprocessed with the run's plan (the cache evaluation uses),
   zero-padded to a multiple of the encoder's total stride; whole volumes, no sliding window.
3. **Classifiers.** Per voxel, a linear layer (multinomial logistic regression) and a one-hidden-
   layer MLP, trained with Adam on a class-balanced voxel sample of the manifest's *train* cases,
   features standardised with that sample's statistics.
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

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from toolkit.config import Config, from_dict
from toolkit.errors import ConfigError, DataError

PathLike = str | os.PathLike[str]

PROBE_KINDS = ("linear", "mlp")
#: Default output folder inside the pretraining run.
PROBE_DIR = "probe"
#: Encoder names in the result tables.
MAE, RANDOM = "mae", "random"
#: Random encoder ``s`` is drawn with runtime seed ``cfg.runtime.seed + RANDOM_SEED_OFFSET + s``,
#: never the pretraining run's own seed (that would be the MAE encoder's starting point).
RANDOM_SEED_OFFSET = 1
#: Validation voxels classified per forward pass of a probe.
CHUNK = 65536


@dataclass(frozen=True)
class ProbeSettings:
    """How the classifiers are trained (defaults suit the tiny CPU demo and ResEnc-L alike).

    Attributes:
        voxels_per_class: training voxels per class, spread evenly over the train cases.
        steps: full-batch Adam steps per classifier.
        lr: Adam learning rate.
        weight_decay: Adam weight decay (an L2 penalty that keeps the linear probe well posed).
        hidden: hidden units of the MLP probe.
        stages: encoder stages to read (0 = full resolution); None = every stage.
    """

    voxels_per_class: int = 2000
    steps: int = 200
    lr: float = 1e-2
    weight_decay: float = 1e-4
    hidden: int = 64
    stages: tuple[int, ...] | None = None


@dataclass(frozen=True)
class EncoderArm:
    """One frozen encoder to probe.

    Attributes:
        name: ``"mae"`` or ``"random"`` (a column of the result tables).
        encoder_seed: seed that drew the weights (None for the pretrained encoder).
        encoder: maps (1, C, D, H, W) to a list of stage outputs (1, C_i, D_i, H_i, W_i).
        probe_seeds: classifier seeds to train on this encoder's features.
        pad_multiple: volumes are zero-padded to a multiple of this (the total stride).
    """

    name: str
    encoder_seed: int | None
    encoder: nn.Module
    probe_seeds: tuple[int, ...]
    pad_multiple: int = 1


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
# Encoders


def _plain_network(cfg: Config) -> nn.Module:
    """The pretraining network as fine-tuning sees it (C in, C out, no S3D wrapping)."""
    from toolkit.models import create_model, get_entry

    entry = get_entry(cfg.model.name)
    if entry.family != "resenc":
        raise ConfigError(
            f"model.name: probes read the stages of a ResEnc encoder; {entry.name} is "
            f"{entry.family}"
        )
    c = cfg.model.in_channels
    return create_model(entry.name, c, c, deep_supervision=False)


def random_encoder_weights(cfg: Config, seed: int) -> dict[str, torch.Tensor]:
    """Weights of the pretraining network at its initialisation, drawn with torch seed ``seed``.

    Builds the model exactly as :meth:`toolkit.pretrain.PretrainTask.build_model` does after the
    loop seeds torch (:func:`toolkit.models.build_mae`), so a random encoder differs from the
    pretrained one only by training. This is the one place to switch to a public "build the
    pretraining network at its init" function once ``model.init`` exists.

    Args:
        cfg: the pretraining run's config.
        seed: torch seed of the draw.

    Returns:
        The plain network's state dict (nnU-Net keys).
    """
    from toolkit.engine.checkpoint import clean_state_dict
    from toolkit.models import build_mae

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mae = build_mae(cfg)
    return clean_state_dict(mae.network.state_dict())


def frozen_encoder(cfg: Config, weights: Mapping[str, torch.Tensor]) -> tuple[nn.Module, int]:
    """The plain network's encoder with ``weights`` loaded, in eval mode, and its total stride.

    Raises:
        DataError: the weights do not fit the network of ``cfg``.
    """
    from toolkit.models.resenc import encoder_strides

    network = _plain_network(cfg)
    try:
        network.load_state_dict(dict(weights), strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise DataError(
            f"network_weights do not fit model.name={cfg.model.name}: {first}"
        ) from None
    encoder: nn.Module = network.encoder  # type: ignore[assignment]
    encoder.eval().requires_grad_(False)
    total = 1
    for s in encoder_strides(network):
        total *= max(s)
    return encoder, total


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
        cfg = from_dict(state["config"])
    except ConfigError as exc:
        raise DataError(f"{ckpt}: the stored config is not valid here ({exc})") from None
    return cfg, state, ckpt


# --------------------------------------------------------------------------------------------------
# Features and classifiers


@torch.no_grad()
def encoder_features(
    encoder: nn.Module,
    image: np.ndarray | torch.Tensor,
    *,
    pad_multiple: int = 1,
    stages: Sequence[int] | None = None,
) -> torch.Tensor:
    """Multi-scale features of one volume, upsampled to its grid and concatenated.

    Args:
        encoder: maps (1, C, D, H, W) to a list of stage outputs (1, C_i, D_i, H_i, W_i).
        image: (C, D, H, W) volume.
        pad_multiple: zero-pad D, H, W at the end to a multiple of this (the total stride).
        stages: stage indices to keep (None = all).

    Returns:
        (F, D, H, W) float32 features, F = sum of the kept stages' channels.
    """
    # A copy: cache volumes are read-only memory maps.
    x = torch.tensor(np.asarray(image), dtype=torch.float32)[None]
    size = tuple(int(s) for s in x.shape[2:])
    padded = tuple(math.ceil(s / pad_multiple) * pad_multiple for s in size)
    pads: list[int] = []
    for s, p in zip(reversed(size), reversed(padded), strict=True):
        pads += [0, p - s]
    outs = encoder(F.pad(x, pads))
    keep = range(len(outs)) if stages is None else stages
    feats = []
    for i in keep:
        if not 0 <= i < len(outs):
            raise ConfigError(f"stages: the encoder has stages 0..{len(outs) - 1}, got {i}")
        f = outs[i].float()
        if tuple(f.shape[2:]) != padded:
            f = F.interpolate(f, size=padded, mode="trilinear", align_corners=False)
        feats.append(f[0, :, : size[0], : size[1], : size[2]])
    return torch.cat(feats)


def balanced_voxels(
    label: np.ndarray, num_classes: int, per_class: int, rng: np.random.Generator
) -> np.ndarray:
    """Flat indices of up to ``per_class`` voxels of each class of ``label`` (D, H, W)."""
    flat = np.asarray(label).reshape(-1)
    picks = []
    for c in range(num_classes):
        where = np.flatnonzero(flat == c)
        if len(where) > per_class:
            where = np.sort(rng.choice(where, per_class, replace=False))
        picks.append(where)
    return np.concatenate(picks)


def make_probe(kind: str, num_features: int, num_classes: int, hidden: int) -> nn.Module:
    """A per-voxel classifier on (N, F) features: ``linear`` or ``mlp`` (one hidden layer)."""
    if kind == "linear":
        return nn.Linear(num_features, num_classes)
    if kind == "mlp":
        return nn.Sequential(
            nn.Linear(num_features, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)
        )
    raise ConfigError(f"probe kind: must be one of {', '.join(PROBE_KINDS)}, got {kind!r}")


def train_probe(
    kind: str,
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    *,
    seed: int,
    settings: ProbeSettings,
) -> nn.Module:
    """Fit a classifier on standardised features ``x`` (N, F) and labels ``y`` (N,), full batch."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = make_probe(kind, x.shape[1], num_classes, settings.hidden)
    opt = torch.optim.Adam(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    for _ in range(settings.steps):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval().requires_grad_(False)


# --------------------------------------------------------------------------------------------------
# The probe


Case = tuple[str, Any, Any]  # (case id, image (C, D, H, W), label (D, H, W))


def probe_encoders(
    arms: Sequence[EncoderArm],
    train_cases: Sequence[Case],
    val_cases: Sequence[Case],
    labels: Mapping[int, str],
    *,
    settings: ProbeSettings = ProbeSettings(),
    progress: bool = True,
) -> pd.DataFrame:
    """Probe each encoder: train every kind x probe seed on ``train_cases``, score on ``val_cases``.

    Args:
        arms: the encoders.
        train_cases: ``(case id, image (C, D, H, W), label (D, H, W))``.
        val_cases: the same, scored.
        labels: label value -> name, background (0) included; Dice is reported for the others.
        settings: classifier settings.
        progress: tqdm progress bar.

    Returns:
        The tidy table of :attr:`ProbeResult.table`.
    """
    from tqdm.auto import tqdm

    from toolkit.finetune import dice_per_label

    num_classes = max(labels) + 1
    scored = [v for v in sorted(labels) if v != 0]
    per_case = max(1, math.ceil(settings.voxels_per_class / max(1, len(train_cases))))
    rows: list[dict[str, Any]] = []
    total = sum(len(a.probe_seeds) for a in arms)
    bar = tqdm(total=total, desc="probe", unit="fit", disable=not progress)
    for arm in arms:

        def features(image: Any, arm: EncoderArm = arm) -> torch.Tensor:
            return encoder_features(
                arm.encoder, image, pad_multiple=arm.pad_multiple, stages=settings.stages
            )

        xs: dict[int, list[torch.Tensor]] = {s: [] for s in arm.probe_seeds}
        ys: dict[int, list[torch.Tensor]] = {s: [] for s in arm.probe_seeds}
        for index, (_, image, label) in enumerate(train_cases):
            feats = features(image).flatten(1)
            flat = torch.as_tensor(np.asarray(label, dtype=np.int64).reshape(-1))
            for s in arm.probe_seeds:
                rng = np.random.default_rng([s, index])
                idx = torch.as_tensor(
                    balanced_voxels(np.asarray(label), num_classes, per_case, rng)
                )
                xs[s].append(feats[:, idx].T)
                ys[s].append(flat[idx])
        fitted = {}
        for s in arm.probe_seeds:
            x, y = torch.cat(xs[s]), torch.cat(ys[s])
            mean, sd = x.mean(0), x.std(0).clamp_min(1e-6)
            z = (x - mean) / sd
            models = {
                k: train_probe(k, z, y, num_classes, seed=s, settings=settings) for k in PROBE_KINDS
            }
            fitted[s] = (mean, sd, models)
            bar.update(1)
        dice: dict[tuple[str, int], list[dict[int, float]]] = {}
        for _, image, label in val_cases:
            feats = features(image).flatten(1).T
            ref = np.asarray(label, dtype=np.int64)
            for s, (mean, sd, models) in fitted.items():
                for kind, model in models.items():
                    pred = torch.cat(
                        [
                            model((feats[i : i + CHUNK] - mean) / sd).argmax(1)
                            for i in range(0, feats.shape[0], CHUNK)
                        ]
                    )
                    per_label = dice_per_label(pred.numpy().reshape(ref.shape), ref, scored)
                    dice.setdefault((kind, s), []).append(per_label)
        for (kind, s), cases in dice.items():
            values = {v: float(np.mean([c[v] for c in cases])) for v in scored}
            base = {"probe": kind, "encoder": arm.name, "seed": s}
            for v in scored:
                rows.append({**base, "label": str(v), "label_name": labels[v], "dice": values[v]})
            rows.append(
                {
                    **base,
                    "label": "mean",
                    "label_name": "mean",
                    "dice": float(np.mean(list(values.values()))),
                }
            )
    bar.close()
    return pd.DataFrame(rows, columns=["probe", "encoder", "seed", "label", "label_name", "dice"])


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
    """A probe x encoder table of ``mean ± sd`` Dice per label, then one gap line per probe."""
    cols = list(dict.fromkeys(summary["label_name"]))
    cell = summary.assign(
        text=[
            f"{m:.3f} ± {s:.3f}"
            for m, s in zip(summary["mean"], summary["sd"].fillna(0), strict=True)
        ]
    )
    wide = cell.pivot_table(
        index=["probe", "encoder"], columns="label_name", values="text", aggfunc="first", sort=False
    )[cols]
    header = ["probe", "encoder", *cols]
    body = [[p, e, *row] for (p, e), row in zip(wide.index, wide.to_numpy().tolist(), strict=True)]
    gap_lines = [
        f"{r.probe}: MAE - random = {r.gap:+.3f} ± {r.sd:.3f} (n={r.n}): {r.verdict}"
        for r in gaps.itertuples()
    ]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(map(str, r)) + " |" for r in body]
        return "\n".join([*lines, "", *[f"- {g}" for g in gap_lines]])
    widths = [max(len(str(r[i])) for r in [header, *body]) for i in range(len(header))]
    lines = [
        "  ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=True)) for r in [header, *body]
    ]
    return "\n".join([*lines, "", *gap_lines])


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
        progress: progress bars.

    Returns:
        The :class:`ProbeResult` (also written to ``out_dir``).

    Raises:
        DataError: not a run folder, a manifest without labels or validation cases, unreadable data.
        ConfigError: bad ``seeds`` / ``checkpoint``.
    """
    from toolkit.data.manifest import Manifest, load_manifest
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
    cache = evaluation_cache(m, cfg, state.get("plan"), run, progress=progress)

    def cases(ids: Sequence[str]) -> list[Case]:
        return [(c, *cache.load_case(c)) for c in ids]

    probe_seeds = tuple(range(seeds))
    encoder, stride = frozen_encoder(cfg, state["network_weights"])
    arms = [EncoderArm(MAE, None, encoder, probe_seeds, stride)]
    for s in probe_seeds:
        encoder_seed = cfg.runtime.seed + RANDOM_SEED_OFFSET + s
        enc, _ = frozen_encoder(cfg, random_encoder_weights(cfg, encoder_seed))
        arms.append(EncoderArm(RANDOM, encoder_seed, enc, (s,), stride))
    labels = {int(k): str(v) for k, v in m.labels.items()}
    table = probe_encoders(
        arms, cases(train_ids), cases(val_ids), labels, settings=settings, progress=progress
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
        "model": cfg.model.name,
        "variant": cfg.mask.variant,
        "num_features": _num_features(encoder, cfg, settings.stages),
        "random_encoder_seeds": [a.encoder_seed for a in arms[1:]],
        "settings": asdict(settings),
    }
    result = ProbeResult(table, summary, gaps, info, out)
    write_probe(result, out)
    return result


def _num_features(encoder: nn.Module, cfg: Config, stages: Sequence[int] | None) -> int:
    # One small pass, only to count the kept channels.
    from toolkit.models import get_entry

    # Twice the total stride: instance norm needs more than one voxel at the coarsest stage.
    edge = 2 * get_entry(cfg.model.name).total_stride
    image = np.zeros((cfg.model.in_channels, edge, edge, edge), dtype=np.float32)
    return int(encoder_features(encoder, image, stages=stages).shape[0])


def write_probe(result: ProbeResult, out_dir: PathLike) -> Path:
    """Write ``probe.json``, ``probe.md`` and ``probe.png`` into ``out_dir``."""
    from toolkit.visualize import plot_probe, save_figure

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "probe.json").write_text(json.dumps(result.to_dict(), indent=2, allow_nan=True))
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
    "PROBE_KINDS",
    "EncoderArm",
    "ProbeResult",
    "ProbeSettings",
    "balanced_voxels",
    "encoder_features",
    "format_probe",
    "frozen_encoder",
    "load_run",
    "probe_cases",
    "probe_encoders",
    "probe_run",
    "random_encoder_weights",
    "summarize_probe",
    "train_probe",
    "verdict",
    "write_probe",
]
