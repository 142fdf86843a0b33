"""Fine-tuning for segmentation: :class:`FinetuneTask` on the shared engine, and :func:`finetune`.

One step (per process, for its rows of the global batch):

1. labelled ``data.patch_size`` crops from the cache, ``finetune.foreground_fraction`` of each batch
   centred on a foreground voxel (:class:`toolkit.data.sampling.RandomPatchDataset`, nnU-Net's
   rule);
2. on the device, with ``finetune.augment``: nnU-Net's spatial augmentation (rotation ±30° and
   scale 0.7-1.4 with p 0.2 each, mirroring; labels nearest neighbour, see
   :mod:`toolkit.data.augment`) and light intensity augmentation (:func:`intensity_augment`),
   both drawn from generators seeded by ``(seed, step)``;
3. Dice + CE (MONAI, nnU-Net settings; deep supervision with ``model.deep_supervision``).

Learning rate: peak ``finetune.optim.lr`` with ``finetune.schedule`` when starting from
pretrained weights, ``finetune.optim.lr_scratch`` with ``finetune.schedule_scratch`` otherwise
(paper: 1e-3 sawtooth vs 1e-2 plain poly); the rest of the optimiser is ``finetune.optim``, its
own section, whatever pretraining used. Networks start from ``model.init`` for fine-tuning
(``auto``: nnU-Net's initialisation). The encoder (stem + stages) and the decoder are two parameter
groups with their own multipliers (:func:`toolkit.engine.schedules.finetune_lr_lambdas`). While the
encoder's multiplier is 0 (sawtooth's decoder-only phase, ``frozen_encoder``) its parameters are
also taken out of autograd, so they get no gradient, no momentum and no weight decay and the
whole-net phase starts from fresh momentum, as nnssl's fine-tuning does by rebuilding the
optimiser; under DDP (which needs a fixed set of trainable parameters) they keep lr 0 only.

Validation: Gaussian sliding-window prediction over each held-out *whole* volume of the cache
(subject-level hold-out of the training split, or the manifest's ``val`` split), argmax, Dice per
foreground label; the mean over labels and cases (``val_dice``) selects ``best``. Without held-out
cases ``best`` is a copy of ``final``.

Example:
    >>> from toolkit.config import load_config
    >>> cfg = load_config("tiny", {"data.finetune_manifest": "data/demo.yaml"})  # doctest: +SKIP
    >>> finetune(cfg, "runs/ft", pretrained=Path("runs/mae/checkpoints/final.pt"))  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from toolkit.config import Config
from toolkit.data.augment import SpatialAugmentation, apply_transforms, draw_transforms
from toolkit.data.preprocess import ensure_cache
from toolkit.data.sampling import (
    TRAIN_STREAM,
    PatchSource,
    RandomPatchDataset,
    StepBatchSampler,
    make_loader,
    split_by_subject,
)
from toolkit.engine.checkpoint import checkpoint_path
from toolkit.engine.loop import LoopSettings, Task, step_generator, train
from toolkit.engine.runtime import Runtime, barrier, setup_runtime, teardown
from toolkit.engine.schedules import LrLambda, ParamsOrGroups, finetune_lr_lambdas
from toolkit.errors import ConfigError, DataError
from toolkit.transfer import (
    PretrainedWeights,
    TransferReport,
    config_for_source,
    load_pretrained,
    read_pretrained,
)

PathLike = str | os.PathLike[str]

#: ``step_generator`` streams of the fine-tuning task.
AUGMENT_STREAM, INTENSITY_STREAM = 11, 12
#: Where :func:`finetune` preprocesses a manifest when ``data.cache_dir`` is empty.
DEFAULT_CACHE_DIR = "cache"
TRANSFER_REPORT_TXT = "transfer_report.txt"
TRANSFER_REPORT_JSON = "transfer_report.json"
#: The held-out subjects must not move with ``runtime.seed``: runs of different seeds (label
#: efficiency) then select their checkpoints on the same cases.
SPLIT_SEED = 0
#: Schedules that treat encoder and decoder differently (need an encoder/decoder split).
GROUPED_SCHEDULES = ("sawtooth", "frozen_encoder")


# --------------------------------------------------------------------------------------------------
# Intensity augmentation


def intensity_augment(
    x: torch.Tensor,
    generator: torch.Generator,
    rows: torch.Tensor,
    batch_size: int,
    *,
    prob: float = 0.15,
) -> torch.Tensor:
    """Light intensity augmentation (nnU-Net style), per sample, in place of nothing else.

    Each sample independently gets, with probability ``prob`` each: a brightness factor
    U[0.75, 1.25], a contrast factor U[0.75, 1.25] about its mean (clipped to its original range)
    and Gaussian noise with sigma U[0, 0.1]. Draws are made for the whole global batch from
    ``generator`` and the rows of this process are kept, so any number of processes sees the same
    augmentation.

    Args:
        x: (B_local, C, D, H, W) float32 images (z-scored).
        generator: CPU generator of this step.
        rows: (B_local,) rows of the global batch held by this process.
        batch_size: global batch size.
        prob: probability of each of the three transforms.

    Returns:
        The augmented (B_local, C, D, H, W) tensor.
    """
    # Every decision is drawn and made on the CPU; only the factors travel to the device.
    u = torch.rand(batch_size, 6, generator=generator)[rows.cpu()]
    noise_seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    view = (-1, *([1] * (x.dim() - 1)))
    bright = torch.where(u[:, 0] < prob, 0.75 + 0.5 * u[:, 1], torch.ones_like(u[:, 1]))
    x = x * bright.to(x.device).view(view)
    contrast = torch.where(u[:, 2] < prob, 0.75 + 0.5 * u[:, 3], torch.ones_like(u[:, 3]))
    contrast = contrast.to(x.device)
    dims = tuple(range(1, x.dim()))
    mean = x.mean(dim=dims, keepdim=True)
    lo, hi = x.amin(dim=dims, keepdim=True), x.amax(dim=dims, keepdim=True)
    x = torch.minimum(torch.maximum((x - mean) * contrast.view(view) + mean, lo), hi)
    sigma = torch.where(u[:, 4] < prob, 0.1 * u[:, 5], torch.zeros_like(u[:, 5]))
    noisy = [i for i in range(x.shape[0]) if float(sigma[i]) > 0]
    if noisy:
        x = x.clone()
        for i in noisy:
            # One generator per global row: the same noise whichever process holds the row.
            g = torch.Generator().manual_seed(noise_seed + int(rows[i]))
            x[i] += float(sigma[i]) * torch.randn(x.shape[1:], generator=g).to(x.device)
    return x


# --------------------------------------------------------------------------------------------------
# Validation Dice


def dice_per_label(
    pred: np.ndarray, ref: np.ndarray, label_values: Sequence[int]
) -> dict[int, float]:
    """Hard Dice per label value (both empty = 1, one empty = 0; see :mod:`toolkit.evaluate`).

    Args:
        pred: (D, H, W) integer label map.
        ref: (D, H, W) integer label map.
        label_values: values to score.
    """
    out = {}
    for v in label_values:
        p, r = pred == v, ref == v
        denom = int(p.sum()) + int(r.sum())
        out[int(v)] = 1.0 if denom == 0 else 2.0 * int((p & r).sum()) / denom
    return out


# --------------------------------------------------------------------------------------------------
# The task


def encoder_parameter_names(network: nn.Module) -> set[str]:
    """Names of the encoder's (stem + stages) parameters, or empty for networks without a split."""
    if not hasattr(network, "encoder"):
        return set()
    return {n for n, _ in network.named_parameters() if n.startswith("encoder.")}


class FinetuneTask(Task):
    """Segmentation fine-tuning on a labelled patch source.

    Args:
        cfg: the full config.
        source: labelled patches (a cache, or in-memory volumes in tests and notebooks).
        train_ids: training cases.
        val_ids: held-out cases for validation Dice (empty = no ``best`` selection).
        num_classes: output classes including background.
        pretrained: weights to start from (None = from scratch).
        load_weights: copy ``pretrained`` into the fresh network (False on resume: the checkpoint
            holds the weights; the pretrained lr and schedule still apply).
        plan: preprocessing plan stored with the run (default: ``source.plan`` if any).
        report_dir: where the transfer report is written (main process).
    """

    name = "finetune"
    selection_metric = "val_dice"
    selection_mode = "max"

    def __init__(
        self,
        cfg: Config,
        source: PatchSource,
        train_ids: Sequence[str],
        val_ids: Sequence[str] = (),
        *,
        num_classes: int,
        pretrained: PretrainedWeights | None = None,
        load_weights: bool = True,
        plan: Mapping[str, Any] | None = None,
        report_dir: Path | None = None,
    ) -> None:
        if not train_ids:
            raise DataError("fine-tuning: no labelled training cases")
        if source.labels is None:
            raise DataError("fine-tuning: the data has no labels")
        self.cfg = cfg
        self.source = source
        self.train_ids = list(train_ids)
        self.val_ids = list(val_ids)
        self.num_classes = int(num_classes)
        self.pretrained = pretrained
        self.load_weights = load_weights
        self._plan = dict(plan) if plan is not None else getattr(source, "plan", None)
        self.report_dir = report_dir
        self.transfer_report: TransferReport | None = None
        ft = cfg.finetune
        self.schedule = ft.schedule if pretrained is not None else ft.schedule_scratch
        self.peak_lr = ft.optim.lr if pretrained is not None else ft.optim.lr_scratch
        self.label_values = [v for v in sorted(source.labels) if v != 0]
        self.spatial = SpatialAugmentation(enabled=ft.augment)
        self.seed = cfg.runtime.seed
        self._encoder_lr, self._decoder_lr = finetune_lr_lambdas(
            self.schedule,
            ft.steps,
            warmup_fraction=ft.warmup_fraction,
            decoder_warmup_fraction=ft.decoder_warmup_fraction,
            poly_exponent=ft.optim.poly_exponent,
        )
        self._grouped = False
        self._encoder_trainable: bool | None = None
        self._loader: Any = None
        from toolkit.losses import segmentation_loss

        self.loss = segmentation_loss(self.num_classes)

    @property
    def settings(self) -> LoopSettings:
        ft = self.cfg.finetune
        return LoopSettings(
            total_steps=ft.steps,
            batch_size=ft.batch_size,
            log_every=ft.log_every,
            val_every=ft.val_every,
            checkpoint_every=ft.checkpoint_every,
            snapshot_every=0,
            grad_clip=ft.optim.grad_clip,
            lr=self.peak_lr,
            optim=ft.optim,
        )

    def plan(self) -> dict[str, Any] | None:
        return self._plan

    def unused_parameters(self, model: nn.Module) -> list[str]:
        from toolkit.models.resenc import unused_parameter_names

        return unused_parameter_names(model)

    def build_model(self, rt: Runtime) -> nn.Module:
        from toolkit.models import build_segmentation_model

        network = build_segmentation_model(self.cfg, self.num_classes)
        if self.pretrained is not None and self.load_weights:
            report = load_pretrained(
                network, self.pretrained, self.cfg, num_classes=self.num_classes
            )
            self.transfer_report = report
            if rt.is_main:
                self._write_report(report)
        return network

    def _write_report(self, report: TransferReport) -> None:
        from tqdm.auto import tqdm

        tqdm.write(report.format())
        if self.report_dir is not None:
            self.report_dir.mkdir(parents=True, exist_ok=True)
            for name, text in (
                (TRANSFER_REPORT_TXT, report.format(max_keys=10**6) + "\n"),
                (TRANSFER_REPORT_JSON, json.dumps(report.to_dict(), indent=1)),
            ):
                tmp = self.report_dir / (name + ".tmp")
                tmp.write_text(text)
                tmp.replace(self.report_dir / name)

    def param_groups(self, model: nn.Module) -> ParamsOrGroups:
        enc_names = encoder_parameter_names(model)
        if not enc_names:
            if self.schedule in GROUPED_SCHEDULES:
                raise ConfigError(
                    f"finetune.schedule: {self.schedule} needs an encoder/decoder split, which "
                    f"{self.cfg.model.name} does not have; use warmup_poly or none"
                )
            return [p for p in model.parameters() if p.requires_grad]
        self._grouped = True
        encoder: list[nn.Parameter] = []
        decoder: list[nn.Parameter] = []
        for name, p in model.named_parameters():
            (encoder if name in enc_names else decoder).append(p)
        return [{"params": encoder, "name": "encoder"}, {"params": decoder, "name": "decoder"}]

    def lr_lambdas(self, total_steps: int) -> LrLambda | Sequence[LrLambda] | None:
        if self._grouped:
            return [self._encoder_lr, self._decoder_lr]
        return self._decoder_lr

    # ---------------------------------------------------------------------------------------------
    # Data

    def train_batches(self, start_step: int, rt: Runtime) -> Iterator[Any]:
        ft = self.cfg.finetune
        dataset = RandomPatchDataset(
            self.source,
            self.train_ids,
            self.cfg.data.patch_size,
            seed=self.seed,
            stream=TRAIN_STREAM,
            with_label=True,
            foreground_fraction=ft.foreground_fraction,
            batch_size=ft.batch_size,
        )
        sampler = StepBatchSampler(
            start_step, ft.steps, ft.batch_size, rank=rt.rank, world_size=rt.world_size
        )
        self._loader = make_loader(
            dataset,
            sampler,
            num_workers=rt.loader_workers(self.cfg.data.num_workers),
            pin_memory=rt.pin_memory,
        )
        return iter(self._loader)

    def close(self) -> None:
        self._loader = None

    # ---------------------------------------------------------------------------------------------
    # One step

    def _set_encoder_trainable(self, model: nn.Module, trainable: bool, rt: Runtime) -> None:
        if rt.distributed or trainable == self._encoder_trainable:
            return
        from toolkit.engine.runtime import unwrap_model

        module = unwrap_model(model)
        for name, p in module.named_parameters():
            if name.startswith("encoder."):
                p.requires_grad_(trainable)
        self._encoder_trainable = trainable

    def augment(
        self, x: torch.Tensor, y: torch.Tensor, step: int, rows: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Spatial (image + label) and intensity augmentation of this process's rows."""
        if not self.cfg.finetune.augment:
            return x, y
        batch = self.cfg.finetune.batch_size
        transforms = draw_transforms(
            batch, step_generator(self.seed, step, AUGMENT_STREAM), self.spatial
        )
        x, y = apply_transforms(x, transforms.select(rows.cpu()), label=y)
        x = intensity_augment(x, step_generator(self.seed, step, INTENSITY_STREAM), rows, batch)
        return x, y

    def training_step(
        self, model: nn.Module, batch: Any, step: int, rt: Runtime
    ) -> dict[str, torch.Tensor]:
        if self._grouped:
            self._set_encoder_trainable(model, self._encoder_lr(step) > 0, rt)
        rows = batch["index"] - step * self.cfg.finetune.batch_size
        x = rt.to_device(batch["image"]).float()
        y = rt.to_device(batch["label"])
        with torch.autocast(device_type=x.device.type, enabled=False):
            x, y = self.augment(x, y, step, rows)
        logits = model(x)
        loss = self.loss(logits, y.long())
        return {"loss": loss}

    # ---------------------------------------------------------------------------------------------
    # Validation

    def validate(self, model: nn.Module, rt: Runtime) -> dict[str, float]:
        if not self.val_ids:
            return {}
        from toolkit.inference import segment_volume

        scores: dict[int, list[float]] = {v: [] for v in self.label_values}
        # Mirror TTA would multiply validation time by 8 for a checkpoint choice.
        cfg = self.cfg.replace({"evaluate.mirror_tta": False})
        for case_id in self.val_ids:
            shape = self.source.shape(case_id)
            image, label = self.source.read_patch(case_id, (0, 0, 0), shape)
            assert label is not None
            pred = segment_volume(model, image, cfg, device=rt.device)
            for v, d in dice_per_label(pred, label, self.label_values).items():
                scores[v].append(d)
        names = self.source.labels or {}
        metrics = {f"val_dice_{names.get(v, v)}": float(np.mean(s)) for v, s in scores.items()}
        metrics["val_dice"] = float(np.mean([np.mean(s) for s in scores.values()]))
        return metrics

    # ---------------------------------------------------------------------------------------------
    # Resumable state

    def state_dict(self) -> dict[str, Any]:
        labels = self.source.labels or {}
        return {
            "num_classes": self.num_classes,
            "labels": {int(k): str(v) for k, v in labels.items()},
            "pretrained": None if self.pretrained is None else str(self.pretrained.path),
            "schedule": self.schedule,
            "peak_lr": self.peak_lr,
            "train_ids": list(self.train_ids),
            "val_ids": list(self.val_ids),
        }


# --------------------------------------------------------------------------------------------------
# Front door


def resolve_finetune_cache(cfg: Config, run_dir: PathLike, rt: Runtime | None = None) -> Path:
    """The labelled cache to fine-tune from, preprocessing ``data.finetune_manifest`` if needed.

    * ``data.cache_dir`` holding a labelled ``plan.json`` is used as is;
    * otherwise the cache is ``data.cache_dir/<manifest name>`` or, with ``data.cache_dir`` empty,
      ``RUN_DIR/../cache/<manifest name>`` (the layout :func:`toolkit.pretrain.pretrain` uses), and
      it is written or completed first.

    Raises:
        ConfigError: neither a labelled cache nor a manifest is configured.
    """
    cache_dir = cfg.data.cache_dir
    plan_file = Path(cache_dir) / "plan.json" if cache_dir else None
    if plan_file is not None and plan_file.is_file():
        try:
            labelled = json.loads(plan_file.read_text()).get("labels") is not None
        except (OSError, ValueError):
            labelled = False
        if labelled:
            return Path(cache_dir)
    manifest = cfg.data.finetune_manifest
    if not manifest:
        raise ConfigError(
            "data.finetune_manifest: set it to a labelled manifest (or data.cache_dir to a "
            "labelled cache)"
        )
    from toolkit.data.manifest import load_manifest

    m = load_manifest(manifest)
    if not m.is_labelled:
        raise DataError(f"{manifest}: fine-tuning needs a labelled manifest (no 'labels')")
    root = Path(cache_dir) if cache_dir else Path(run_dir).resolve().parent / DEFAULT_CACHE_DIR
    target = root / m.name
    if rt is None or rt.is_main:
        ensure_cache(
            m,
            target,
            target_spacing_mm=cfg.data.target_spacing_mm,
            image_order=cfg.data.image_order,
            workers=cfg.data.num_workers,
            brain_extraction=cfg.data.brain_extraction,
        )
    if rt is not None:
        barrier(rt)
    return target


def select_training_cases(
    case_ids: Sequence[str], subject_of: Any, num_cases: int, subset_seed: int
) -> list[str]:
    """The first ``num_cases`` cases, or those of ``num_cases`` random subjects (``subset_seed``).

    Args:
        case_ids: training cases in manifest order.
        subject_of: case id -> subject id.
        num_cases: k (0 = all).
        subset_seed: -1 = manifest order; otherwise the seed of a random subject subset.
    """
    if num_cases <= 0 or num_cases >= len(case_ids):
        return list(case_ids)
    if subset_seed < 0:
        return list(case_ids[:num_cases])
    subjects = sorted({subject_of(c) for c in case_ids})
    rng = np.random.default_rng([int(subset_seed), 7])
    order = [subjects[i] for i in rng.permutation(len(subjects))]
    chosen: list[str] = []
    for subject in order:
        chosen += [c for c in case_ids if subject_of(c) == subject and c not in chosen]
        if len(chosen) >= num_cases:
            break
    keep = set(chosen[:num_cases])
    return [c for c in case_ids if c in keep]


def make_finetune_task(
    cfg: Config,
    cache_path: PathLike,
    pretrained: PretrainedWeights | None,
    *,
    load_weights: bool = True,
    report_dir: Path | None = None,
) -> FinetuneTask:
    """Open the labelled cache, split it (test cases left out) and build the task."""
    from toolkit.data.cache import open_cache

    cache = open_cache(cache_path)
    if cache.labels is None:
        raise DataError(f"{cache_path}: not a labelled cache")
    if len(cache.channels) != cfg.model.in_channels:
        raise ConfigError(
            f"model.in_channels: {cfg.model.in_channels} but the cache {cache_path} has "
            f"{len(cache.channels)} channel(s) ({', '.join(cache.channels)})"
        )
    pool = [c for c in cache.case_ids if cache.split(c) != "test" and cache.is_labelled(c)]
    if not pool:
        raise DataError(f"{cache_path}: no labelled cases outside the test split")
    train_ids, val_ids = split_by_subject(
        pool, cache.subject, cfg.data.val_fraction, seed=SPLIT_SEED, split_of=cache.split
    )
    train_ids = select_training_cases(
        train_ids, cache.subject, cfg.finetune.num_train_cases, cfg.finetune.train_subset_seed
    )
    num_classes = max(cache.labels) + 1
    return FinetuneTask(
        cfg,
        cache,
        train_ids,
        val_ids,
        num_classes=num_classes,
        pretrained=pretrained,
        load_weights=load_weights,
        plan=cache.plan,
        report_dir=report_dir,
    )


def finetune(
    cfg: Config,
    out_dir: PathLike,
    *,
    pretrained: Path | None,
    resume: bool = False,
    progress: bool = True,
) -> Path:
    """Fine-tune a segmentation network; the Python front door of ``mae3d finetune``.

    Args:
        cfg: the config; ``data.finetune_manifest`` (labelled, with optional train/val/test splits)
            or ``data.cache_dir`` (a labelled cache) says where data comes from.
        out_dir: the run folder.
        pretrained: pretraining checkpoint (toolkit, nnssl or nnU-Net ``network_weights``) or None
            for training from scratch. An nnssl checkpoint's adaptation plan names the network:
            ``model.name`` is set to the registered model that builds it (one line says so; see
            :func:`toolkit.transfer.config_for_source`).
        resume: continue the run in ``out_dir`` (a run killed before its first checkpoint starts
            again from step 0, from ``pretrained``).
        progress: show a progress bar.

    Returns:
        ``out_dir``; weights in ``out_dir/checkpoints/{best,final}.pt``, the transfer report in
        ``out_dir/transfer_report.{txt,json}``.

    Raises:
        ConfigError, DataError: bad settings or data; TrainingError: the pretrained weights do not
        fit (the message is the transfer report), a non-finite loss, or a bad resume;
        StorageError: ``out_dir`` cannot be written (checked before any work); DiskFullError: a
        checkpoint did not fit on the disk (the earlier ones are intact).
    """
    from toolkit.engine.run_folder import claim_run_folder

    out = Path(out_dir)
    # Before any work (reading weights, preprocessing): a read-only or used folder is refused now.
    resume = claim_run_folder(out, resume=resume)
    source = read_pretrained(pretrained) if pretrained is not None else None
    architecture_note = None
    if source is not None:
        # An nnssl checkpoint names its network; fine-tuning builds that one.
        cfg, architecture_note = config_for_source(cfg, source)
    rt = setup_runtime(cfg.runtime)
    try:
        cache_path = resolve_finetune_cache(cfg, out, rt)
        task = make_finetune_task(cfg, cache_path, source, load_weights=not resume, report_dir=out)
        if rt.is_main:
            from tqdm.auto import tqdm

            if architecture_note:
                tqdm.write(architecture_note)
            arm = "pretrained" if source is not None else "scratch"
            tqdm.write(
                f"fine-tuning ({arm}): {len(task.train_ids)} training / {len(task.val_ids)} "
                f"validation cases, schedule {task.schedule}, peak lr {task.peak_lr:g}"
            )
            if not task.val_ids:
                tqdm.write("note: no held-out cases for validation; 'best' will be 'final'")
        train(task, cfg, out, resume=resume, runtime=rt, progress=progress)
        best, final = checkpoint_path(out, "best"), checkpoint_path(out, "final")
        if rt.is_main and final.is_file() and not best.is_file():
            import shutil

            shutil.copyfile(final, best.with_name(best.name + ".tmp"))
            best.with_name(best.name + ".tmp").replace(best)
    finally:
        teardown(rt)
    return out


def finetune_or_reuse(
    cfg: Config, out_dir: PathLike, *, pretrained: Path | None, progress: bool = True
) -> Path:
    """:func:`finetune` for runs that are one of many (demo, label efficiency): a finished run
    (``final.pt`` present) is reused untouched, an interrupted one (``latest.pt``) resumed.

    Returns:
        ``out_dir``. Raises what :func:`finetune` raises.
    """
    out = Path(out_dir)
    if checkpoint_path(out, "final").is_file():
        return out
    resume = checkpoint_path(out, "latest").is_file()
    return finetune(cfg, out, pretrained=pretrained, resume=resume, progress=progress)


__all__ = [
    "FinetuneTask",
    "dice_per_label",
    "encoder_parameter_names",
    "ensure_cache",
    "finetune",
    "finetune_or_reuse",
    "intensity_augment",
    "make_finetune_task",
    "resolve_finetune_cache",
    "select_training_cases",
]
