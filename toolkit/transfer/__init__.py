"""Pretrained weights into a segmentation network, a transfer report, and nnssl / nnU-Net export.

One idea per module:

* :mod:`toolkit.transfer.read` — read a pretraining checkpoint (toolkit, nnssl, bare nnU-Net);
* :mod:`toolkit.transfer.architecture` — which registered network an nnssl adaptation plan names;
* :mod:`toolkit.transfer.plan` — what transfers (stem + encoder, optionally decoder; stem channel
  adaptation) and the fine-tuning config built from the plan;
* :mod:`toolkit.transfer.report` — the :class:`TransferReport`;
* :mod:`toolkit.transfer.nnssl` — nnssl's adaptation plan and ``mae3d export``.

Example:
    >>> from toolkit.config import load_config
    >>> report = inspect_transfer("checkpoint_final.pth", load_config("paper"))  # doctest: +SKIP
    >>> print(report.format())  # doctest: +SKIP
"""

from __future__ import annotations

from toolkit.transfer.architecture import NNSSL_PRESETS, resolve_architecture
from toolkit.transfer.nnssl import (
    EXPORT_FORMATS,
    build_adaptation_plan,
    export_checkpoint,
    nnssl_arch_kwargs,
)
from toolkit.transfer.plan import (
    canonical_keys,
    config_for_source,
    inspect_transfer,
    load_pretrained,
    plan_transfer,
    transfer_scope,
)
from toolkit.transfer.read import (
    KEY_TO_ENCODER,
    KEY_TO_STEM,
    KEYS_TO_IN_PROJ,
    PretrainedWeights,
    read_pretrained,
)
from toolkit.transfer.report import TransferReport

__all__ = [
    "EXPORT_FORMATS",
    "KEYS_TO_IN_PROJ",
    "KEY_TO_ENCODER",
    "KEY_TO_STEM",
    "NNSSL_PRESETS",
    "PretrainedWeights",
    "TransferReport",
    "build_adaptation_plan",
    "canonical_keys",
    "config_for_source",
    "export_checkpoint",
    "inspect_transfer",
    "load_pretrained",
    "nnssl_arch_kwargs",
    "plan_transfer",
    "read_pretrained",
    "resolve_architecture",
    "transfer_scope",
]
