"""The in-fill sanity gate: has a pretraining run beaten the parameter-free in-fill baseline?

Every pretraining validation logs, next to ``val_loss`` (the MAE's masked reconstruction loss on
fixed validation crops and masks), ``infill_loss`` (the same loss of :func:`toolkit.infill.infill`
on the same crops and masks) and ``infill_margin = infill_loss - val_loss``. **Positive margin =
the MAE beats the in-fill**; zero or negative = it has learnt nothing a Gaussian blur of the
visible voxels could not do.

* :func:`infill_verdict` reads the verdict of a run folder (reports, notebooks, ``mae3d view``);
* :func:`score_infill` scores any pretraining checkpoint (or model) against the in-fill on given
  validation crops, without retraining (older runs, benchmarks);
* :func:`compare_with_infill` does it for one reconstruction already in hand (notebooks);
* :func:`verdict_line` turns any of them into the sentence ``mae3d pretrain`` ends with.

Example:
    >>> verdict_line({"val_loss": 0.391, "infill_loss": 0.417})
    'val_loss 0.391 vs in-fill 0.417: MAE beats in-fill by 0.026'
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from toolkit.errors import DataError

if TYPE_CHECKING:
    from toolkit.config import Config
    from toolkit.data.sampling import PatchSource
    from toolkit.models.mae import MAEModel

__all__ = [
    "INFILL_METRICS",
    "compare_with_infill",
    "infill_verdict",
    "score_infill",
    "verdict_line",
]

PathLike = str | os.PathLike[str]

#: Metrics every pretraining validation logs beside ``val_loss``.
INFILL_METRICS = ("infill_loss", "infill_margin")


def verdict_line(verdict: Mapping[str, Any]) -> str:
    """One sentence comparing ``val_loss`` with ``infill_loss`` (margin = in-fill - MAE).

    Args:
        verdict: a mapping with ``val_loss`` and ``infill_loss`` (from :func:`infill_verdict`,
            :func:`score_infill` or a ``metrics.jsonl`` record).
    """
    val, fill = float(verdict["val_loss"]), float(verdict["infill_loss"])
    margin = fill - val
    head = f"val_loss {val:.3g} vs in-fill {fill:.3g}: "
    if margin > 0:
        return head + f"MAE beats in-fill by {margin:.2g}"
    return head + f"MAE has NOT beaten in-fill yet (behind by {abs(margin):.2g})"


def infill_verdict(run_dir: PathLike) -> dict[str, Any]:
    """The in-fill verdict of a pretraining run folder, from its ``metrics.jsonl``.

    Args:
        run_dir: a pretraining run folder.

    Returns:
        ``{"step", "val_loss", "infill_loss", "infill_margin", "beats_infill", "best_step",
        "best_val_loss", "best_margin", "message"}``: the last validation (``step``,
        ``val_loss``, margin), the lowest ``val_loss`` (what ``best.pt`` holds) and its margin,
        ``beats_infill`` = last margin > 0, and ``message`` from :func:`verdict_line`.

    Raises:
        DataError: no metrics, or no validation that logged ``infill_loss`` (a run without
            held-out subjects, or one older than the gate: use :func:`score_infill`).
    """
    from toolkit.engine.logging import METRICS_JSONL, read_history

    run = Path(run_dir)
    history = read_history(run)
    if not history:
        raise DataError(f"{run / METRICS_JSONL}: no metrics (not a run folder, or not started)")
    rows = [
        r for r in history if r.get("val_loss") is not None and r.get("infill_loss") is not None
    ]
    if not rows:
        raise DataError(
            f"{run / METRICS_JSONL}: no validation with infill_loss (no held-out subjects, no "
            "validation yet, or a run older than the in-fill gate: use score_infill)"
        )
    last = rows[-1]
    best = min(rows, key=lambda r: float(r["val_loss"]))
    val, fill = float(last["val_loss"]), float(last["infill_loss"])
    return {
        "step": int(last["step"]),
        "val_loss": val,
        "infill_loss": fill,
        "infill_margin": fill - val,
        "beats_infill": fill - val > 0,
        "best_step": int(best["step"]),
        "best_val_loss": float(best["val_loss"]),
        "best_margin": float(best["infill_loss"]) - float(best["val_loss"]),
        "message": verdict_line(last),
    }


def score_infill(
    run: PathLike | MAEModel,
    *,
    cfg: Config | None = None,
    checkpoint: str = "best",
    cache: PathLike | None = None,
    source: PatchSource | None = None,
    val_ids: Sequence[str] | None = None,
    overrides: Sequence[str] | Mapping[str, Any] = (),
) -> dict[str, float]:
    """Score a pretraining checkpoint (or model) against the in-fill on fixed validation crops.

    The crops and masks are exactly those of the run's own validation (same config, seed and
    split), unless ``source`` / ``val_ids`` / ``overrides`` say otherwise, so the numbers match
    what the run logged and runs that predate the gate can be scored after the fact.

    Args:
        run: a pretraining run folder, a ``.pt`` checkpoint, or an :class:`MAEModel`.
        cfg: the config; default the one stored in the checkpoint (required for a model).
        checkpoint: for a run folder: ``best``, ``final`` or ``latest``.
        cache: the preprocessed cache to crop from; its held-out subjects are the validation
            cases. Default: the run's own cache, found as pretraining found it
            (:func:`toolkit.pretrain.resolve_pretrain_cache`: ``data.cache_dir``, or the
            manifest's cache next to the run folder, preprocessed first if missing); for a model,
            ``data.cache_dir``.
        source: a patch source instead of a cache (in-memory volumes).
        val_ids: the cases to crop (default: the cache's held-out subjects; required with
            ``source``).
        overrides: dotted config overrides, e.g. ``{"pretrain.val_batches": 16,
            "runtime.device": "cpu"}``.

    Returns:
        ``{"val_loss", "infill_loss", "infill_margin", "num_crops", "step"}`` (``step`` of the
        checkpoint, -1 for a model); margin positive = the MAE beats the in-fill.

    Raises:
        ConfigError, DataError: no config, no validation cases, or an unusable checkpoint/cache.
    """
    from torch import nn

    from toolkit.config import from_dict
    from toolkit.engine.checkpoint import checkpoint_path, load_checkpoint
    from toolkit.engine.runtime import setup_runtime, teardown
    from toolkit.errors import ConfigError
    from toolkit.models import build_mae
    from toolkit.pretrain import PretrainTask, make_pretrain_task, resolve_pretrain_cache

    state: dict[str, Any] | None = None
    run_dir: Path | None = None
    model: nn.Module
    if isinstance(run, nn.Module):
        if cfg is None:
            raise ConfigError("cfg: score_infill needs the config that built the model")
        model = run
    else:
        path = Path(run)
        if path.is_dir():
            run_dir, path = path, checkpoint_path(path, checkpoint)
        else:
            run_dir = path.parent.parent  # RUN_DIR/checkpoints/NAME.pt
        state = load_checkpoint(path)
        if cfg is None:
            if not isinstance(state.get("config"), Mapping):
                raise DataError(f"{path}: no config stored in the checkpoint; pass cfg")
            cfg = from_dict(state["config"], source=str(path))
    if overrides:
        cfg = cfg.replace(overrides)
    if source is not None:
        if not val_ids:
            raise ConfigError("val_ids: give the cases of the patch source to validate on")
        task = PretrainTask(cfg, source, list(val_ids), list(val_ids))
    else:
        if cache is not None:
            location: PathLike = cache
        elif run_dir is not None:
            location = resolve_pretrain_cache(cfg, run_dir)  # where the run itself read from
        elif cfg.data.cache_dir:
            location = cfg.data.cache_dir
        else:
            raise ConfigError("data.cache_dir: empty; pass cache= (a preprocessed cache)")
        task = make_pretrain_task(cfg, location)
        if val_ids is not None:
            task.val_ids = list(val_ids)
    if not task.val_ids:
        raise DataError("score_infill: no validation cases (data.val_fraction is 0?)")
    if state is not None:
        model = build_mae(cfg)
        task.load_model_state(model, state)
    rt = setup_runtime(cfg.runtime, init_distributed=False)
    try:
        model = model.to(rt.device)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), rt.autocast():
                metrics = task.validate(model, rt)
        finally:
            model.train(was_training)
    finally:
        teardown(rt)
    return {
        **metrics,
        "num_crops": float(cfg.pretrain.val_batches * cfg.pretrain.batch_size),
        "step": float(state.get("step", -1)) if state is not None else -1.0,
    }


def compare_with_infill(
    image: Any, mask: Any, reconstruction: Any, *, kind: str = "mse_masked"
) -> dict[str, float]:
    """The loss of one reconstruction and of the in-fill of the same image and mask.

    Args:
        image: the input, (D, H, W) or (B, C, D, H, W) array or tensor.
        mask: its full-resolution mask, (D, H, W) or (B, 1, D, H, W), 1 = visible.
        reconstruction: the MAE output, shaped like ``image``.
        kind: the reconstruction loss (``pretrain.loss``).

    Returns:
        ``{"val_loss", "infill_loss", "infill_margin"}`` (``val_loss`` is the MAE's loss here);
        margin positive = the MAE beats the in-fill.

    Example:
        >>> x = torch.zeros(4, 4, 4); m = torch.ones(4, 4, 4); m[:2] = 0
        >>> compare_with_infill(x, m, x + 1.0)["infill_margin"]
        -1.0
    """
    from toolkit.infill import infill_loss
    from toolkit.losses import reconstruction_loss

    def as5d(a: Any) -> torch.Tensor:
        t = torch.as_tensor(a).float()
        return t[None, None] if t.ndim == 3 else t

    x, m, rec = as5d(image), as5d(mask), as5d(reconstruction)
    val = float(reconstruction_loss(rec, x, m, kind))
    fill = float(infill_loss(x, m, kind=kind))
    return {"val_loss": val, "infill_loss": fill, "infill_margin": fill - val}
