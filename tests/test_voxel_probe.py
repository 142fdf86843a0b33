"""Per-voxel probes on frozen features: a hand-built encoder beats random ones; feature shapes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter
from torch import nn

from toolkit.config import load_config
from toolkit.probe import summarize_probe
from toolkit.voxel_probe import (
    EncoderArm,
    ProbeSettings,
    encoder_features,
    frozen_encoder,
    probe_encoders,
    random_encoder_weights,
)

TOY_LABELS = {0: "background", 1: "band", 2: "high"}
FAST = ProbeSettings(voxels_per_class=600, steps=60)


# --------------------------------------------------------------------------------------------------
# A toy problem a hand-built encoder solves and a random one cannot


def _toy_case(seed: int) -> tuple[str, np.ndarray, np.ndarray]:
    """Smooth noise; label 1 where the voxel's value lies in a band, 2 where it is high.

    The label is a non-monotonic function of the voxel's own value, which a few random 3^3
    filters of its neighbourhood do not recover.
    """
    rng = np.random.default_rng(seed)
    x = gaussian_filter(rng.standard_normal((20, 20, 20)), 1.0)
    x = (x - x.mean()) / x.std()
    label = np.zeros(x.shape, np.uint8)
    label[(x > 0.2) & (x < 0.9)] = 1
    label[x > 1.3] = 2
    return f"c{seed}", x[None].astype(np.float32), label


class BandEncoder(nn.Module):
    """A 'pretrained' encoder whose first stage computes exactly the label-relevant features."""

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        s0 = torch.cat([((x > 0.2) & (x < 0.9)).float(), (x > 1.3).float()], 1)
        return [s0, F.avg_pool3d(s0, 2)]


def _toy_arms(seeds: tuple[int, ...]) -> list[EncoderArm]:
    cfg = load_config("tiny", {"data.patch_size": [16, 16, 16]})
    arms = [EncoderArm("mae", None, BandEncoder(), seeds, 2)]
    for s in seeds:
        encoder, stride = frozen_encoder(cfg, random_encoder_weights(cfg, 100 + s))
        arms.append(EncoderArm("random", 100 + s, encoder, (s,), stride))
    return arms


def test_known_good_encoder_beats_random_encoders_reproducibly() -> None:
    train = [_toy_case(i) for i in range(3)]
    val = [_toy_case(i) for i in range(3, 5)]
    arms = _toy_arms((0, 1))
    table = probe_encoders(arms, train, val, TOY_LABELS, settings=FAST, progress=False)
    assert len(table) == 2 * 4 * 3  # probes x (mae 2 seeds + 2 random) x (2 labels + mean)
    means = table[table["label"] == "mean"].groupby(["probe", "encoder"])["dice"].mean()
    for kind in ("linear", "mlp"):
        assert means[kind, "mae"] > 0.85, means
        assert means[kind, "mae"] - means[kind, "random"] > 0.3, means
    summary, gaps = summarize_probe(table)
    assert set(gaps["verdict"]) == {"MAE ahead of random by more than the spread"}
    # Fixed seeds -> the same numbers (one random encoder again, alone).
    again = probe_encoders(arms[2:], train, val, TOY_LABELS, settings=FAST, progress=False)
    same = table[(table["encoder"] == "random") & (table["seed"] == 1)].reset_index(drop=True)
    pd.testing.assert_frame_equal(same, again)


def test_features_are_every_stage_upsampled_to_the_grid() -> None:
    cfg = load_config("tiny", {"data.patch_size": [16, 16, 16]})
    encoder, stride = frozen_encoder(cfg, random_encoder_weights(cfg, 3))
    assert stride == 8
    image = np.random.default_rng(0).standard_normal((1, 13, 9, 17)).astype(np.float32)
    feats = encoder_features(encoder, image, pad_multiple=stride)
    assert feats.shape == (4 + 8 + 16 + 32, 13, 9, 17)
    assert encoder_features(encoder, image, pad_multiple=stride, stages=[1, 3]).shape[0] == 40
    # Random encoders differ by seed and repeat with it.
    a, b = random_encoder_weights(cfg, 3), random_encoder_weights(cfg, 4)
    key = "encoder.stem.convs.0.conv.weight"
    assert torch.equal(a[key], random_encoder_weights(cfg, 3)[key])
    assert not torch.equal(a[key], b[key])
    # The weights given are the weights used.
    loaded, _ = frozen_encoder(cfg, b)
    assert torch.equal(loaded.state_dict()["stem.convs.0.conv.weight"], b[key])
