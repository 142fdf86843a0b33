"""Dry run: every planned run with its state and an estimated training time.

Times come from timing a few steps once per distinct network / mask / patch / batch / runtime on
this machine (:func:`toolkit.bench.bench_pretrain`); ``measure_steps=0`` measures nothing.

Example:
    >>> estimates = estimate_sweep(plan, measure_steps=0)  # doctest: +SKIP
    >>> print(format_estimates(estimates, measure_steps=0))  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from toolkit.config import Config
from toolkit.sweep.plan import Run, SweepPlan
from toolkit.sweep.status import run_state


@dataclass(frozen=True)
class RunEstimate:
    """A planned run with its state and estimated duration.

    Attributes:
        run: the run.
        state: ``done``, ``failed``, ``started`` or ``pending``.
        sec_per_step: measured seconds per training step (None: not measured).
        estimated_s: estimated training time (steps x sec_per_step, plus pretraining validation).
    """

    run: Run
    state: str
    sec_per_step: float | None
    estimated_s: float | None


def _step_key(cfg: Config, kind: str) -> str:
    """What a step's cost depends on: network, patch, batch, runtime and (pretraining) the MAE.

    The mask ratio is left out: dense and S3D steps compute on every voxel whatever the ratio.
    """
    d = cfg.to_dict()
    keep = {
        "model": d["model"],
        "patch": d["data"]["patch_size"],
        "batch": d["pretrain"]["batch_size"],
        "runtime": {k: v for k, v in d["runtime"].items() if k != "seed"},
        "optimizer": d["pretrain"]["optim"]["optimizer"],
    }
    if kind == "pretrain":
        keep["mask"] = {k: v for k, v in d["mask"].items() if k not in ("ratio", "ratio_range")}
    return json.dumps(keep, sort_keys=True)


def _proxy_config(run: Run) -> Config:
    """The pretraining-step config that is timed for a run.

    A fine-tuning step is timed as a dense MAE step of the same network at the fine-tuning batch
    size and optimiser: the same encoder-decoder forward and backward, without S3D's extra
    convolutions.
    """
    cfg = run.config
    if run.kind == "pretrain":
        return cfg
    return cfg.replace(
        {
            "mask.variant": "dense",
            "mask.input_mask_token": False,
            "pretrain.batch_size": cfg.finetune.batch_size,
            "pretrain.optim.optimizer": cfg.finetune.optim.optimizer,
        }
    )


def estimate_sweep(
    plan: SweepPlan,
    *,
    measure_steps: int = 2,
    step_timer: Callable[[Config, int], float] | None = None,
) -> list[RunEstimate]:
    """Every planned run with its state and an estimated training time.

    Times come from measuring ``measure_steps`` steps (after one warm-up step, on random
    in-memory volumes) once per distinct network / mask / patch / batch / runtime, with
    :func:`toolkit.bench.bench_pretrain`; fine-tuning steps are timed as dense MAE steps at the
    fine-tuning batch (see :func:`_proxy_config`). Pretraining validation is added as one forward
    pass (a third of a step) per validation batch; preprocessing, fine-tuning validation and the
    final evaluation are not included. ``measure_steps=0`` measures nothing.

    Args:
        plan: the expanded sweep.
        measure_steps: timed steps per distinct setting (0 = no estimate).
        step_timer: ``(config, steps) -> seconds per step``; default the benchmark above.
    """
    if step_timer is None:

        def step_timer(cfg: Config, steps: int) -> float:
            from toolkit.bench import bench_pretrain

            report = bench_pretrain(cfg, steps=steps, warmup=1, measure_data=False)
            return float(report.sec_per_step)

    measured: dict[str, float] = {}
    out = []
    for run in plan.runs:
        state = run_state(plan, run)
        sec = est = None
        if measure_steps > 0:
            proxy = _proxy_config(run)
            key = _step_key(proxy, run.kind)
            if key not in measured:
                measured[key] = step_timer(proxy, measure_steps)
            sec = measured[key]
            est = sec * run.steps
            if run.kind == "pretrain":
                p = run.config.pretrain
                passes = math.ceil(p.steps / p.val_every)
                est += passes * p.val_batches * sec / 3.0
        out.append(RunEstimate(run, state, sec, est))
    return out


def format_duration(seconds: float | None) -> str:
    """``75.2`` -> ``"1m15s"``; None -> ``"?"``."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def format_estimates(estimates: Sequence[RunEstimate], *, measure_steps: int) -> str:
    """The dry-run listing: one line per run, totals and how the time was estimated."""
    width = max((len(e.run.name) for e in estimates), default=3)
    lines = [f"{'run':<{width}}  {'kind':<8}  {'steps':>6}  {'estimate':>9}  state"]
    for e in estimates:
        lines.append(
            f"{e.run.name:<{width}}  {e.run.kind:<8}  {e.run.steps:>6}  "
            f"{format_duration(e.estimated_s):>9}  {e.state}"
        )
    todo = [e for e in estimates if e.state != "done"]
    n_pt = sum(e.run.kind == "pretrain" for e in estimates)
    lines.append(
        f"{len(estimates)} runs ({n_pt} pretraining, {len(estimates) - n_pt} fine-tuning), "
        f"{len(todo)} to do"
    )
    if measure_steps > 0:
        total = sum(e.estimated_s or 0.0 for e in todo)
        lines.append(
            f"estimated training time still to do: {format_duration(total)} (from {measure_steps} "
            "timed steps per distinct network/mask/patch/batch on this machine; fine-tuning "
            "timed as dense steps; preprocessing, fine-tuning validation and evaluation not "
            "included)"
        )
    else:
        lines.append("no time estimate (measure_steps=0)")
    return "\n".join(lines)


__all__ = ["RunEstimate", "estimate_sweep", "format_duration", "format_estimates"]
