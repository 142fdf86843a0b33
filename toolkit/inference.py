"""One fine-tuned network on one preprocessed volume: build it from a checkpoint, slide windows.

The building blocks under :mod:`toolkit.predict` (the one prediction path every front end uses)
and fine-tuning's validation: :func:`predict_probabilities` runs MONAI's Gaussian-weighted
``sliding_window_inference`` with optional mirror test-time augmentation (softmax averaged over the
8 flips of the three axes); :func:`load_segmentation_checkpoint` builds the network a fine-tuning
checkpoint holds.

Example:
    >>> import torch
    >>> net = torch.nn.Conv3d(1, 3, 1).eval()
    >>> predict_probabilities(net, torch.zeros(1, 1, 8, 8, 8), roi_size=(8, 8, 8)).shape
    torch.Size([1, 3, 8, 8, 8])
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from toolkit.errors import DataError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from toolkit.config import Config

PathLike = str | os.PathLike[str]


# --------------------------------------------------------------------------------------------------
# Sliding windows


def _first_output(out: Any) -> torch.Tensor:
    # Deep-supervision networks return a list (full resolution first).
    return out[0] if isinstance(out, list | tuple) else out


def predict_probabilities(
    network: nn.Module,
    image: torch.Tensor,
    *,
    roi_size: Sequence[int],
    overlap: float = 0.5,
    sw_batch_size: int = 2,
    mirror_tta: bool = False,
    autocast: Callable[[], Any] | None = None,
) -> torch.Tensor:
    """Softmax probabilities of a whole volume by Gaussian-weighted sliding windows.

    Args:
        network: segmentation network in eval mode, on the device of ``image``.
        image: (1, C, D, H, W) preprocessed volume; any size (padded internally when smaller than
            ``roi_size``).
        roi_size: (3,) window size in voxels (the training patch size).
        overlap: fraction of overlap between neighbouring windows.
        sw_batch_size: windows per forward pass.
        mirror_tta: average over all 8 combinations of flipping the three spatial axes.
        autocast: context-manager factory for mixed precision (``toolkit.engine.runtime``).

    Returns:
        (1, K, D, H, W) float32 class probabilities.
    """
    import contextlib

    import torch
    from monai.inferers import sliding_window_inference

    def predictor(x: torch.Tensor) -> torch.Tensor:
        return _first_output(network(x)).float()

    flips: list[tuple[int, ...]] = [()]
    if mirror_tta:
        flips = [c for n in range(4) for c in itertools.combinations((2, 3, 4), n)]
    total: torch.Tensor | None = None
    ctx = autocast if autocast is not None else contextlib.nullcontext
    with torch.inference_mode(), ctx():
        for dims in flips:
            x = torch.flip(image, dims) if dims else image
            logits = sliding_window_inference(
                x,
                roi_size=tuple(int(r) for r in roi_size),
                sw_batch_size=int(sw_batch_size),
                predictor=predictor,
                overlap=float(overlap),
                mode="gaussian",
            )
            assert isinstance(logits, torch.Tensor)
            prob = torch.softmax(logits.float(), dim=1)
            prob = torch.flip(prob, dims) if dims else prob
            total = prob if total is None else total + prob
    assert total is not None
    return total / len(flips)


def segment_volume(
    network: nn.Module,
    image: np.ndarray,
    cfg: Config,
    *,
    device: torch.device | str = "cpu",
    autocast: Callable[[], Any] | None = None,
) -> np.ndarray:
    """Argmax label map of one preprocessed volume with one network (fine-tuning validation).

    Args:
        network: segmentation network in eval mode on ``device``.
        image: (C, D, H, W) float32 volume on the cache grid.
        cfg: config (``data.patch_size`` and the ``evaluate`` section).
        device: where to run.
        autocast: mixed-precision context factory.

    Returns:
        (D, H, W) uint8 label map on the cache grid.
    """
    import torch

    # A copy: cache volumes are read-only memory maps.
    x = torch.tensor(np.asarray(image, dtype=np.float32), device=device)[None]
    prob = predict_probabilities(
        network,
        x,
        roi_size=cfg.data.patch_size,
        overlap=cfg.evaluate.overlap,
        sw_batch_size=cfg.evaluate.sw_batch_size,
        mirror_tta=cfg.evaluate.mirror_tta,
        autocast=autocast,
    )
    return prob[0].argmax(0).to(torch.uint8).cpu().numpy()


# --------------------------------------------------------------------------------------------------
# Loading a fine-tuning checkpoint


def load_segmentation_checkpoint(
    ckpt: PathLike, *, device: torch.device | str | None = None
) -> tuple[nn.Module, Config, dict[str, Any]]:
    """Build the segmentation network stored in a fine-tuning checkpoint.

    Args:
        ckpt: ``RUN_DIR/checkpoints/{best,final,latest}.pt`` of a fine-tuning run.
        device: where the network goes (default: the run's ``runtime.device``, resolved by
            :func:`toolkit.engine.runtime.setup_runtime`).

    Returns:
        ``(network in eval mode, config, checkpoint dict)``.

    Raises:
        DataError: not a fine-tuning checkpoint.
    """
    from toolkit.engine.checkpoint import load_checkpoint
    from toolkit.engine.runtime import setup_runtime

    state = load_checkpoint(ckpt)
    cfg = checkpoint_config(state, ckpt)
    if device is None:
        device = setup_runtime(cfg.runtime, init_distributed=False).device
    return build_network(state, cfg, ckpt, device), cfg, state


def checkpoint_config(state: Mapping[str, Any], ckpt: PathLike) -> Config:
    """The config stored in a fine-tuning checkpoint (``DataError`` when it has none)."""
    from toolkit.config import from_dict
    from toolkit.engine.checkpoint import require_keys

    require_keys(state, ("config", "model"), ckpt)
    return from_dict(state["config"], source=str(ckpt))


def build_network(
    state: Mapping[str, Any], cfg: Config, ckpt: PathLike, device: torch.device | str
) -> nn.Module:
    """The segmentation network of a loaded fine-tuning checkpoint, in eval mode on ``device``."""
    from toolkit.engine.checkpoint import clean_state_dict
    from toolkit.models import build_segmentation_model

    classes = num_classes(state, ckpt)
    # Inference needs only the full-resolution head; its weights are the same either way.
    network = build_segmentation_model(cfg.replace({"model.deep_supervision": False}), classes)
    network.load_state_dict(clean_state_dict(state["model"]))
    return network.to(device).eval()


def num_classes(state: Mapping[str, Any], ckpt: PathLike) -> int:
    """Classes of a fine-tuning checkpoint (``task_state.num_classes``; DataError without)."""
    task_state = state.get("task_state") or {}
    num_classes = task_state.get("num_classes") if isinstance(task_state, Mapping) else None
    if not num_classes:
        raise DataError(f"{ckpt}: not a fine-tuning checkpoint (no task_state.num_classes)")
    return int(num_classes)


__all__ = [
    "build_network",
    "checkpoint_config",
    "load_segmentation_checkpoint",
    "num_classes",
    "predict_probabilities",
    "segment_volume",
]
