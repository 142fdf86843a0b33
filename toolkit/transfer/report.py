"""The transfer report: what loading pretrained weights into a segmentation network does.

Example:
    >>> report = inspect_transfer("ckpt.pth", load_config("tiny"))  # doctest: +SKIP
    >>> print(report.format())  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class TransferReport:
    """What loading pretrained weights into a segmentation network does (or would do).

    Attributes:
        source: checkpoint path.
        source_format: ``mae3d`` or ``nnssl``.
        source_architecture: description of the pretrained network.
        target_architecture: description of the fine-tuning network.
        architecture_match: the pretrained and target networks have the same topology (channels in
            and out aside); None when the source does not say (judge by the key lists then).
        scope: state-dict prefixes that are transferred.
        loaded: keys copied (each tensor once).
        missing: keys of the target in scope that the source lacks.
        unexpected: keys of the source in scope that the target lacks.
        shape_mismatched: ``(key, source shape, target shape)`` of keys that cannot be copied.
        not_transferred: number of source tensors outside the scope (decoder, heads), left alone.
        channel_adaptation: how the input projection was adapted, or None.
        source_in_channels: input channels of the pretrained stem.
        target_in_channels: input channels of the target network.
        pretrain_patch_size: (3,) voxels, if known.
        finetune_patch_size: (3,) voxels.
        pretrain_spacing_mm: (3,) mm, if known.
        finetune_spacing_mm: (3,) mm.
        notes: differences worth reading (patch size, spacing, the network chosen by the plan).
        loaded_parameters: number of values (elements) in the loaded tensors.
        network_parameters: number of values in the target network (each tensor once).
    """

    source: str
    source_format: str
    source_architecture: str
    target_architecture: str
    architecture_match: bool | None
    scope: tuple[str, ...]
    loaded: tuple[str, ...]
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    shape_mismatched: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...]
    not_transferred: int
    channel_adaptation: str | None
    source_in_channels: int
    target_in_channels: int
    pretrain_patch_size: tuple[int, int, int] | None
    finetune_patch_size: tuple[int, int, int]
    pretrain_spacing_mm: tuple[float, float, float] | None
    finetune_spacing_mm: tuple[float, float, float]
    notes: tuple[str, ...] = field(default_factory=tuple)
    loaded_parameters: int = 0
    network_parameters: int = 0

    @property
    def ok(self) -> bool:
        """True when every key in scope can be loaded: nothing missing, unexpected or mismatched."""
        return (
            bool(self.loaded)
            and not self.missing
            and not self.unexpected
            and not self.shape_mismatched
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (tuples become lists)."""
        data = asdict(self)
        data["ok"] = self.ok
        data["loaded_fraction"] = self._share()
        data["shape_mismatched"] = [
            {"key": k, "source": list(s), "target": list(t)} for k, s, t in self.shape_mismatched
        ]
        return data

    def _share(self) -> float:
        return self.loaded_parameters / self.network_parameters if self.network_parameters else 0.0

    def format(self, max_keys: int = 20) -> str:
        """Human-readable report; long key lists are cut after ``max_keys`` entries."""

        def keys(title: str, items: Sequence[str]) -> list[str]:
            out = [f"  {title}: {len(items)}"]
            out += [f"    {k}" for k in items[:max_keys]]
            if len(items) > max_keys:
                out.append(f"    ... and {len(items) - max_keys} more")
            return out

        match = {True: "yes", False: "NO", None: "unknown (the source does not describe it)"}
        lines = [
            f"Transfer report: {self.source} ({self.source_format})",
            f"  status: {'OK' if self.ok else 'INCOMPATIBLE'}",
            f"  pretrained: {self.source_architecture}",
            f"  target:     {self.target_architecture}",
            f"  architecture match: {match[self.architecture_match]}",
            f"  transferred parts: {', '.join(self.scope)}",
            f"  loaded: {len(self.loaded)} tensors, {self.loaded_parameters:,} of the network's "
            f"{self.network_parameters:,} parameters ({self._share():.1%})",
        ]
        lines += keys("missing in checkpoint", self.missing)
        lines += keys("unexpected in checkpoint", self.unexpected)
        lines.append(f"  shape-mismatched: {len(self.shape_mismatched)}")
        lines += [
            f"    {k}: checkpoint {tuple(s)} vs network {tuple(t)}"
            for k, s, t in self.shape_mismatched[:max_keys]
        ]
        if len(self.shape_mismatched) > max_keys:
            lines.append(f"    ... and {len(self.shape_mismatched) - max_keys} more")
        lines.append(
            f"  skipped (in the checkpoint, outside the transferred parts): "
            f"{self.not_transferred} tensors"
        )
        lines.append(
            f"  input channels: {self.source_in_channels} -> {self.target_in_channels}"
            + (f" ({self.channel_adaptation})" if self.channel_adaptation else "")
        )
        lines.append(
            f"  patch size: pretrain {_fmt(self.pretrain_patch_size)} / "
            f"fine-tune {_fmt(self.finetune_patch_size)}"
        )
        lines.append(
            f"  spacing mm: pretrain {_fmt(self.pretrain_spacing_mm)} / "
            f"fine-tune {_fmt(self.finetune_spacing_mm)}"
        )
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _fmt(v: Sequence[Any] | None) -> str:
    if v is None:
        return "unknown"
    return "x".join(f"{x:g}" if isinstance(x, float) else str(x) for x in v)


__all__ = ["TransferReport"]
