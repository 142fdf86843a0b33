"""What one run of a sweep does, wherever it runs: pretrain, or fine-tune and evaluate.

:func:`attempt_run` is the unit every executor launches (in this process, in a local subprocess
or in a SLURM job): one attempt of one run, recorded as a line of ``attempts.jsonl`` and, when it
succeeds, ``done.json``. It is a plain module-level function of picklable arguments, so submitit
can ship it to another process. :func:`execute_run` is the default work of an attempt;
:func:`prepare_data` and :func:`prepare_caches` run once in the sweep's own process before any run
is launched, so parallel runs never write the same data set or cache.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from toolkit.errors import ConfigError, TrainingError
from toolkit.sweep.layout import DONE_FILE, EVAL_DIR, append_attempt, read_attempts, write_atomic
from toolkit.sweep.plan import Run, SweepPlan

PathLike = str | os.PathLike[str]


class RunStopped(TrainingError):
    """A run returned before its last step (a STOP file): the sweep stops and can be resumed."""


#: ``executor(plan, run) -> info``: trains (and for fine-tuning evaluates) one run in
#: ``plan.run_dir(run)``; ``info`` may hold ``train_time_s``, ``eval_time_s``, ``num_params``.
RunExecutor = Callable[[SweepPlan, Run], Mapping[str, Any]]


def count_checkpoint_parameters(path: PathLike) -> int:
    """Number of weights in a checkpoint's network entries (``model`` or ``network_weights``).

    Tensors that share storage are counted once: dynamic-network-architectures registers each
    conv and norm under two names (``convs.0.conv`` and ``convs.0.all_modules.0``).
    """
    from toolkit.engine.checkpoint import load_checkpoint

    state = load_checkpoint(path)
    keys = ("model",) if "model" in state else ("network_weights", "extra_weights")
    seen: set[tuple[int, int, tuple[int, ...]]] = set()
    total = 0
    for key in keys:
        for tensor in (state.get(key) or {}).values():
            ident = (
                tensor.untyped_storage().data_ptr(),
                tensor.storage_offset(),
                tuple(tensor.shape),
            )
            if ident not in seen:
                seen.add(ident)
                total += int(tensor.numel())
    return total


def execute_run(plan: SweepPlan, run: Run, *, progress: bool = False) -> dict[str, Any]:
    """Run one sweep run with the toolkit: pretrain, or fine-tune and evaluate.

    An interrupted run continues from its ``latest`` checkpoint; a fine-tuning run whose training
    finished is only evaluated again. Evaluation writes
    ``RUN_DIR/evaluation/metrics.csv`` (one row per case x label).

    Returns:
        ``{"prep_time_s", "train_time_s", "eval_time_s", "num_params"}``: wall times of the
        preprocessing, training and evaluation calls of this attempt, and the weights of the
        trained network (pretraining: plus the S3D / token weights).

    Raises:
        RunStopped: training returned before its last step (``RUN_DIR/STOP``).
    """
    from toolkit.engine.checkpoint import checkpoint_path

    run_dir = plan.run_dir(run)
    final = checkpoint_path(run_dir, "final")
    resume = checkpoint_path(run_dir, "latest").is_file()
    info: dict[str, Any] = {"prep_time_s": 0.0, "train_time_s": 0.0, "eval_time_s": 0.0}
    if run.kind == "pretrain":
        from toolkit.pretrain import pretrain, resolve_pretrain_cache

        tick = time.perf_counter()
        resolve_pretrain_cache(run.config, run_dir)
        info["prep_time_s"] = time.perf_counter() - tick
        tick = time.perf_counter()
        pretrain(run.config, run_dir, resume=resume, progress=progress)
        info["train_time_s"] = time.perf_counter() - tick
        if not final.is_file():
            raise RunStopped(f"{run_dir}: pretraining stopped before its last step")
        info["num_params"] = count_checkpoint_parameters(final)
        return info

    from toolkit.evaluate import evaluate
    from toolkit.finetune import finetune, resolve_finetune_cache

    if not final.is_file():
        pretrained = plan.pretrained_checkpoint(run)
        tick = time.perf_counter()
        resolve_finetune_cache(run.config, run_dir)
        info["prep_time_s"] = time.perf_counter() - tick
        tick = time.perf_counter()
        finetune(run.config, run_dir, pretrained=pretrained, resume=resume, progress=progress)
        info["train_time_s"] = time.perf_counter() - tick
        if not final.is_file():
            raise RunStopped(f"{run_dir}: fine-tuning stopped before its last step")
    assert run.manifest is not None
    tick = time.perf_counter()
    evaluate(
        run_dir,
        run.manifest,
        split=run.split,
        run_name=run.name,
        out_dir=run_dir / EVAL_DIR,
        write_predictions=False,
        progress=progress,
    )
    info["eval_time_s"] = time.perf_counter() - tick
    info["num_params"] = count_checkpoint_parameters(final)
    return info


def prepare_data(plan: SweepPlan, *, progress: bool = True) -> None:
    """Write the spec's synthetic data sets into ``SWEEP_DIR/data`` (once; reused afterwards).

    Raises:
        ConfigError: a folder holds a synthetic set drawn with other settings.
    """
    from toolkit.data.synthetic import write_synthetic_dataset

    sets = [d.synthetic for d in plan.spec.datasets if d.synthetic is not None]
    if plan.spec.pretrain_data is not None and plan.spec.pretrain_data.synthetic is not None:
        sets.insert(0, plan.spec.pretrain_data.synthetic)
    for synth in sets:
        folder = synth.folder(plan.out_dir)
        settings = dataclasses.asdict(synth)
        marker = folder / "synthetic.json"
        manifest = folder / ("pretrain.yaml" if synth.subjects else "labelled.yaml")
        if marker.is_file() and manifest.is_file():
            if json.loads(marker.read_text()) != settings:
                raise ConfigError(
                    f"{folder}: holds a synthetic set with other settings than the spec "
                    f"({marker}); rename the data set or delete the folder"
                )
            continue
        write_synthetic_dataset(
            folder,
            synth.subjects,
            synth.labelled,
            synth.seed,
            lesions=synth.lesions,
            spacing_mm=synth.spacing_mm,
            test_fraction=synth.test_fraction,
            name=synth.name,
            progress=progress,
        )
        write_atomic(marker, json.dumps(settings, indent=1))


def prepare_caches(plan: SweepPlan, runs: Sequence[Run], *, progress: bool = True) -> None:
    """Preprocess every cache the given runs read, once each, before they are launched.

    Runs launched in parallel would otherwise start preprocessing the same cache at the same
    time (the second one is refused by the cache lock). A complete cache is left untouched.
    """
    from toolkit.finetune import resolve_finetune_cache
    from toolkit.pretrain import resolve_pretrain_cache

    seen: set[str] = set()
    for run in runs:
        key = json.dumps([run.kind, run.config.to_dict()["data"]], sort_keys=True, default=str)
        if key in seen:
            continue
        seen.add(key)
        if progress:
            print(f"sweep: preparing the {run.kind} cache of {run.name}", flush=True)
        if run.kind == "pretrain":
            resolve_pretrain_cache(run.config, plan.run_dir(run))
        else:
            resolve_finetune_cache(run.config, plan.run_dir(run))


def _error_text(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return " ".join(text.split())[:500]


def attempt_run(plan: SweepPlan, run: Run, run_one: RunExecutor, number: int) -> str:
    """One attempt of one run: ``run_one(plan, run)``, recorded in the run folder.

    Appends a line to ``attempts.jsonl`` (``attempt``, ``started``, ``host``, ``pid``,
    ``outcome``, ``wall_s`` and, for a failure, ``error`` and ``traceback``) and, on success,
    writes ``done.json`` with the info ``run_one`` returned. An exception is recorded, not raised,
    except Ctrl-C (recorded as ``interrupted``, then raised).

    Args:
        plan: the expanded sweep.
        run: the run.
        run_one: does the work (default :func:`execute_run`).
        number: the attempt number (1 for the first attempt ever of this run).

    Returns:
        ``ok``, ``failed`` or ``stopped`` (returned before its last step: a STOP file).
    """
    run_dir = plan.run_dir(run)
    tick = time.perf_counter()
    record: dict[str, Any] = {
        "attempt": number,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }
    try:
        info = dict(run_one(plan, run))
    except RunStopped as exc:
        record.update(outcome="stopped", wall_s=time.perf_counter() - tick, error=str(exc))
        append_attempt(run_dir, record)
        return "stopped"
    except KeyboardInterrupt:
        record.update(outcome="interrupted", wall_s=time.perf_counter() - tick)
        append_attempt(run_dir, record)
        raise
    except Exception as exc:
        record.update(
            outcome="failed",
            wall_s=time.perf_counter() - tick,
            error=_error_text(exc),
            traceback=traceback.format_exc(limit=8),
        )
        append_attempt(run_dir, record)
        return "failed"
    record.update(outcome="ok", wall_s=time.perf_counter() - tick)
    append_attempt(run_dir, record)
    attempts = read_attempts(run_dir)
    done = {
        "run": run.name,
        "kind": run.kind,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "attempts": len(attempts),
        "wall_s": sum(float(a.get("wall_s", 0.0)) for a in attempts),
        **info,
    }
    write_atomic(run_dir / DONE_FILE, json.dumps(done, indent=1))
    return "ok"


__all__ = [
    "RunExecutor",
    "RunStopped",
    "attempt_run",
    "count_checkpoint_parameters",
    "execute_run",
    "prepare_caches",
    "prepare_data",
]
