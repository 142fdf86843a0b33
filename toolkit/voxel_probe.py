"""Per-voxel classifiers on frozen encoder features: the mechanics of :mod:`toolkit.probe`.

An encoder (any module mapping (1, C, D, H, W) to a list of stage outputs) is frozen; every stage's
output is upsampled trilinearly to the voxel grid and concatenated (:func:`encoder_features`); a
linear layer (multinomial logistic regression) and a one-hidden-layer MLP are trained with Adam on
a class-balanced voxel sample of the training cases, features standardised with that sample's
statistics (:func:`train_probe`); hard Dice per label scores them on the validation cases
(:func:`probe_encoders`). Everything is seeded: the same seeds give the same numbers.

Example:
    >>> import numpy as np
    >>> from toolkit.config import load_config
    >>> cfg = load_config("tiny")
    >>> encoder, stride = frozen_encoder(cfg, random_encoder_weights(cfg, seed=1))
    >>> image = np.zeros((1, 12, 12, 12), dtype=np.float32)
    >>> encoder_features(encoder, image, pad_multiple=stride).shape
    torch.Size([60, 12, 12, 12])
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from toolkit.config import Config
from toolkit.errors import ConfigError, DataError

PROBE_KINDS = ("linear", "mlp")
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

    :func:`toolkit.models.build_initial_mae` builds the model as a pretraining run with that seed
    starts it (same architecture and ``model.init`` scheme), so a random encoder differs from the
    pretrained one only by training.

    Args:
        cfg: the pretraining run's config.
        seed: torch seed of the draw.

    Returns:
        The plain network's state dict (nnU-Net keys).
    """
    from toolkit.engine.checkpoint import clean_state_dict
    from toolkit.models import build_initial_mae

    return clean_state_dict(build_initial_mae(cfg, seed).network.state_dict())


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


# --------------------------------------------------------------------------------------------------
# Features and classifiers


@torch.no_grad()
def encoder_features(
    encoder: nn.Module,
    image: np.ndarray | torch.Tensor,
    *,
    pad_multiple: int = 1,
    stages: Sequence[int] | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Multi-scale features of one volume, upsampled to its grid and concatenated.

    Args:
        encoder: maps (1, C, D, H, W) to a list of stage outputs (1, C_i, D_i, H_i, W_i).
        image: (C, D, H, W) volume.
        pad_multiple: zero-pad D, H, W at the end to a multiple of this (the total stride).
        stages: stage indices to keep (None = all).
        device: where ``encoder`` lives; the features come back on the CPU.

    Returns:
        (F, D, H, W) float32 features on the CPU, F = sum of the kept stages' channels.
    """
    # A copy: cache volumes are read-only memory maps.
    x = torch.tensor(np.asarray(image), dtype=torch.float32, device=device)[None]
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
        feats.append(f[0, :, : size[0], : size[1], : size[2]].cpu())
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
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> pd.DataFrame:
    """Probe each encoder: train every kind x probe seed on ``train_cases``, score on ``val_cases``.

    Args:
        arms: the encoders.
        train_cases: ``(case id, image (C, D, H, W), label (D, H, W))``.
        val_cases: the same, scored.
        labels: label value -> name, background (0) included; Dice is reported for the others.
        settings: classifier settings.
        device: where the encoders live (features are computed there; classifiers train on the
            CPU, on the voxel sample).
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
                arm.encoder,
                image,
                pad_multiple=arm.pad_multiple,
                stages=settings.stages,
                device=device,
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


__all__ = [
    "CHUNK",
    "PROBE_KINDS",
    "Case",
    "EncoderArm",
    "ProbeSettings",
    "balanced_voxels",
    "encoder_features",
    "frozen_encoder",
    "make_probe",
    "probe_encoders",
    "random_encoder_weights",
    "train_probe",
]
