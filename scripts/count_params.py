"""Print parameter counts of the registered networks, dense and with the S3D extras.

For every ResEnc preset (or the names given): encoder + stem, decoder (without the encoder it
references), dense total, and the S3D extras (mask tokens and densification convs) with the three
S3D switches on. ResEnc networks are built on PyTorch's ``meta`` device, so nothing is allocated
even for the 409 M-parameter preset.

Usage::

    .venv/bin/python scripts/count_params.py                 # every ResEnc preset
    .venv/bin/python scripts/count_params.py resenc_l resenc_tiny --in-channels 1 --out-channels 1
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from toolkit.models import create_model, list_models, model_info
from toolkit.models.sparse import build_s3d_extras


def _count(params: list[nn.Parameter]) -> int:
    # A ResEnc decoder holds a reference to the encoder: count each tensor once.
    unique = {id(p): p for p in params}
    return sum(p.numel() for p in unique.values())


def count(name: str, in_channels: int, out_channels: int) -> dict[str, int | None]:
    """Counts for one registered network (``None`` where a part does not exist)."""
    if model_info(name)["family"] != "resenc":
        # MONAI nets are small, and some (SwinUNETR) read tensor values while building.
        total = _count(list(create_model(name, in_channels, out_channels).parameters()))
        return {"encoder": None, "decoder": None, "total": total, "s3d_extras": None}
    with torch.device("meta"):
        net = create_model(name, in_channels, out_channels)
        total = _count(list(net.parameters()))
        encoder_ids = {id(p) for p in net.encoder.parameters()}  # type: ignore[union-attr]
        encoder = _count(list(net.encoder.parameters()))  # type: ignore[union-attr]
        decoder = _count([p for p in net.decoder.parameters() if id(p) not in encoder_ids])  # type: ignore[union-attr]
        extras = build_s3d_extras(net, mask_token=True, densify=True)
        s3d = _count(list(extras.parameters()))
    return {"encoder": encoder, "decoder": decoder, "total": total, "s3d_extras": s3d}


def _m(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:10.3f} M"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", help="registered names (default: every ResEnc preset)")
    parser.add_argument("--in-channels", type=int, default=1)
    parser.add_argument("--out-channels", type=int, default=1)
    args = parser.parse_args()
    names = args.names or list_models("resenc")
    header = f"{'model':<16}{'encoder+stem':>14}{'decoder':>14}{'dense total':>14}"
    print(header + f"{'S3D extras':>14}{'S3D total':>14}")
    for name in names:
        c = count(name, args.in_channels, args.out_channels)
        s3d_total = None if c["s3d_extras"] is None else c["total"] + c["s3d_extras"]  # type: ignore[operator]
        row = [c["encoder"], c["decoder"], c["total"], c["s3d_extras"], s3d_total]
        print(f"{name:<16}" + "".join(f"{_m(v):>14}" for v in row))


if __name__ == "__main__":
    main()
