"""Weight initialisation schemes (``model.init``): PyTorch's defaults or nnU-Net's.

nnssl's MAE trainers build ResEnc-L without calling its ``initialize``, so pretraining starts from
PyTorch's default initialisation (kaiming-uniform convs with ``a = sqrt(5)``, norm weights 1);
nnU-Net (and so fine-tuning) applies He-normal convs and sets the last norm of every residual
block to zero, which makes each block start as its skip path. Started from zeroed residual
branches, short MAE runs barely open them, so the stage decides by default:

* ``auto``: ``torch`` for the pretraining network (as nnssl), ``nnunet`` for fine-tuning
  networks (as nnU-Net).
* ``torch``: every module's own ``reset_parameters`` (PyTorch's defaults).
* ``nnunet``: He normal (negative slope 1e-2) on every (transposed) conv with zero bias, then
  weight and bias 0 on the last norm of every ResNet-D residual block (``BasicBlockD`` /
  ``BottleneckD``); what ``ResidualEncoderUNet.initialize`` does, applied to any network.

S3D's densification convs follow the network's scheme; its mask tokens keep SparK's small
truncated normal (std 0.02) under every scheme.

Example:
    >>> from toolkit.models import create_model
    >>> net = create_model("resenc_tiny", 1, 1, init="nnunet")
    >>> float(net.encoder.stages[1].blocks[0].conv2.norm.weight.abs().sum())
    0.0
    >>> resolve_init("auto", "pretrain"), resolve_init("auto", "finetune")
    ('torch', 'nnunet')
"""

from __future__ import annotations

from dynamic_network_architectures.initialization.weight_init import (
    InitWeights_He,
    init_last_bn_before_add_to_0,
)
from torch import nn

from toolkit.errors import ConfigError

#: Values of ``model.init``.
INIT_SCHEMES = ("auto", "torch", "nnunet")
#: What ``auto`` means for each stage.
AUTO_INIT = {"pretrain": "torch", "finetune": "nnunet"}


def resolve_init(scheme: str, stage: str) -> str:
    """The concrete scheme (``torch`` or ``nnunet``) of ``model.init`` for a stage.

    Args:
        scheme: ``auto``, ``torch`` or ``nnunet``.
        stage: ``pretrain`` or ``finetune``.
    """
    if scheme not in INIT_SCHEMES:
        raise ConfigError(f"model.init: must be one of {', '.join(INIT_SCHEMES)}; got {scheme!r}")
    if stage not in AUTO_INIT:
        raise ValueError(f"stage must be one of {', '.join(AUTO_INIT)}, got {stage!r}")
    return AUTO_INIT[stage] if scheme == "auto" else scheme


def init_weights(module: nn.Module, scheme: str) -> nn.Module:
    """Initialise ``module`` and everything in it in place with ``torch`` or ``nnunet``.

    Draws from torch's global generator: seed it first for reproducible weights.

    Args:
        module: a network (or part of one).
        scheme: ``torch`` or ``nnunet`` (resolve ``auto`` with :func:`resolve_init` first).

    Returns:
        ``module``.
    """
    if scheme == "torch":
        for m in module.modules():
            reset = getattr(m, "reset_parameters", None)
            if callable(reset):
                reset()
    elif scheme == "nnunet":
        module.apply(InitWeights_He(1e-2))
        module.apply(init_last_bn_before_add_to_0)
    else:
        raise ConfigError(f"model.init: cannot initialise with {scheme!r}; use torch or nnunet")
    return module


__all__ = ["AUTO_INIT", "INIT_SCHEMES", "init_weights", "resolve_init"]
