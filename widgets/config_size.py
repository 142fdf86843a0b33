"""What a pretraining config costs before it runs: parameters and FLOPs of its MAE model.

The model is built on PyTorch's ``meta`` device (no memory, no time) and counted with
:func:`toolkit.models.mae.describe_mae`; FLOPs come from :func:`toolkit.bench.count_pretrain_flops`.
Results are cached on what they depend on, so moving a ratio or lr slider in the config form
costs nothing.

Example:
    >>> from toolkit.config import load_config
    >>> size = model_size(load_config("tiny"))
    >>> size["total"] == size["network"] + size["extras"]
    True
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from toolkit.config import Config

__all__ = ["fmt_count", "model_size"]


@functools.lru_cache(maxsize=32)
def _mae_size(
    name: str,
    in_channels: int,
    variant: str,
    switches: tuple[bool, ...],
    patch: tuple[int, int, int],
    block: int,
) -> dict[str, float]:
    import torch

    from toolkit.bench import count_pretrain_flops
    from toolkit.config import load_config
    from toolkit.models import build_mae
    from toolkit.models.mae import describe_mae

    cfg = load_config(
        "paper",
        {
            "model.name": name,
            "model.in_channels": in_channels,
            "mask.variant": variant,
            "mask.sparse_conv": switches[0],
            "mask.mask_token": switches[1],
            "mask.densify": switches[2],
            "mask.input_mask_token": switches[3],
            "data.patch_size": list(patch),
            "mask.block_size": block,
        },
    )
    with torch.device("meta"):
        info = describe_mae(build_mae(cfg))
    return {
        "network": int(info["network"]),
        "extras": int(info["extras"]),
        "total": int(info["network"]) + int(info["extras"]),
        "gflop": count_pretrain_flops(cfg) / 1e9,
    }


def model_size(cfg: Config) -> dict[str, float]:
    """Parameters (``network``, ``extras``, ``total``) and forward ``gflop`` per sample of ``cfg``.

    Raises:
        ConfigError: the model cannot be built for this patch / block size.
    """
    m = cfg.mask
    d, h, w = (int(p) for p in cfg.data.patch_size)
    switches = (m.sparse_conv, m.mask_token, m.densify, m.input_mask_token)
    size = _mae_size(
        cfg.model.name, cfg.model.in_channels, m.variant, switches, (d, h, w), m.block_size
    )
    return dict(size)


def fmt_count(n: float) -> str:
    """A count with an SI prefix (``102.35 M``).

    Example:
        >>> fmt_count(1.5e9)
        '1.50 G'
    """
    for unit, size in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f}"
