"""A registry of small network factories, timm style: one decorated function per preset.

Every factory has the signature ``fn(in_channels, out_channels, *, deep_supervision=False)`` and
returns a plain ``nn.Module`` taking (B, in_channels, D, H, W) and returning
(B, out_channels, D, H, W) logits (a list of those, full resolution first, with deep supervision).

Example:
    >>> from toolkit.models import create_model, list_models, model_info
    >>> "resenc_tiny" in list_models()
    True
    >>> model_info("resenc_tiny")["supports_s3d"]
    True
    >>> net = create_model("resenc_tiny", in_channels=1, out_channels=2)
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from torch import nn

from toolkit.errors import ConfigError

__all__ = [
    "ModelEntry",
    "ModelFactory",
    "create_model",
    "get_entry",
    "list_models",
    "model_info",
    "register_model",
]


class ModelFactory(Protocol):
    """What a registered factory looks like."""

    def __call__(
        self, in_channels: int, out_channels: int, *, deep_supervision: bool = False
    ) -> nn.Module: ...


F = TypeVar("F", bound=Callable[..., nn.Module])


@dataclass(frozen=True)
class ModelEntry:
    """One registered architecture and what callers need to know about it without building it.

    Attributes:
        name: registry key.
        factory: the builder.
        family: ``"resenc"`` (dynamic-network-architectures ResidualEncoderUNet) or ``"monai"``.
        strides: per-stage downsampling of the encoder (stage ``i`` runs at
            ``patch / prod(strides[: i + 1])``).
        features: channels per encoder stage.
        supports_s3d: whether the sparse (S3D) MAE variant can wrap it.
        supports_deep_supervision: whether ``deep_supervision=True`` is available.
        description: one line for listings.
        extra: further JSON-friendly facts (e.g. nnU-Net ``arch_kwargs``).
    """

    name: str
    factory: ModelFactory
    family: str
    strides: tuple[int, ...]
    features: tuple[int, ...]
    supports_s3d: bool
    supports_deep_supervision: bool
    description: str
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def total_stride(self) -> int:
        """Total downsampling of the encoder; patch edges must be multiples of it."""
        return math.prod(self.strides)


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(
    name: str,
    *,
    family: str,
    strides: tuple[int, ...],
    features: tuple[int, ...],
    supports_s3d: bool = False,
    supports_deep_supervision: bool = False,
    extra: Mapping[str, Any] | None = None,
) -> Callable[[F], F]:
    """Decorator that registers a factory under ``name``.

    The factory's docstring (first line) becomes the description shown by listings.

    Raises:
        ValueError: ``name`` is already registered (a programming error, not a user one).
    """

    def decorate(fn: F) -> F:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        doc = (fn.__doc__ or "").strip().splitlines()
        _REGISTRY[name] = ModelEntry(
            name=name,
            factory=fn,
            family=family,
            strides=tuple(strides),
            features=tuple(features),
            supports_s3d=supports_s3d,
            supports_deep_supervision=supports_deep_supervision,
            description=doc[0] if doc else "",
            extra=dict(extra or {}),
        )
        return fn

    return decorate


def list_models(family: str | None = None) -> list[str]:
    """Sorted names of the registered architectures, optionally of one family."""
    return sorted(n for n, e in _REGISTRY.items() if family is None or e.family == family)


def get_entry(name: str) -> ModelEntry:
    """The :class:`ModelEntry` for ``name``.

    Raises:
        ConfigError: ``model.name`` is not registered (with the closest known name).
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        known = list_models()
        hint = difflib.get_close_matches(name, known, n=1)
        extra = f"did you mean {hint[0]!r}? " if hint else ""
        raise ConfigError(
            f"model.name: unknown architecture {name!r} ({extra}known: {', '.join(known)})"
        ) from None


def model_info(name: str) -> dict[str, Any]:
    """Facts about a registered architecture, without building it.

    Returns:
        A dict with ``name``, ``family``, ``strides``, ``total_stride``, ``features``,
        ``supports_s3d``, ``supports_deep_supervision``, ``description`` and any family-specific
        keys (ResEnc adds ``n_blocks_per_stage``, ``arch_class_name``, ``arch_kwargs`` and
        ``arch_kwargs_requiring_import`` in nnU-Net plans format).
    """
    e = get_entry(name)
    info: dict[str, Any] = {
        "name": e.name,
        "family": e.family,
        "strides": e.strides,
        "total_stride": e.total_stride,
        "features": e.features,
        "supports_s3d": e.supports_s3d,
        "supports_deep_supervision": e.supports_deep_supervision,
        "description": e.description,
    }
    info.update(e.extra)
    return info


def create_model(
    name: str,
    in_channels: int,
    out_channels: int,
    *,
    deep_supervision: bool = False,
    init: str = "nnunet",
) -> nn.Module:
    """Build a registered architecture with freshly initialised weights.

    Args:
        name: a name from :func:`list_models`.
        in_channels: input channels C of (B, C, D, H, W) images.
        out_channels: output channels (classes for segmentation, C for reconstruction).
        deep_supervision: return a list of lower-resolution outputs too (ResEnc only).
        init: ``nnunet`` (nnU-Net's He normal, last norm of each residual block zeroed) or
            ``torch`` (PyTorch's defaults); see :mod:`toolkit.models.initialization`.

    Raises:
        ConfigError: unknown name, non-positive channel counts, or deep supervision requested from
            a network without it.
    """
    entry = get_entry(name)
    if in_channels < 1:
        raise ConfigError(f"model.in_channels: must be >= 1, got {in_channels}")
    if out_channels < 1:
        raise ConfigError(
            f"out_channels: {name} needs at least 1 output channel, got {out_channels}"
        )
    if deep_supervision and not entry.supports_deep_supervision:
        with_ds = [n for n in list_models() if get_entry(n).supports_deep_supervision]
        raise ConfigError(
            f"model.deep_supervision: {name} has no deep-supervision outputs; set it to false or "
            f"use one of {', '.join(with_ds)}"
        )
    from toolkit.models.initialization import init_weights

    if init not in ("torch", "nnunet"):
        raise ConfigError(f"model.init: create_model takes torch or nnunet, got {init!r}")
    network = entry.factory(in_channels, out_channels, deep_supervision=deep_supervision)
    return init_weights(network, init)
