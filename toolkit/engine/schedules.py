"""Optimisers and learning-rate schedules from a stage's optimiser section.

Each stage has its own section: ``pretrain.optim`` (:class:`~toolkit.config.PretrainOptimConfig`,
with the lr schedule) and ``finetune.optim`` (:class:`~toolkit.config.FinetuneOptimConfig`; the
fine-tuning lr shape is ``finetune.schedule``, see :func:`finetune_lr_lambdas`).

A schedule is a pure function of the step: ``lr(step) = peak_lr * multiplier(step)``. Keeping it
stateless means a resumed run recomputes exactly the same rates, and a task can hand the scheduler
one multiplier function per parameter group (fine-tuning's "sawtooth" warms the decoder up before
the encoder).

Defaults follow the paper (see RECIPE.md): SGD with Nesterov momentum 0.99, lr 1e-2, weight decay
3e-5, poly decay with exponent 0.9, no warm-up, gradient-norm clip 12. The alternative is AdamW with
a linear warm-up and cosine decay (``pretrain.optim.optimizer=adamw pretrain.optim.schedule=cosine
pretrain.optim.warmup_steps=...``).

Example:
    >>> lr_multiplier(0, 100, schedule="poly"), round(lr_multiplier(50, 100, schedule="poly"), 4)
    (1.0, 0.5359)
    >>> lr_multiplier(0, 100, schedule="cosine", warmup_steps=10)
    0.1
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR

from toolkit.config import OptimConfig, PretrainOptimConfig
from toolkit.errors import ConfigError

LrLambda = Callable[[int], float]
ParamsOrGroups = Iterable[torch.nn.Parameter] | Iterable[dict[str, Any]]

SCHEDULES = ("poly", "cosine", "constant")


def lr_multiplier(
    step: int,
    total_steps: int,
    *,
    schedule: str = "poly",
    warmup_steps: int = 0,
    poly_exponent: float = 0.9,
) -> float:
    """Learning-rate multiplier in [0, 1] for the (0-based) optimiser ``step``.

    During warm-up the multiplier rises linearly, ``(step + 1) / warmup_steps`` (so the first step
    already moves); afterwards ``schedule`` decays it over the remaining steps with
    ``t = (step - warmup) / (total - warmup)``: poly ``(1 - t) ** exponent`` (nnU-Net), cosine
    ``(1 + cos(pi t)) / 2``, or constant 1.

    Args:
        step: optimiser step, 0 for the first update.
        total_steps: length of the run in steps.
        schedule: ``poly``, ``cosine`` or ``constant``.
        warmup_steps: linear warm-up length (0 = none).
        poly_exponent: exponent of the poly decay.
    """
    if schedule not in SCHEDULES:
        raise ConfigError(
            f"pretrain.optim.schedule: must be one of {', '.join(SCHEDULES)}; got {schedule!r}"
        )
    if total_steps <= 0:
        raise ConfigError(f"total steps must be > 0, got {total_steps}")
    if warmup_steps >= total_steps:
        raise ConfigError(
            f"pretrain.optim.warmup_steps: {warmup_steps} must be shorter than the run "
            f"({total_steps} steps)"
        )
    step = max(0, step)
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    t = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    if schedule == "poly":
        return float((1.0 - t) ** poly_exponent)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * t))
    return 1.0


def make_lr_lambda(total_steps: int, optim_cfg: PretrainOptimConfig) -> LrLambda:
    """The multiplier of :func:`lr_multiplier` bound to ``optim_cfg`` and ``total_steps``."""
    schedule, warmup, exponent = optim_cfg.schedule, optim_cfg.warmup_steps, optim_cfg.poly_exponent
    lr_multiplier(0, total_steps, schedule=schedule, warmup_steps=warmup)  # validate eagerly

    def multiplier(step: int) -> float:
        return lr_multiplier(
            step, total_steps, schedule=schedule, warmup_steps=warmup, poly_exponent=exponent
        )

    return multiplier


def build_optimizer(
    params_or_groups: ParamsOrGroups,
    optim_cfg: OptimConfig,
    *,
    lr: float | None = None,
    fused: bool = False,
) -> torch.optim.Optimizer:
    """SGD (Nesterov) or AdamW from the config.

    Args:
        params_or_groups: parameters, or parameter-group dicts (a group may set its own ``lr`` or
            ``weight_decay``).
        optim_cfg: the stage's optimiser section (``pretrain.optim`` or ``finetune.optim``).
        lr: peak learning rate; defaults to ``optim_cfg.lr`` (fine-tuning from scratch passes
            ``finetune.optim.lr_scratch``).
        fused: one fused kernel per update (the training loop asks for it on a GPU, where the
            update of ~100 M parameters is otherwise hundreds of small kernels); False keeps
            torch's default (multi-tensor ``foreach`` where available).
    """
    peak = optim_cfg.lr if lr is None else lr
    params: list[Any] = list(params_or_groups)
    if not params:
        raise ConfigError("optimizer: the model has no trainable parameters")
    impl: dict[str, Any] = {"fused": True} if fused else {}
    if optim_cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params,
            lr=peak,
            momentum=optim_cfg.momentum,
            weight_decay=optim_cfg.weight_decay,
            nesterov=optim_cfg.momentum > 0,
            **impl,
        )
    if optim_cfg.optimizer == "adamw":
        return torch.optim.AdamW(
            params, lr=peak, betas=optim_cfg.betas, weight_decay=optim_cfg.weight_decay, **impl
        )
    raise ConfigError(f"optimizer: must be sgd or adamw; got {optim_cfg.optimizer!r}")


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    optim_cfg: OptimConfig,
    total_steps: int,
    *,
    lr_lambdas: LrLambda | Sequence[LrLambda] | None = None,
) -> LambdaLR:
    """A ``LambdaLR`` stepping once per optimiser step.

    Args:
        optimizer: from :func:`build_optimizer`.
        optim_cfg: the stage's optimiser section; its schedule (``pretrain.optim``: schedule,
            warm-up, poly exponent) is used when ``lr_lambdas`` is None.
        total_steps: run length in steps.
        lr_lambdas: override: one multiplier for every group, or one per parameter group (e.g. the
            fine-tuning sawtooth). Must be plain functions or closures so the scheduler's state
            dict stays loadable with ``weights_only=True``.
    """
    if lr_lambdas is None:
        if not isinstance(optim_cfg, PretrainOptimConfig):
            raise ConfigError(
                f"scheduler: {type(optim_cfg).__name__} has no lr schedule; the task must give "
                "lr_lambdas (fine-tuning: finetune.schedule)"
            )
        lambdas: LrLambda | list[LrLambda] = make_lr_lambda(total_steps, optim_cfg)
    elif callable(lr_lambdas):
        lambdas = lr_lambdas
    else:
        lambdas = list(lr_lambdas)
        if len(lambdas) != len(optimizer.param_groups):
            raise ConfigError(
                f"scheduler: {len(lambdas)} lr functions for {len(optimizer.param_groups)} "
                "parameter groups"
            )
    return LambdaLR(optimizer, lambdas)


__all__ = [
    "SCHEDULES",
    "LrLambda",
    "build_optimizer",
    "build_scheduler",
    "lr_multiplier",
    "make_lr_lambda",
]


# --------------------------------------------------------------------------------------------------
# Fine-tuning schedules (owned by the fine-tuning task, toolkit/finetune.py).
# Two parameter groups, encoder (stem + stages) and decoder (everything else); each gets its own
# multiplier of the peak lr, so "frozen" simply means a multiplier of 0.

FINETUNE_SCHEDULES = ("sawtooth", "warmup_poly", "frozen_encoder", "none")


def finetune_phases(
    schedule: str, total_steps: int, *, warmup_fraction: float, decoder_warmup_fraction: float
) -> dict[str, int]:
    """Step boundaries of a fine-tuning schedule.

    Returns:
        ``decoder_warmup_end`` (end of the decoder-only warm-up), ``decoder_decay_end`` (end of
        its decay; the encoder is frozen before it), ``warmup_end`` (end of the whole-net warm-up,
        where poly decay starts). Unused phases have length 0.

    Raises:
        ConfigError: unknown schedule, or the warm-up phases leave no steps for the decay.
    """
    if schedule not in FINETUNE_SCHEDULES:
        raise ConfigError(
            f"finetune.schedule: must be one of {', '.join(FINETUNE_SCHEDULES)}; got {schedule!r}"
        )
    if total_steps <= 0:
        raise ConfigError(f"finetune.steps: must be > 0, got {total_steps}")
    dec = round(decoder_warmup_fraction * total_steps) if schedule == "sawtooth" else 0
    if schedule == "sawtooth" and decoder_warmup_fraction > 0:
        dec = max(dec, 1)
    warm = round(warmup_fraction * total_steps) if schedule != "none" else 0
    if warmup_fraction > 0 and schedule != "none":
        warm = max(warm, 1)
    if 2 * dec + warm >= total_steps:
        raise ConfigError(
            f"finetune.warmup_fraction / decoder_warmup_fraction: the {schedule} warm-up phases "
            f"({2 * dec} decoder-only + {warm} whole-net steps) leave no steps of a "
            f"{total_steps}-step run for the decay"
        )
    return {"decoder_warmup_end": dec, "decoder_decay_end": 2 * dec, "warmup_end": 2 * dec + warm}


def finetune_lr_lambdas(
    schedule: str,
    total_steps: int,
    *,
    warmup_fraction: float,
    decoder_warmup_fraction: float,
    poly_exponent: float = 0.9,
) -> tuple[LrLambda, LrLambda]:
    """(encoder, decoder) lr multipliers of a fine-tuning schedule (RECIPE.md "Fine-tuning").

    * ``sawtooth``: decoder only (encoder 0) — linear warm-up to 1 over
      ``decoder_warmup_fraction`` of the steps, then linear decay to 0 over as many; then the whole
      net — linear warm-up over ``warmup_fraction``, then poly decay to the end.
    * ``warmup_poly``: whole-net linear warm-up over ``warmup_fraction``, then poly.
    * ``frozen_encoder``: encoder 0 for the whole run; decoder as ``warmup_poly``.
    * ``none``: plain poly from the first step.

    Example:
        >>> enc, dec = finetune_lr_lambdas("sawtooth", 100, warmup_fraction=0.1,
        ...                                decoder_warmup_fraction=0.1)
        >>> [enc(s) for s in (0, 15, 20, 29)], [dec(s) for s in (0, 9, 19)]
        ([0.0, 0.0, 0.1, 1.0], [0.1, 1.0, 0.0])
    """
    ph = finetune_phases(
        schedule,
        total_steps,
        warmup_fraction=warmup_fraction,
        decoder_warmup_fraction=decoder_warmup_fraction,
    )
    d_end, dd_end, w_end = ph["decoder_warmup_end"], ph["decoder_decay_end"], ph["warmup_end"]

    def whole_net(step: int) -> float:
        step = max(0, step)
        if step < w_end:
            return (step - dd_end + 1) / (w_end - dd_end)
        t = min(1.0, (step - w_end) / (total_steps - w_end))
        return float((1.0 - t) ** poly_exponent)

    def decoder(step: int) -> float:
        step = max(0, step)
        if step < d_end:
            return (step + 1) / d_end
        if step < dd_end:
            return (dd_end - step - 1) / d_end
        return whole_net(step)

    def encoder(step: int) -> float:
        if schedule == "frozen_encoder" or max(0, step) < dd_end:
            return 0.0
        return whole_net(step)

    return encoder, decoder


__all__ += ["FINETUNE_SCHEDULES", "finetune_lr_lambdas", "finetune_phases"]
