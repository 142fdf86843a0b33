"""Which registered network an nnssl adaptation plan describes.

nnssl names the pretrained architecture in ``architecture_plans``: either a preset name with no
kwargs (``"ResEncL"``, what nnssl's ``BaseMAETrainer`` writes and how the OpenMind ResEnc-L
checkpoints are published) or a class (``"ResidualEncoderUNet"``, short or as a dotted path) with
``arch_kwargs`` in nnU-Net plans format. Fine-tuning builds the network the plan describes, so the
plan is matched against the toolkit's registry (:mod:`toolkit.models.resenc`): the registered
presets whose ``arch_kwargs`` equal the plan's on every key that shapes the network.

Example:
    >>> resolve_architecture("ResEncL", None, source="ckpt.pth")[0]
    'resenc_l'
"""

from __future__ import annotations

import pydoc
from collections.abc import Mapping, Sequence
from typing import Any

from toolkit.errors import DataError

#: nnssl's named presets (``nnssl.architectures.get_network_by_name``) -> toolkit registry name.
NNSSL_PRESETS = {"ResEncL": "resenc_l"}
#: Short and dotted names of the class the ResEnc presets are built from.
RESENC_CLASS = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
#: ``arch_kwargs`` keys that decide the network's weights and function. ``dropout_op`` and
#: ``deep_supervision`` change neither the state dict nor the encoder; ``inplace`` is not compared.
STRUCTURAL_KEYS = (
    "n_stages",
    "features_per_stage",
    "conv_op",
    "kernel_sizes",
    "strides",
    "n_blocks_per_stage",
    "n_conv_per_stage_decoder",
    "conv_bias",
    "norm_op",
    "norm_op_kwargs",
    "nonlin",
    "nonlin_kwargs",
)


def normalise_arch_kwargs(kwargs: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """``arch_kwargs`` with class paths as ``module.Class`` of their defining module, sequences
    as lists and integral floats as ints, so two spellings of one network compare equal."""
    if kwargs is None:
        return None

    def norm(v: Any) -> Any:
        if isinstance(v, str) and "." in v:
            located = pydoc.locate(v)
            if isinstance(located, type):
                return f"{located.__module__}.{located.__qualname__}"
        if hasattr(v, "tolist"):  # tensors / numpy arrays from nnssl's _convert_numpy
            v = v.tolist()
        if isinstance(v, list | tuple):
            return [norm(x) for x in v]
        if isinstance(v, Mapping):
            return {k: norm(x) for k, x in v.items()}
        if isinstance(v, float) and v.is_integer():
            return int(v)
        return v

    return {k: norm(v) for k, v in kwargs.items()}


def structural_kwargs(kwargs: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The :data:`STRUCTURAL_KEYS` of normalised ``kwargs`` (``nonlin_kwargs`` without
    ``inplace``); None when ``kwargs`` is None."""
    norm = normalise_arch_kwargs(kwargs)
    if norm is None:
        return None
    out = {k: norm.get(k) for k in STRUCTURAL_KEYS}
    if isinstance(out["nonlin_kwargs"], Mapping):
        out["nonlin_kwargs"] = {k: v for k, v in out["nonlin_kwargs"].items() if k != "inplace"}
    return out


def _is_resenc_class(name: str) -> bool:
    return name in (RESENC_CLASS, RESENC_CLASS.rsplit(".", 1)[-1])


def _differences(plan: Mapping[str, Any], preset: Mapping[str, Any]) -> list[str]:
    return [k for k in STRUCTURAL_KEYS if plan.get(k) != preset.get(k)]


def resolve_architecture(
    arch_class_name: str,
    arch_kwargs: Mapping[str, Any] | None,
    *,
    source: str,
) -> tuple[tuple[str, ...], dict[str, Any]]:
    """Registered models that build the network an adaptation plan names.

    Args:
        arch_class_name: ``architecture_plans.arch_class_name`` (``ResEncL``,
            ``ResidualEncoderUNet`` or its dotted path).
        arch_kwargs: ``architecture_plans.arch_kwargs`` (None for a named preset).
        source: the checkpoint, for error messages.

    Returns:
        The matching registry names (preferred first) and the plan's arch kwargs in nnU-Net plans
        format (the preset's own when the plan names a preset).

    Raises:
        DataError: the plan names an architecture the toolkit cannot build (Primus, the no-skip
            ResEnc, another class), ResidualEncoderUNet without kwargs, or kwargs that match no
            registered preset (the message names the closest preset and the keys that differ).
    """
    from toolkit.models import list_models, model_info

    field = "nnssl_adaptation_plan.architecture_plans"
    resenc = list_models("resenc")
    presets = {n: structural_kwargs(model_info(n)["arch_kwargs"]) or {} for n in resenc}
    name = str(arch_class_name)
    if name in NNSSL_PRESETS:
        preferred = NNSSL_PRESETS[name]
        wanted = presets[preferred]
        kwargs = dict(model_info(preferred)["arch_kwargs"])
    elif _is_resenc_class(name):
        if not arch_kwargs:
            raise DataError(
                f"{source}: {field}.arch_class_name is {name!r} but arch_kwargs is empty; a "
                "ResidualEncoderUNet needs its kwargs (features_per_stage, n_blocks_per_stage, ...)"
            )
        wanted = structural_kwargs(arch_kwargs) or {}
        kwargs = dict(arch_kwargs)
        preferred = ""
    else:
        known = ", ".join([*NNSSL_PRESETS, "ResidualEncoderUNet (with arch_kwargs)"])
        raise DataError(
            f"{source}: {field}.arch_class_name is {name!r}, which the toolkit cannot build; "
            f"fine-tuning builds {known}"
        )
    matches = [n for n, p in presets.items() if p == wanted]
    if not matches:
        closest = min(resenc, key=lambda n: len(_differences(wanted, presets[n])))
        diff = _differences(wanted, presets[closest])
        shown = "; ".join(f"{k}={wanted.get(k)!r}" for k in diff[:3])
        raise DataError(
            f"{source}: {field} describes a ResidualEncoderUNet that matches no registered model "
            f"(closest: {closest}, differing in {', '.join(diff)}: {shown}); register a preset "
            "with this topology in toolkit/models/resenc.py to fine-tune from it"
        )
    matches.sort(key=lambda n: (n != preferred, n))
    return tuple(matches), kwargs


def plan_sequence(value: Any) -> list[Any] | None:
    """A spacing / patch-size entry of an nnssl plan as a list (nnssl stores lists, tuples, or
    tensors where ``_convert_numpy`` met numpy arrays); None when absent or containing None."""
    if value is None:
        return None
    if hasattr(value, "tolist"):
        value = value.tolist()
    if not isinstance(value, Sequence) or isinstance(value, str):
        return None
    items = list(value)
    return None if not items or any(v is None for v in items) else items


__all__ = [
    "NNSSL_PRESETS",
    "RESENC_CLASS",
    "STRUCTURAL_KEYS",
    "normalise_arch_kwargs",
    "plan_sequence",
    "resolve_architecture",
    "structural_kwargs",
]
