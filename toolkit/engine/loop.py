"""The one training loop: pretraining and fine-tuning are :class:`Task` objects it runs.

:func:`train` owns everything that is the same for every task — runtime, optimiser and schedule,
mixed precision, gradient clipping, DDP, logging, validation and ``best`` selection, atomic
checkpoints, exact resume, and clean stops. A task only says what is specific to it: how to build
the model, where batches come from, what one step computes, and how to validate.

Exact resume rests on one rule: **everything random in a step is a function of the step**. Tasks
draw crops, masks and augmentation from generators seeded by :func:`step_generator` (or the
stateless samplers of :mod:`toolkit.data.sampling`), so a run resumed at step ``s`` sees the same
batches as an uninterrupted one; the loop restores model, optimiser, scheduler, scaler and the
global RNG states for whatever else draws from them.

Run folder (written by the main process)::

    RUN_DIR/config.yaml        the full config       RUN_DIR/metrics.csv / metrics.jsonl / tb/
    RUN_DIR/plan.json          preprocessing plan    RUN_DIR/loss.png (redrawn at every log)
    RUN_DIR/run.json           versions, device      RUN_DIR/checkpoints/{latest,best,final}.pt
    RUN_DIR/STOP               create it to stop cleanly (latest is saved; the file is removed)

A checkpoint is a plain dict (``weights_only=True``): ``format``, ``toolkit_version``, ``task``,
``step`` (completed optimiser steps), ``total_steps``, ``config`` (dict), ``plan`` (dict), the
task's model entries (default ``model``; pretraining: ``network_weights`` + ``extra_weights``),
``optimizer``, ``scheduler``, ``scaler``, ``rng``, ``task_state``, ``best``, ``metrics`` and
``log_window`` (per-step values not yet logged, so a resume logs the same means).

Example (a complete task is in ``toolkit/pretrain.py``)::

    result = train(MyTask(cfg), cfg, "runs/exp1")            # fresh run
    result = train(MyTask(cfg), cfg, "runs/exp1", resume=True)  # continue it exactly
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import signal
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import toolkit
from toolkit.config import Config, OptimConfig, save_config
from toolkit.config_legacy import migrate_config_dict
from toolkit.engine.checkpoint import (
    checkpoint_path,
    clean_state_dict,
    load_checkpoint,
    require_keys,
    save_checkpoint,
)
from toolkit.engine.logging import MetricWriter
from toolkit.engine.runtime import (
    Runtime,
    barrier,
    get_rng_state,
    peak_memory_bytes,
    prefetch_to_device,
    prepare_model,
    reset_peak_memory,
    seed_everything,
    set_rng_state,
    setup_runtime,
    teardown,
    unwrap_model,
)
from toolkit.engine.schedules import LrLambda, ParamsOrGroups, build_optimizer, build_scheduler
from toolkit.engine.step import NonFiniteError, StepWindow, run_step
from toolkit.errors import TrainingError

PathLike = str | os.PathLike[str]

CHECKPOINT_FORMAT = "mae3d-toolkit-checkpoint"
CHECKPOINT_FORMAT_VERSION = 1
STOP_FILE = "STOP"
SNAPSHOT_DIR = "snapshots"


def step_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded by ``(seed, stream, step)`` only.

    Use one per step and purpose (``stream``: masks, augmentation, ...) so every random draw of a
    step is reproducible in isolation — the basis of exact resume. Draw on the CPU and move the
    (small) results to the device: the numbers are then the same on every device.
    """
    state = np.random.SeedSequence([int(seed) % 2**63, int(stream), int(step)]).generate_state(
        1, np.uint64
    )
    return torch.Generator().manual_seed(int(state[0]) & 0x7FFF_FFFF_FFFF_FFFF)


@dataclass(frozen=True)
class LoopSettings:
    """How long to train and how often to log, validate, checkpoint and snapshot.

    Attributes:
        total_steps: optimiser steps of the whole run.
        batch_size: global batch size (split over DDP processes).
        log_every: steps between metric records (and loss-curve redraws).
        val_every: steps between validation passes (also run at the last step).
        checkpoint_every: steps between ``latest`` checkpoints.
        snapshot_every: steps between task snapshots (0 = never).
        grad_clip: max gradient norm (0 = no clipping; the norm is still logged).
        lr: peak learning rate (None = ``optim.lr``).
        optim: the stage's optimiser section (``cfg.pretrain.optim`` or ``cfg.finetune.optim``);
            the loop builds optimiser and scheduler from it and never looks elsewhere.
    """

    total_steps: int
    batch_size: int
    log_every: int = 50
    val_every: int = 1000
    checkpoint_every: int = 1000
    snapshot_every: int = 0
    grad_clip: float = 12.0
    lr: float | None = None
    optim: OptimConfig | None = None


class Task(ABC):
    """What a training run computes; :func:`train` does the rest.

    Subclasses set ``name`` and, if they validate, ``selection_metric`` (a key returned by
    :meth:`validate`) and ``selection_mode`` (``min`` or ``max``) that choose the ``best``
    checkpoint.
    """

    name: str = "task"
    selection_metric: str = "val_loss"
    selection_mode: str = "min"

    @property
    @abstractmethod
    def settings(self) -> LoopSettings:
        """Run length and intervals."""

    @abstractmethod
    def build_model(self, rt: Runtime) -> nn.Module:
        """A freshly initialised model on the CPU (the loop seeds before and moves it after)."""

    def param_groups(self, model: nn.Module) -> ParamsOrGroups:
        """What the optimiser updates (default: every trainable parameter, one group)."""
        return [p for p in model.parameters() if p.requires_grad]

    def unused_parameters(self, model: nn.Module) -> list[str]:
        """Names of ``model``'s parameters that :meth:`training_step` never uses (default none).

        DDP leaves them out of its gradient reduction (see
        :func:`toolkit.engine.runtime.prepare_model`); a parameter that gets no gradient but is not
        named here makes a distributed run fail at its second step.
        """
        return []

    def lr_lambdas(self, total_steps: int) -> LrLambda | Sequence[LrLambda] | None:
        """Per-group lr multipliers of the step (None = the ``optim`` schedule for all groups)."""
        return None

    @abstractmethod
    def train_batches(self, start_step: int, rt: Runtime) -> Iterator[Any]:
        """Batches of this process for steps ``start_step, start_step + 1, ...`` (CPU tensors)."""

    @abstractmethod
    def training_step(
        self, model: nn.Module, batch: Any, step: int, rt: Runtime
    ) -> dict[str, torch.Tensor]:
        """Forward pass of one step (runs under autocast); returns ``{"loss": scalar, ...}``.

        Other entries are logged as window means (detach them).
        """

    def validate(self, model: nn.Module, rt: Runtime) -> dict[str, float]:
        """Validation metrics (runs on the main process, eval mode, no grad, autocast)."""
        return {}

    def snapshot(self, model: nn.Module, rt: Runtime, step: int, out_dir: Path) -> None:  # noqa: B027 (optional hook)
        """Write figures/volumes of the current model to ``out_dir`` (main process, no grad)."""

    def plan(self) -> dict[str, Any] | None:
        """The preprocessing plan stored with the run (None if there is none)."""
        return None

    def model_state(self, model: nn.Module) -> dict[str, Any]:
        """Checkpoint entries of the (unwrapped) model; default ``{"model": state_dict}``."""
        return {"model": clean_state_dict(model.state_dict())}

    def load_model_state(self, model: nn.Module, checkpoint: Mapping[str, Any]) -> None:
        """Inverse of :meth:`model_state`, given the whole checkpoint dict."""
        model.load_state_dict(checkpoint["model"])

    def state_dict(self) -> dict[str, Any]:
        """The task's own resumable state (plain data); stateless tasks return ``{}``."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:  # noqa: B027 (optional hook)
        """Inverse of :meth:`state_dict`."""

    def close(self) -> None:  # noqa: B027 (optional hook)
        """Release data loaders and worker processes."""


@dataclass
class TrainResult:
    """What :func:`train` did.

    Attributes:
        run_dir: the run folder.
        status: ``completed``, ``stopped`` (STOP file or interrupt) or ``already_complete``.
        start_step: completed steps when this call started (0 for a fresh run).
        step: completed steps when it returned.
        total_steps: planned steps.
        losses: the training loss of every step run by this call (DDP: mean over processes).
        best_value: best validation value so far (None without validation).
        best_step: step of ``best_value``.
        last_metrics: the most recent validation metrics.
        checkpoint: the checkpoint written last (``latest`` or ``final``).
    """

    run_dir: Path
    status: str
    start_step: int
    step: int
    total_steps: int
    losses: list[float] = field(default_factory=list)
    best_value: float | None = None
    best_step: int | None = None
    last_metrics: dict[str, float] = field(default_factory=dict)
    checkpoint: Path | None = None


@dataclass
class TrainingState:
    """The model as called (possibly DDP/compiled), its plain module, and the optimisation state."""

    model: nn.Module
    module: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    params: list[nn.Parameter]


def build_training_state(task: Task, cfg: Config, rt: Runtime) -> TrainingState:
    """Seed, build the task's model, place/wrap it and create optimiser, scheduler and scaler."""
    seed_everything(rt.seed)
    module = task.build_model(rt)
    model = prepare_model(module, rt, unused=task.unused_parameters(module))
    module = unwrap_model(model)
    settings = task.settings
    if settings.optim is None:
        raise TypeError(f"{task.name}: LoopSettings.optim must name the stage's optimiser section")
    optimizer = build_optimizer(
        task.param_groups(module), settings.optim, lr=settings.lr, fused=rt.is_accelerator
    )
    scheduler = build_scheduler(
        optimizer,
        settings.optim,
        settings.total_steps,
        lr_lambdas=task.lr_lambdas(settings.total_steps),
    )
    params = [p for g in optimizer.param_groups for p in g["params"]]
    return TrainingState(model, module, optimizer, scheduler, rt.make_scaler(), params)


class _StopSignal:
    """First Ctrl-C / SIGINT asks for a clean stop at the end of the step; a second one aborts."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None
        self._installed = False

    def __enter__(self) -> _StopSignal:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True
        # Restore the previous handler so a second Ctrl-C interrupts immediately.
        signal.signal(signal.SIGINT, self._previous or signal.default_int_handler)

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous or signal.default_int_handler)


def _echo(rt: Runtime, message: str) -> None:
    if rt.is_main:
        from tqdm.auto import tqdm

        tqdm.write(message)


def _lr_values(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    groups = optimizer.param_groups
    if len(groups) == 1:
        return {"lr": float(groups[0]["lr"])}
    out = {}
    for i, g in enumerate(groups):
        out[f"lr_{g.get('name', i)}"] = float(g["lr"])
    out["lr"] = float(groups[0]["lr"])
    return out


def _is_check_step(completed: int, settings: LoopSettings, total: int) -> bool:
    """Steps after which the loop reads the step window: it logs, validates, saves or ends."""
    every = [settings.log_every, settings.val_every, settings.checkpoint_every]
    if settings.snapshot_every:
        every.append(settings.snapshot_every)
    return completed == total or any(completed % e == 0 for e in every)


def _better(value: float, best: float | None, mode: str) -> bool:
    if not math.isfinite(value):
        return False
    if best is None:
        return True
    return value < best if mode == "min" else value > best


def _write_run_files(run_dir: Path, cfg: Config, task: Task, rt: Runtime) -> None:
    save_config(cfg, run_dir / "config.yaml")
    plan = task.plan()
    if plan is not None:
        tmp = run_dir / "plan.json.tmp"
        tmp.write_text(json.dumps(plan, indent=1, default=str))
        tmp.replace(run_dir / "plan.json")
    info = {
        "toolkit_version": toolkit.__version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "task": task.name,
        "device": str(rt.device),
        "precision": rt.precision,
        "world_size": rt.world_size,
        "notes": list(rt.notes),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    tmp = run_dir / "run.json.tmp"
    tmp.write_text(json.dumps(info, indent=1))
    tmp.replace(run_dir / "run.json")


def _config_changes(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    changes = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        name = f"{prefix}{key}"
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            changes += _config_changes(a, b, name + ".")
        elif a != b:
            changes.append(f"{name}: {a!r} -> {b!r}")
    return changes


def _link_copy(src: Path, dst: Path) -> None:
    """Make ``dst`` a copy of ``src`` atomically (a hard link when the file system allows)."""
    tmp = dst.with_name(f".{dst.name}.link.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        import shutil

        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def train(
    task: Task,
    cfg: Config,
    run_dir: PathLike,
    *,
    resume: bool = False,
    runtime: Runtime | None = None,
    progress: bool = True,
) -> TrainResult:
    """Run (or resume) ``task`` to ``task.settings.total_steps`` optimiser steps.

    Args:
        task: what to train.
        cfg: the full config (saved in the run folder and every checkpoint; ``runtime`` is read
            here, the optimiser section comes from ``task.settings.optim``).
        run_dir: the run folder. A fresh run refuses a folder that already holds a checkpoint.
        resume: continue from ``RUN_DIR/checkpoints/latest.pt`` (exactly: same batches, masks,
            augmentation and updates as an uninterrupted run).
        runtime: an existing runtime (e.g. from a notebook); by default one is set up from
            ``cfg.runtime`` and torn down at the end.
        progress: show a tqdm progress bar (main process only).

    Returns:
        A :class:`TrainResult`.

    Raises:
        TrainingError: a non-finite loss (the message names the step and the last good
            checkpoint, which is kept), nothing to resume, or a fresh run into a used folder.
        DataError: the checkpoint to resume from is missing or corrupt.

    To stop a run cleanly, create ``RUN_DIR/STOP`` or press Ctrl-C once (interrupt the kernel in
    a notebook): the current step finishes, ``latest`` is saved, and ``resume=True`` continues.
    """
    run_dir = Path(run_dir)
    rt = runtime if runtime is not None else setup_runtime(cfg.runtime)
    settings = task.settings
    latest = checkpoint_path(run_dir, "latest")
    writer: MetricWriter | None = None
    try:
        if resume and not latest.is_file():
            raise TrainingError(f"{latest}: nothing to resume (no latest checkpoint in {run_dir})")
        if not resume and latest.is_file():
            raise TrainingError(
                f"{run_dir}: already holds a run ({latest.name}); resume it (--resume / "
                "resume=True) or choose another folder"
            )
        checkpoint = load_checkpoint(latest) if resume else None
        if checkpoint is not None:
            require_keys(checkpoint, ("step", "optimizer", "scheduler", "rng"), latest)
            saved, _ = migrate_config_dict(checkpoint.get("config", {}))
            changes = _config_changes(saved, cfg.to_dict())
            if changes:
                _echo(rt, "resuming with a changed config: " + "; ".join(changes))
        if rt.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / STOP_FILE).unlink(missing_ok=True)
            _write_run_files(run_dir, cfg, task, rt)
        _echo(rt, f"{task.name}: {rt.describe()}, {settings.total_steps} steps -> {run_dir}")
        for note in rt.notes:
            _echo(rt, f"note: {note}")
        barrier(rt)

        state = build_training_state(task, cfg, rt)
        start_step = 0
        best_value: float | None = None
        best_step: int | None = None
        last_metrics: dict[str, float] = {}
        # Per-step values since the last metric record: saved with every checkpoint, so a run
        # resumed between two log steps logs the same window means as an uninterrupted one.
        window: dict[str, list[float]] = {}
        window_time = 0.0
        if checkpoint is not None:
            task.load_model_state(state.module, checkpoint)
            state.optimizer.load_state_dict(checkpoint["optimizer"])
            state.scheduler.load_state_dict(checkpoint["scheduler"])
            state.scaler.load_state_dict(checkpoint.get("scaler") or {})
            task.load_state_dict(checkpoint.get("task_state") or {})
            start_step = int(checkpoint["step"])
            best = checkpoint.get("best") or {}
            best_value, best_step = best.get("value"), best.get("step")
            last_metrics = dict(checkpoint.get("metrics") or {})
            saved_window = checkpoint.get("log_window") or {}
            window = {
                str(k): [float(x) for x in v] for k, v in saved_window.get("values", {}).items()
            }
            window_time = float(saved_window.get("seconds", 0.0))
            set_rng_state(checkpoint["rng"], rt)
            del checkpoint
        total = settings.total_steps
        result = TrainResult(run_dir, "completed", start_step, start_step, total)
        if start_step >= total:
            result.status = "already_complete"
            result.checkpoint = checkpoint_path(run_dir, "final")
            return result

        writer = MetricWriter(
            run_dir, enabled=rt.is_main, resume_step=start_step if resume else None
        )

        saved_step: int | None = None

        def save(which: str, step: int, *, sync: bool = True) -> Path:
            nonlocal saved_step
            path = checkpoint_path(run_dir, which)
            if rt.is_main:
                payload: dict[str, Any] = {
                    "format": CHECKPOINT_FORMAT,
                    "format_version": CHECKPOINT_FORMAT_VERSION,
                    "toolkit_version": toolkit.__version__,
                    "task": task.name,
                    "step": step,
                    "total_steps": total,
                    "config": cfg.to_dict(),
                    "plan": task.plan() or {},
                    **task.model_state(state.module),
                    "optimizer": state.optimizer.state_dict(),
                    "scheduler": state.scheduler.state_dict(),
                    "scaler": state.scaler.state_dict(),
                    "rng": get_rng_state(rt),
                    "task_state": task.state_dict(),
                    "best": {
                        "metric": task.selection_metric,
                        "mode": task.selection_mode,
                        "value": best_value,
                        "step": best_step,
                    },
                    "metrics": dict(last_metrics),
                    "log_window": {
                        "values": {k: list(v) for k, v in window.items()},
                        "seconds": window_time,
                    },
                    "world_size": rt.world_size,
                }
                save_checkpoint(path, payload)
            if which != "best":
                saved_step = step
            if sync:
                barrier(rt)
            return path

        from tqdm.auto import tqdm

        bar = tqdm(
            total=total,
            initial=start_step,
            desc=task.name,
            unit="step",
            disable=not (progress and rt.is_main),
            dynamic_ncols=True,
        )
        last_good: Path | None = latest if latest.is_file() else None
        batches = prefetch_to_device(task.train_batches(start_step, rt), rt)
        completed = start_step
        # Steps stay on the device until a check step (see toolkit.engine.step).
        pending = StepWindow(start_step + 1, check_grad_norm=not state.scaler.is_enabled())
        phase = "idle"
        reset_peak_memory(rt)
        with _StopSignal() as stop_signal, contextlib.closing(bar):
            try:
                for step in range(start_step, total):
                    phase = "fetch"
                    tick = time.perf_counter()
                    try:
                        batch = next(batches)
                    except StopIteration:
                        raise TrainingError(
                            f"{task.name}: the batch iterator ended early, at step {step + 1} "
                            f"of {total}"
                        ) from None
                    except RuntimeError:
                        if stop_signal.requested:  # a data worker caught the same Ctrl-C
                            result.status = "stopped"
                            break
                        raise
                    phase = "update"
                    # Read before the step (a stop asked for during it is seen at the next one).
                    stop_here = stop_signal.requested or (run_dir / STOP_FILE).exists()
                    pending.add(
                        run_step(task, state, batch, step, rt, grad_clip=settings.grad_clip)
                    )
                    phase = "bookkeeping"
                    completed = step + 1
                    window_time += time.perf_counter() - tick
                    bar.update(1)
                    if not _is_check_step(completed, settings, total) and not (
                        stop_here and rt.world_size == 1
                    ):
                        continue
                    tick = time.perf_counter()
                    try:
                        values = pending.flush(rt, stop_requested=stop_here)
                    except NonFiniteError as exc:
                        where = (
                            f"last good checkpoint: {last_good}"
                            if last_good is not None
                            else "no checkpoint was written before it"
                        )
                        raise TrainingError(
                            f"{exc}; training stopped; {where}. Lower the stage's lr "
                            "(pretrain.optim.lr / finetune.optim.lr), use "
                            "runtime.precision=fp32 or check the data"
                        ) from None
                    window_time += time.perf_counter() - tick  # waiting for the device
                    result.losses.extend(values.losses)
                    window.setdefault("loss", []).extend(values.losses)
                    for k, v in values.extras.items():
                        window.setdefault(k, []).extend(v)

                    if completed % settings.log_every == 0 or completed == total:
                        n = len(window["loss"])
                        record = {k: float(np.mean(v)) for k, v in window.items()}
                        record.update(_lr_values(state.optimizer))
                        record["grad_norm"] = values.grad_norms[-1]
                        record["sec_per_step"] = window_time / n
                        record["samples_per_s"] = settings.batch_size * n / max(window_time, 1e-9)
                        record["peak_mem_gb"] = peak_memory_bytes(rt) / 1e9
                        writer.log(completed, record)
                        writer.save_loss_curve(force=completed == total)
                        bar.set_postfix(loss=f"{record['loss']:.4g}", lr=f"{record['lr']:.3g}")
                        window, window_time = {}, 0.0

                    if completed % settings.val_every == 0 or completed == total:
                        if rt.is_main:
                            metrics = _evaluate(task, state.module, rt)
                            if metrics:
                                last_metrics = metrics
                                writer.log(completed, metrics)
                                writer.save_loss_curve(force=True)
                                value = metrics.get(task.selection_metric)
                                if value is not None and _better(
                                    value, best_value, task.selection_mode
                                ):
                                    best_value, best_step = float(value), completed
                                    save("best", completed, sync=False)
                        barrier(rt)

                    if settings.snapshot_every and completed % settings.snapshot_every == 0:
                        if rt.is_main:
                            _snapshot(task, state.module, rt, completed, run_dir / SNAPSHOT_DIR)
                        barrier(rt)

                    if completed == total:
                        result.checkpoint = save("final", completed)
                        if rt.is_main:
                            _link_copy(result.checkpoint, latest)
                    elif values.stop_requested:
                        result.status = "stopped"
                        break
                    elif completed % settings.checkpoint_every == 0:
                        result.checkpoint = last_good = save("latest", completed)
                    phase = "idle"
            except KeyboardInterrupt:
                # Only reached when our SIGINT handler is not installed (training in a thread).
                # Parameters are consistent between steps; an interrupted update is not saved.
                if phase == "update":
                    raise
                result.status = "stopped"
            if result.status == "stopped":
                if len(pending):  # stopped between check steps: check before saving
                    try:
                        values = pending.flush(rt)
                    except NonFiniteError as exc:
                        raise TrainingError(f"{exc}; stopped without saving") from None
                    result.losses.extend(values.losses)
                    window.setdefault("loss", []).extend(values.losses)
                    for k, v in values.extras.items():
                        window.setdefault(k, []).extend(v)
                result.checkpoint = save("latest", completed) if saved_step != completed else latest
                if rt.is_main:
                    (run_dir / STOP_FILE).unlink(missing_ok=True)
                _echo(rt, f"stopped after step {completed}; continue with resume=True / --resume")
        result.step = completed
        result.best_value, result.best_step = best_value, best_step
        result.last_metrics = last_metrics
        writer.save_loss_curve(force=True)
        return result
    finally:
        task.close()
        if writer is not None:
            writer.close()
        if runtime is None:
            teardown(rt)


def _evaluate(task: Task, module: nn.Module, rt: Runtime) -> dict[str, float]:
    module.eval()
    try:
        with torch.no_grad(), rt.autocast():
            return {k: float(v) for k, v in task.validate(module, rt).items()}
    finally:
        module.train()


def _snapshot(task: Task, module: nn.Module, rt: Runtime, step: int, out_dir: Path) -> None:
    module.eval()
    try:
        with torch.no_grad(), rt.autocast():
            task.snapshot(module, rt, step, out_dir)
    finally:
        module.train()


__all__ = [
    "CHECKPOINT_FORMAT",
    "STOP_FILE",
    "LoopSettings",
    "NonFiniteError",
    "Task",
    "TrainResult",
    "TrainingState",
    "build_training_state",
    "run_step",
    "step_generator",
    "train",
]
