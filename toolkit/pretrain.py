"""MAE pretraining: the :class:`PretrainTask` run by the shared engine, and :func:`pretrain`.

One step (per process, for its rows of the global batch):

1. random ``data.patch_size`` crops from the cache (stateless, see :mod:`toolkit.data.sampling`),
   read by ``data.num_workers`` loader processes;
2. on the device: the paper's spatial augmentation (:mod:`toolkit.data.augment`), drawn from a
   generator seeded by ``(seed, step)``;
3. block masks (:func:`toolkit.masking.sample_block_mask`) from another ``(seed, step)`` generator —
   drawn for the global batch, so 1 and N processes see the same masks;
4. reconstruction by the MAE model (dense or S3D) and the masked reconstruction loss in fp32.

Validation reconstructs fixed crops of held-out subjects with fixed masks and no augmentation, so
values are comparable across steps and runs; the lowest ``val_loss`` selects ``best``. The same
crops and masks are also filled by the parameter-free in-fill baseline (:mod:`toolkit.infill`,
computed once per run and again, identically, after a resume) and logged as ``infill_loss``, with
``infill_margin = infill_loss - val_loss``: positive means the MAE reconstructs masked voxels
better than a Gaussian blur of the visible ones; zero or negative means it has learnt nothing a
blur could not do (see :mod:`toolkit.infill_gate`). Snapshots
write input / masked / reconstruction / error mid-slices as PNG and the volumes as NIfTI.

Checkpoints store the plain network under ``network_weights`` (nnU-Net / nnssl keys) and the extra
S3D or dense-token weights under ``extra_weights``.

Example:
    >>> from toolkit.config import load_config
    >>> cfg = load_config("tiny", {"data.cache_dir": "cache/demo_unlabelled"})  # doctest: +SKIP
    >>> run_dir = pretrain(cfg, "runs/mae_tiny")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from toolkit.config import Config
from toolkit.data.augment import SpatialAugmentation, apply_transforms, draw_transforms
from toolkit.data.sampling import (
    TRAIN_STREAM,
    VAL_STREAM,
    PatchSource,
    RandomPatchDataset,
    StepBatchSampler,
    make_loader,
    split_by_subject,
)
from toolkit.engine.checkpoint import clean_state_dict
from toolkit.engine.loop import LoopSettings, Task, step_generator, train
from toolkit.engine.runtime import Runtime, barrier, setup_runtime, teardown
from toolkit.errors import ConfigError, DataError
from toolkit.infill import DEFAULT_SIGMA, infill, infill_loss
from toolkit.losses import reconstruction_loss
from toolkit.masking import sample_block_mask, upsample_mask

if TYPE_CHECKING:
    from toolkit.models.mae import MAEModel

PathLike = str | os.PathLike[str]

#: ``step_generator`` streams of the pretraining task.
MASK_STREAM, AUGMENT_STREAM, VAL_MASK_STREAM = 1, 2, 3
#: Where :func:`pretrain` preprocesses a manifest when ``data.cache_dir`` is empty.
DEFAULT_CACHE_DIR = "cache"


class PretrainTask(Task):
    """MAE pretraining on a patch source (a cache, or in-memory volumes in tests and notebooks).

    Args:
        cfg: the full config (``data``, ``mask``, ``model``, ``pretrain``, ``runtime.seed``).
        source: where patches come from.
        train_ids: training cases.
        val_ids: held-out cases (other subjects); empty = no validation and no ``best``.
        plan: the preprocessing plan, stored with the run (default: ``source.plan`` if any).
    """

    name = "pretrain"
    selection_metric = "val_loss"
    selection_mode = "min"

    def __init__(
        self,
        cfg: Config,
        source: PatchSource,
        train_ids: Sequence[str],
        val_ids: Sequence[str] = (),
        *,
        plan: Mapping[str, Any] | None = None,
    ) -> None:
        if not train_ids:
            raise DataError(
                "pretraining: no training cases (check data.val_fraction and the cache)"
            )
        self.cfg = cfg
        self.source = source
        self.train_ids = list(train_ids)
        self.val_ids = list(val_ids)
        self._plan = dict(plan) if plan is not None else getattr(source, "plan", None)
        self.augmentation = SpatialAugmentation.from_config(cfg.pretrain)
        self.patch_size = tuple(cfg.data.patch_size)
        self.batch_size = cfg.pretrain.batch_size
        self.seed = cfg.runtime.seed
        self._loader: Any = None
        #: ``infill_loss`` of the fixed validation crops and masks; filled by the first validate.
        self.infill_loss: float | None = None

    @property
    def settings(self) -> LoopSettings:
        p = self.cfg.pretrain
        return LoopSettings(
            total_steps=p.steps,
            batch_size=p.batch_size,
            log_every=p.log_every,
            val_every=p.val_every,
            checkpoint_every=p.checkpoint_every,
            snapshot_every=p.snapshot_every,
            grad_clip=p.optim.grad_clip,
            optim=p.optim,
        )

    def build_model(self, rt: Runtime) -> nn.Module:
        from toolkit.models import build_mae

        return build_mae(self.cfg)

    def plan(self) -> dict[str, Any] | None:
        return self._plan

    def unused_parameters(self, model: nn.Module) -> list[str]:
        from toolkit.models.resenc import unused_parameter_names

        return unused_parameter_names(model)

    # ---------------------------------------------------------------------------------------------
    # Data

    def train_batches(self, start_step: int, rt: Runtime) -> Iterator[Any]:
        dataset = RandomPatchDataset(
            self.source, self.train_ids, self.patch_size, seed=self.seed, stream=TRAIN_STREAM
        )
        sampler = StepBatchSampler(
            start_step,
            self.settings.total_steps,
            self.batch_size,
            rank=rt.rank,
            world_size=rt.world_size,
        )
        self._loader = make_loader(
            dataset,
            sampler,
            num_workers=rt.loader_workers(self.cfg.data.num_workers),
            pin_memory=rt.pin_memory,
        )
        return iter(self._loader)

    def close(self) -> None:
        # Dropping the loader shuts its persistent workers down.
        self._loader = None

    # ---------------------------------------------------------------------------------------------
    # One step

    def masks(
        self, step: int, rows: torch.Tensor, generator_stream: int = MASK_STREAM
    ) -> torch.Tensor:
        """Masks (len(rows), 1, gd, gh, gw) of ``step``, drawn for the global batch, of ``rows``."""
        full = sample_block_mask(
            self.batch_size,
            self.patch_size,
            self.cfg.mask.block_size,
            ratio=self.cfg.mask.ratio,
            ratio_range=self.cfg.mask.ratio_range,
            generator=step_generator(self.seed, step, generator_stream),
        )
        return full[rows.cpu()]

    def augment(self, x: torch.Tensor, step: int, rows: torch.Tensor) -> torch.Tensor:
        """Device-side augmentation of this process's rows ``x`` (B_local, C, D, H, W)."""
        if not self.augmentation.enabled:
            return x
        transforms = draw_transforms(
            self.batch_size, step_generator(self.seed, step, AUGMENT_STREAM), self.augmentation
        )
        return apply_transforms(x, transforms.select(rows.cpu()))

    def reconstruct(
        self, model: nn.Module, x: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Run the model; returns ``(loss, reconstruction, full-resolution mask)``."""
        recon = model(x, mask)
        mask_full = upsample_mask(mask, x.shape[2:])
        loss = reconstruction_loss(recon, x, mask_full, self.cfg.pretrain.loss)
        return loss, recon, mask_full

    def training_step(
        self, model: nn.Module, batch: Any, step: int, rt: Runtime
    ) -> dict[str, torch.Tensor]:
        rows = batch["index"] - step * self.batch_size
        x = self.augment(rt.to_device(batch["image"]), step, rows)
        mask = self.masks(step, rows).to(x.device, non_blocking=True)
        loss, _, _ = self.reconstruct(model, x, mask)
        return {"loss": loss}

    # ---------------------------------------------------------------------------------------------
    # Validation and snapshots

    def _val_batches(self, rt: Runtime) -> Iterator[tuple[int, dict[str, Any]]]:
        """Fixed validation crops: ``val_batches`` global batches, in per-process chunks."""
        dataset = RandomPatchDataset(
            self.source, self.val_ids, self.patch_size, seed=self.seed, stream=VAL_STREAM
        )
        chunk = max(1, self.batch_size // rt.world_size)
        total = self.cfg.pretrain.val_batches * self.batch_size
        for i, start in enumerate(range(0, total, chunk)):
            items = [dataset[k] for k in range(start, min(start + chunk, total))]
            yield (
                i,
                {
                    "image": torch.stack([it["image"] for it in items]),
                    "index": torch.tensor([it["index"] for it in items]),
                },
            )

    def _val_masks(self, batch_number: int, n: int) -> torch.Tensor:
        return sample_block_mask(
            n,
            self.patch_size,
            self.cfg.mask.block_size,
            ratio=self.cfg.mask.ratio,
            ratio_range=self.cfg.mask.ratio_range,
            generator=step_generator(self.seed, batch_number, VAL_MASK_STREAM),
        )

    def validate(self, model: nn.Module, rt: Runtime) -> dict[str, float]:
        """``val_loss`` of the MAE on the fixed validation crops and masks, the in-fill
        baseline's ``infill_loss`` on the same crops and masks, and ``infill_margin`` =
        ``infill_loss - val_loss`` (positive: the MAE beats the in-fill)."""
        if not self.val_ids:
            return {}
        first = self.infill_loss is None
        losses, fills, weights = [], [], []
        for number, batch in self._val_batches(rt):
            x = rt.to_device(batch["image"])
            mask = self._val_masks(number, x.shape[0]).to(x.device)
            loss, _, _ = self.reconstruct(model, x, mask)
            losses.append(float(loss))
            weights.append(x.shape[0])
            if first:
                fills.append(float(self.infill_baseline(x, mask)))
        baseline = self.infill_loss
        if baseline is None:
            baseline = self.infill_loss = float(np.average(fills, weights=weights))
        val_loss = float(np.average(losses, weights=weights))
        return {
            "val_loss": val_loss,
            "infill_loss": baseline,
            "infill_margin": baseline - val_loss,
        }

    def infill_baseline(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The in-fill baseline's loss (``pretrain.loss``) on crops ``x`` (B, C, D, H, W) with
        grid masks ``mask`` (B, 1, gd, gh, gw); a scalar tensor."""
        return infill_loss(x, mask, sigma=DEFAULT_SIGMA, kind=self.cfg.pretrain.loss)

    def snapshot(self, model: nn.Module, rt: Runtime, step: int, out_dir: Path) -> None:
        from toolkit.data.io import save_volume
        from toolkit.visualize import plot_reconstruction, save_figure

        ids = self.val_ids or self.train_ids
        dataset = RandomPatchDataset(
            self.source, ids, self.patch_size, seed=self.seed, stream=VAL_STREAM
        )
        item = dataset[0]
        x = rt.to_device(item["image"][None])
        mask = self._val_masks(0, 1).to(x.device)
        _, recon, mask_full = self.reconstruct(model, x, mask)
        image = x[0].float().cpu().numpy()
        full = mask_full[0, 0].float().cpu().numpy()
        rec = recon[0].float().cpu().numpy()
        fill = infill(x, mask)[0].float().cpu().numpy()
        name = f"step_{step:07d}"
        fig = plot_reconstruction(
            image,
            full,
            rec,
            infill=fill,
            title=f"step {step} - case {item['case']} (validation crop)",
        )
        save_figure(fig, out_dir / f"{name}.png")
        spacing = self._spacing()
        affine = np.diag([*spacing, 1.0])
        affine[:3, 3] = np.asarray(item["start"].numpy(), dtype=np.float64) * spacing
        volumes = {
            "input": image[0],
            "masked": image[0] * full,
            "mask": full,
            "reconstruction": rec[0],
            "error": np.abs(rec[0] - image[0]),
        }
        for key, vol in volumes.items():
            save_volume(vol.astype(np.float32), affine, out_dir / name / f"{key}.nii.gz")

    def _spacing(self) -> np.ndarray:
        plan = self._plan or {}
        spacing = plan.get("target_spacing_mm") or self.cfg.data.target_spacing_mm
        return np.asarray(spacing, dtype=np.float64)

    # ---------------------------------------------------------------------------------------------
    # Checkpoint entries

    def model_state(self, model: nn.Module) -> dict[str, Any]:
        mae = _as_mae(model)
        return {
            "network_weights": clean_state_dict(mae.network.state_dict()),
            "extra_weights": clean_state_dict(mae.extra_state_dict()),
            "mae_variant": mae.variant,
            "model_name": self.cfg.model.name,
        }

    def load_model_state(self, model: nn.Module, checkpoint: Mapping[str, Any]) -> None:
        for key in ("network_weights", "extra_weights"):
            if key not in checkpoint:
                raise DataError(f"checkpoint has no {key!r}: not a pretraining checkpoint")
        mae = _as_mae(model)
        mae.network.load_state_dict(checkpoint["network_weights"])
        mae.load_extra_state_dict(checkpoint["extra_weights"])


def _as_mae(model: nn.Module) -> MAEModel:
    from toolkit.models.mae import MAEModel

    if not isinstance(model, MAEModel):
        raise TypeError(f"PretrainTask needs an MAEModel, got {type(model).__name__}")
    return model


# --------------------------------------------------------------------------------------------------
# Front door


def resolve_pretrain_cache(cfg: Config, run_dir: PathLike, rt: Runtime | None = None) -> Path:
    """The cache folder to pretrain from, preprocessing the manifest first if needed.

    * ``data.cache_dir`` holding a ``plan.json`` is used as is;
    * otherwise, with ``data.pretrain_manifest`` set, the cache is
      ``data.cache_dir/<manifest name>`` or, if ``data.cache_dir`` is empty,
      ``RUN_DIR/../cache/<manifest name>`` (next to the run folders, shared by runs), and it is
      written (or completed) by :func:`toolkit.data.preprocess.preprocess_manifest` on the main
      process.

    Raises:
        ConfigError: neither a cache nor a manifest is configured.
        DataError: the manifest or the cache is unusable.
    """
    cache_dir = cfg.data.cache_dir
    if cache_dir and (Path(cache_dir) / "plan.json").is_file():
        return Path(cache_dir)
    manifest = cfg.data.pretrain_manifest
    if not manifest:
        if cache_dir:
            raise DataError(
                f"data.cache_dir: {cache_dir} is not a preprocessed cache (no plan.json) and "
                "data.pretrain_manifest is empty; run 'mae3d preprocess' or set the manifest"
            )
        raise ConfigError(
            "data.cache_dir: set it to a preprocessed cache, or set data.pretrain_manifest"
        )
    from toolkit.data.manifest import load_manifest
    from toolkit.data.preprocess import ensure_cache

    m = load_manifest(manifest)
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


def make_pretrain_task(cfg: Config, cache_path: PathLike) -> PretrainTask:
    """Open the cache, split it by subject and build the task (checking channels vs the model)."""
    from toolkit.data.cache import open_cache

    cache = open_cache(cache_path)
    if len(cache.channels) != cfg.model.in_channels:
        raise ConfigError(
            f"model.in_channels: {cfg.model.in_channels} but the cache {cache_path} has "
            f"{len(cache.channels)} channel(s) ({', '.join(cache.channels)})"
        )
    train_ids, val_ids = split_by_subject(
        cache.case_ids,
        cache.subject,
        cfg.data.val_fraction,
        seed=cfg.runtime.seed,
        split_of=cache.split,
    )
    return PretrainTask(cfg, cache, train_ids, val_ids, plan=cache.plan)


def pretrain(
    cfg: Config, out_dir: PathLike, *, resume: bool = False, progress: bool = True
) -> Path:
    """Pretrain an MAE as configured; the Python front door (notebooks) of ``mae3d pretrain``.

    Args:
        cfg: the config; ``data.cache_dir`` (a preprocessed cache) or ``data.pretrain_manifest``
            (preprocessed first, see :func:`resolve_pretrain_cache`) says where data comes from.
        out_dir: the run folder (config, metrics, loss curve, snapshots, checkpoints).
        resume: continue the run in ``out_dir`` exactly where it stopped (a run killed before
            its first checkpoint starts again from step 0).
        progress: show a progress bar.

    Returns:
        ``out_dir`` as a Path; the weights are in ``out_dir/checkpoints/{best,final}.pt``.

    Raises:
        ConfigError, DataError: bad settings or data (one-line messages naming the field/file).
        StorageError: ``out_dir`` cannot be written (checked before any work);
            DiskFullError: a checkpoint did not fit on the disk (the earlier ones are intact).
        TrainingError: a non-finite loss (the last good checkpoint is kept) or a bad resume.
    """
    from toolkit.engine.run_folder import claim_run_folder

    out = Path(out_dir)
    # Before any work (preprocessing, model building): a read-only or used folder is refused now.
    resume = claim_run_folder(out, resume=resume)
    rt = setup_runtime(cfg.runtime)
    try:
        cache_path = resolve_pretrain_cache(cfg, out, rt)
        task = make_pretrain_task(cfg, cache_path)
        if not task.val_ids and rt.is_main:
            from tqdm.auto import tqdm

            tqdm.write("note: no held-out subjects (data.val_fraction); no 'best' checkpoint")
        train(task, cfg, out, resume=resume, runtime=rt, progress=progress)
    finally:
        teardown(rt)
    return out


def pretrain_or_reuse(cfg: Config, run_dir: PathLike, *, progress: bool = True) -> Path:
    """:func:`pretrain` for a run that is one stage of a study (demo, benchmark): a finished run
    (``final.pt`` present) is reused untouched, an interrupted one (``latest.pt``) resumed.

    Returns:
        ``run_dir``. Raises what :func:`pretrain` raises.
    """
    from toolkit.engine.checkpoint import checkpoint_path

    run = Path(run_dir)
    if checkpoint_path(run, "final").is_file():
        return run
    resume = checkpoint_path(run, "latest").is_file()
    return pretrain(cfg, run, resume=resume, progress=progress)


__all__ = [
    "AUGMENT_STREAM",
    "DEFAULT_CACHE_DIR",
    "MASK_STREAM",
    "VAL_MASK_STREAM",
    "PretrainTask",
    "make_pretrain_task",
    "pretrain",
    "pretrain_or_reuse",
    "resolve_pretrain_cache",
]
