"""Configs saved by earlier versions: what moved, and how an old mapping becomes a current one.

Until each stage had its own optimiser section, one top-level ``optim`` section served both
pretraining and fine-tuning, and the fine-tuning peak lrs were ``finetune.lr_pretrained`` /
``finetune.lr_scratch``. :func:`migrate_config_dict` rewrites such a mapping (a run folder's
``config.yaml``, a checkpoint's ``config``, a YAML file); :func:`moved_field_error` is the one-line
error for a dotted override or sweep axis that still uses an old name.
:func:`toolkit.config.from_dict` applies both, so every loader goes through them.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from toolkit.errors import ConfigError

#: Fields of the old shared ``optim`` section that both stages inherit.
_LEGACY_OPTIM_SHARED = (
    "optimizer",
    "momentum",
    "weight_decay",
    "betas",
    "poly_exponent",
    "grad_clip",
)
#: Fields of the old ``optim`` section that only pretraining used (``optim.lr`` was its lr).
_LEGACY_OPTIM_PRETRAIN = ("lr", "schedule", "warmup_steps")
#: Old ``finetune`` lr fields and their place in ``finetune.optim``.
_LEGACY_FINETUNE_LR = {"lr_pretrained": "lr", "lr_scratch": "lr_scratch"}


def migrate_config_dict(data: Mapping[str, Any]) -> tuple[dict[str, Any], str | None]:
    """Move an old config's shared ``optim`` section into ``pretrain.optim`` and ``finetune.optim``.

    Old runs had one ``optim`` section for both stages, so both stages get its values, except
    ``lr``, ``schedule`` and ``warmup_steps``, which only pretraining used; the old
    ``finetune.lr_pretrained`` / ``finetune.lr_scratch`` become ``finetune.optim.lr`` /
    ``finetune.optim.lr_scratch``.

    Args:
        data: a nested config mapping (``Config.to_dict()`` of any toolkit version).

    Returns:
        The mapping in the current layout (a copy; ``data`` is untouched) and a one-line note of
        what was moved, or None when nothing needed moving.

    Example:
        >>> new, note = migrate_config_dict({"optim": {"lr": 0.1, "momentum": 0.9}})
        >>> new["pretrain"]["optim"], new["finetune"]["optim"]
        ({'lr': 0.1, 'momentum': 0.9}, {'momentum': 0.9})
    """
    out = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in data.items()}
    moved: list[str] = []
    ft = out.get("finetune")
    if isinstance(ft, dict):
        for old, new in _LEGACY_FINETUNE_LR.items():
            if old in ft:
                ft_optim = dict(ft.get("optim") or {})
                ft_optim.setdefault(new, ft.pop(old))
                ft["optim"] = ft_optim
                moved.append(f"finetune.{old} -> finetune.optim.{new}")
    if "optim" in out:
        legacy = out.pop("optim")
        if not isinstance(legacy, Mapping):
            raise ConfigError(f"optim: expected a mapping, got {legacy!r}")
        pt = dict(out.get("pretrain") or {})
        ft = dict(out.get("finetune") or {})
        pt_optim, ft_optim = dict(pt.get("optim") or {}), dict(ft.get("optim") or {})
        for key, value in legacy.items():
            if key in _LEGACY_OPTIM_PRETRAIN:
                pt_optim.setdefault(key, value)
            elif key in _LEGACY_OPTIM_SHARED:
                pt_optim.setdefault(key, value)
                ft_optim.setdefault(key, value)
            else:
                raise _unknown_legacy(
                    f"optim.{key}", str(key), list(_LEGACY_OPTIM_SHARED + _LEGACY_OPTIM_PRETRAIN)
                )
        pt["optim"], ft["optim"] = pt_optim, ft_optim
        out["pretrain"], out["finetune"] = pt, ft
        moved.insert(
            0,
            "optim.* -> pretrain.optim.* and finetune.optim.* "
            "(lr, schedule, warmup_steps: pretraining only)",
        )
    return out, ("; ".join(moved) if moved else None)


def moved_field_error(key: str) -> ConfigError | None:
    """The error for a dotted field that moved (``optim.*``, ``finetune.lr_*``), else None."""
    parts = key.split(".")
    if parts[0] == "optim" and len(parts) == 2:
        where = (
            f"pretrain.optim.{parts[1]}"
            if parts[1] in ("schedule", "warmup_steps")
            else f"pretrain.optim.{parts[1]} and/or finetune.optim.{parts[1]}"
        )
        return ConfigError(f"{key}: there is no shared optim section any more; set {where}")
    if parts[0] == "optim":
        return ConfigError(
            f"{key}: there is no shared optim section any more; "
            "use pretrain.optim.* / finetune.optim.*"
        )
    if len(parts) == 2 and parts[0] == "finetune" and parts[1] in _LEGACY_FINETUNE_LR:
        return ConfigError(f"{key}: moved to finetune.optim.{_LEGACY_FINETUNE_LR[parts[1]]}")
    return None


def _unknown_legacy(name: str, key: str, known: list[str]) -> ConfigError:
    hint = difflib.get_close_matches(key, known, n=1)
    extra = f" (did you mean {hint[0]!r}?)" if hint else f" (known: {', '.join(known)})"
    return ConfigError(f"{name}: unknown field{extra}")


__all__ = ["migrate_config_dict", "moved_field_error"]
