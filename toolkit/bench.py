"""Measure pretraining speed and memory, count FLOPs, and estimate how long a run will take.

:func:`bench_pretrain` times the real training step (the engine's
:func:`~toolkit.engine.loop.run_step` on the :class:`~toolkit.pretrain.PretrainTask`: augmentation,
masking, forward, fp32 loss, backward, clipping, optimiser) on a fixed device batch, then separately
the data loader (random crops from a cache, or from in-memory volumes) and the device-side
augmentation, so each can be compared with the step it must keep up with.

FLOPs are counted, not measured: forward hooks on every ``Conv3d`` / ``ConvTranspose3d`` add
``2 * C_in * C_out * k^3 * voxels / groups`` (output voxels for a convolution, input voxels for a
transposed convolution, where each input voxel is scattered into ``k^3`` outputs), and a training
step is taken as 3x the forward (backward = 2x forward). Norms, activations and the loss are not
counted (< 1 % for these networks). The count runs on PyTorch's ``meta`` device, so even
ResEnc-L at 160^3 costs no memory or time.

Example:
    >>> from toolkit.config import load_config
    >>> cfg = load_config("tiny", {"data.patch_size": [16, 16, 16]})
    >>> count_pretrain_flops(cfg) > 0
    True
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from toolkit.config import Config
from toolkit.data.augment import (
    SpatialAugmentation,
    SpatialTransforms,
    apply_transforms,
    draw_transforms,
)
from toolkit.data.sampling import (
    ArrayPatchSource,
    PatchSource,
    RandomPatchDataset,
    StepBatchSampler,
    make_loader,
)
from toolkit.engine.loop import build_training_state
from toolkit.engine.runtime import (
    Runtime,
    device_name,
    memory_kind,
    peak_memory_bytes,
    reset_peak_memory,
    setup_runtime,
    synchronize,
)
from toolkit.engine.step import run_step

PathLike = str | os.PathLike[str]


# --------------------------------------------------------------------------------------------------
# Operation count


def _conv_flops(module: nn.Module, inputs: tuple[Any, ...], output: torch.Tensor) -> int:
    x = inputs[0]
    k = math.prod(module.kernel_size)  # type: ignore[arg-type]
    groups = int(module.groups)  # type: ignore[arg-type]
    c_in, c_out = int(module.in_channels), int(module.out_channels)  # type: ignore[arg-type]
    if isinstance(module, nn.ConvTranspose3d):
        voxels = x.shape[0] * math.prod(x.shape[2:])
    else:
        voxels = output.shape[0] * math.prod(output.shape[2:])
    return 2 * c_in * c_out * k * int(voxels) // groups


def count_conv_flops(model: nn.Module, *inputs: torch.Tensor) -> int:
    """Forward FLOPs (multiply + add = 2) of every 3D (transposed) convolution in one call.

    Args:
        model: any module; only ``nn.Conv3d`` and ``nn.ConvTranspose3d`` are counted.
        inputs: its forward arguments, e.g. ``x`` (B, C, D, H, W) and a mask; ``meta`` tensors
            work and cost nothing.

    Returns:
        FLOPs for the whole batch of ``inputs``.
    """
    total = 0

    def hook(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> None:
        nonlocal total
        total += _conv_flops(module, args, output)

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, nn.Conv3d | nn.ConvTranspose3d)
    ]
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        for h in handles:
            h.remove()
    return total


def count_pretrain_flops(cfg: Config) -> int:
    """Forward conv FLOPs of the MAE model of ``cfg`` for one ``data.patch_size`` sample.

    Counted on the ``meta`` device (no memory, no compute); falls back to a CPU forward pass if a
    layer cannot run on ``meta``.
    """
    from toolkit.masking import sample_block_mask
    from toolkit.models import build_mae

    mask = sample_block_mask(
        1,
        cfg.data.patch_size,
        cfg.mask.block_size,
        ratio=cfg.mask.ratio,
        generator=torch.Generator().manual_seed(0),
    )
    shape = (1, cfg.model.in_channels, *cfg.data.patch_size)
    try:
        with torch.device("meta"):
            model = build_mae(cfg)
        return count_conv_flops(model, torch.empty(shape, device="meta"), mask.to("meta"))
    except (NotImplementedError, RuntimeError):
        model = build_mae(cfg)
        return count_conv_flops(model, torch.zeros(shape), mask)


# --------------------------------------------------------------------------------------------------
# Loader throughput


def synthetic_source(
    patch_size: Sequence[int], channels: int = 1, num_cases: int = 2, seed: int = 0
) -> ArrayPatchSource:
    """In-memory random volumes 1.25x the patch (so crops move), for loader benchmarks."""
    rng = np.random.default_rng(seed)
    shape = tuple(int(math.ceil(1.25 * p)) for p in patch_size)
    images = {
        f"synthetic-{i}": rng.standard_normal((channels, *shape), dtype=np.float32)
        for i in range(num_cases)
    }
    return ArrayPatchSource(images)


def measure_loader(
    source: PatchSource,
    patch_size: Sequence[int],
    *,
    batch_size: int,
    num_batches: int,
    num_workers: int,
    pin_memory: bool = False,
    seed: int = 0,
) -> tuple[float, float]:
    """Patches per second of the pretraining data path (crops -> collated batch).

    Returns:
        ``(patches_per_s, startup_s)``: the rate after the first batch, and the time to the first
        batch (worker start-up and first reads).
    """
    dataset = RandomPatchDataset(source, source.case_ids, patch_size, seed=seed)
    sampler = StepBatchSampler(0, num_batches + 1, batch_size)
    loader = make_loader(dataset, sampler, num_workers=num_workers, pin_memory=pin_memory)
    start = time.perf_counter()
    it = iter(loader)
    next(it)
    first = time.perf_counter()
    count = 0
    for batch in it:
        count += int(batch["image"].shape[0])
    elapsed = time.perf_counter() - first
    del it, loader
    return count / max(elapsed, 1e-9), first - start


# --------------------------------------------------------------------------------------------------
# Step benchmark


@dataclass
class BenchReport:
    """Figures of :func:`bench_pretrain` (per process; ``sec_per_step`` is the median timed step,
    ``*_per_s`` follow from it; ``step_seconds`` holds every timed step)."""

    model: str
    variant: str
    patch_size: tuple[int, int, int]
    batch_size: int
    steps: int
    device: str
    precision: str
    parameters: int
    extra_parameters: int
    sec_per_step: float
    steps_per_s: float
    voxels_per_s: float
    peak_memory_bytes: int
    memory_kind: str
    forward_flops_per_sample: int
    train_flops_per_step: int
    tflops_per_s: float
    augment_ms: float
    augment_fraction: float
    loader_patches_per_s: float | None
    loader_startup_s: float | None
    loader_source: str
    loader_workers: int
    step_seconds: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (for JSON)."""
        return asdict(self)

    def lines(self) -> list[str]:
        """Human-readable report lines."""
        patch = "x".join(map(str, self.patch_size))
        out = [
            f"model       {self.model} ({self.variant}), {self.parameters / 1e6:.2f} M parameters "
            f"+ {self.extra_parameters / 1e6:.2f} M extra",
            f"device      {self.device}, {self.precision}",
            f"batch       {self.batch_size} x {patch}, {self.steps} timed steps",
            f"speed       {self.steps_per_s:.3f} steps/s ({self.sec_per_step:.3f} s/step), "
            f"{_si(self.voxels_per_s)}voxels/s",
            f"memory      {self.peak_memory_bytes / 2**30:.2f} GiB ({self.memory_kind})",
            f"compute     {_si(self.forward_flops_per_sample)}FLOP forward per sample, "
            f"{_si(self.train_flops_per_step)}FLOP per step (fwd+bwd = 3x fwd), "
            f"{_si(self.tflops_per_s * 1e12)}FLOP/s",
            f"augment     {self.augment_ms:.1f} ms per batch with every sample rotated, scaled and "
            f"mirrored ({100 * self.augment_fraction:.1f} % of a step)",
        ]
        if self.loader_patches_per_s is not None:
            out.append(
                f"loader      {self.loader_patches_per_s:.1f} patches/s of {patch} from "
                f"{self.loader_source}, {self.loader_workers} worker(s) "
                f"(first batch after {self.loader_startup_s:.2f} s)"
            )
        return out


def _si(value: float) -> str:
    """``8.4e12`` -> ``"8.40 T"`` (value and SI prefix, followed by the unit)."""
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.2f} {prefix}"
    return f"{value:.2f} "


def _timed(rt: Runtime, fn: Any, repeats: int) -> float:
    synchronize(rt)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    synchronize(rt)
    return (time.perf_counter() - start) / repeats


def bench_pretrain(
    cfg: Config,
    *,
    steps: int = 20,
    warmup: int = 2,
    cache: PathLike | None = None,
    loader_batches: int = 10,
    measure_data: bool = True,
    runtime: Runtime | None = None,
) -> BenchReport:
    """Time ``steps`` pretraining steps of ``cfg`` (after ``warmup``) and the data path.

    Args:
        cfg: model, mask, patch size, precision, compile, optimiser as configured; the batch is
            ``pretrain.batch_size`` (one process).
        steps: timed steps.
        warmup: untimed steps first (cuDNN autotuning, ``torch.compile``).
        cache: a preprocessed cache to measure the loader on; default: in-memory random volumes.
        loader_batches: batches read for the loader rate.
        measure_data: also measure the loader (False: step and augmentation only).
        runtime: an existing runtime (default: from ``cfg.runtime``, without DDP).

    Returns:
        A :class:`BenchReport`.
    """
    from toolkit.models.mae import MAEModel
    from toolkit.pretrain import PretrainTask

    rt = runtime if runtime is not None else setup_runtime(cfg.runtime, init_distributed=False)
    patch = tuple(int(p) for p in cfg.data.patch_size)
    batch_size = cfg.pretrain.batch_size
    source = synthetic_source(patch, cfg.model.in_channels, num_cases=1, seed=cfg.runtime.seed)
    task = PretrainTask(cfg, source, source.case_ids)
    reset_peak_memory(rt)
    state = build_training_state(task, cfg, rt)
    rng = torch.Generator().manual_seed(cfg.runtime.seed)
    batch = {
        "image": torch.randn((batch_size, cfg.model.in_channels, *patch), generator=rng),
        "index": torch.arange(batch_size),
    }

    def step(i: int) -> None:
        # Index 0..B-1 at every step: rows stay 0..B-1 whatever the step number.
        b = dict(batch, index=batch["index"] + i * batch_size)
        run_step(task, state, b, i, rt, grad_clip=cfg.pretrain.optim.grad_clip)

    for i in range(warmup):
        step(i)
    synchronize(rt)
    step_seconds = []
    for i in range(warmup, warmup + steps):
        start = time.perf_counter()
        step(i)
        synchronize(rt)
        step_seconds.append(time.perf_counter() - start)
    # The median: one step stalled by another process or a GC pause does not move it.
    sec_per_step = float(np.median(step_seconds))
    peak = peak_memory_bytes(rt)

    x = rt.to_device(batch["image"])
    # Worst case: every sample rotated and scaled (p = 1) and mirrored on all three axes.
    drawn = draw_transforms(
        batch_size, torch.Generator().manual_seed(0), SpatialAugmentation(prob=1)
    )
    transforms = SpatialTransforms(
        drawn.matrices, torch.ones_like(drawn.resample), torch.ones_like(drawn.flips)
    )
    augment_s = _timed(rt, lambda: apply_transforms(x, transforms), max(2, min(steps, 5)))

    mae = state.module
    assert isinstance(mae, MAEModel)
    extra = sum(p.numel() for p in mae.extras.parameters()) if mae.extras is not None else 0
    parameters = sum(p.numel() for p in mae.network.parameters())
    fwd = count_pretrain_flops(cfg)
    train_flops = 3 * fwd * batch_size

    loader_rate = loader_startup = None
    source_name = "in-memory random volumes"
    if measure_data:
        data_source: PatchSource = source
        if cache is not None:
            from toolkit.data.cache import open_cache

            data_source = open_cache(cache)
            source_name = f"cache {cache}"
        loader_rate, loader_startup = measure_loader(
            data_source,
            patch,
            batch_size=batch_size,
            num_batches=loader_batches,
            num_workers=cfg.data.num_workers,
            pin_memory=rt.pin_memory,
            seed=cfg.runtime.seed,
        )
    task.close()
    return BenchReport(
        model=cfg.model.name,
        variant=cfg.mask.variant,
        patch_size=(patch[0], patch[1], patch[2]),
        batch_size=batch_size,
        steps=steps,
        device=f"{device_name(rt)} [{rt.device}]",
        precision=rt.precision,
        parameters=int(parameters),
        extra_parameters=int(extra),
        sec_per_step=sec_per_step,
        steps_per_s=1.0 / sec_per_step,
        voxels_per_s=batch_size * math.prod(patch) / sec_per_step,
        peak_memory_bytes=peak,
        memory_kind=memory_kind(rt),
        forward_flops_per_sample=fwd,
        train_flops_per_step=train_flops,
        tflops_per_s=train_flops / sec_per_step / 1e12,
        augment_ms=1e3 * augment_s,
        augment_fraction=augment_s / sec_per_step,
        loader_patches_per_s=loader_rate,
        loader_startup_s=loader_startup,
        loader_source=source_name,
        loader_workers=cfg.data.num_workers,
        step_seconds=step_seconds,
    )


# --------------------------------------------------------------------------------------------------
# Run estimate


@dataclass
class RunEstimate:
    """Predicted cost of a configured pretraining run, from a few measured steps."""

    sec_per_step: float
    peak_memory_bytes: int
    memory_kind: str
    device: str
    total_steps: int
    validation_passes: int
    train_hours: float
    validation_hours: float
    total_hours: float
    checkpoint_bytes: int

    def lines(self) -> list[str]:
        """Human-readable report lines."""
        return [
            f"device       {self.device}",
            f"step         {self.sec_per_step:.3f} s (measured), peak memory "
            f"{self.peak_memory_bytes / 2**30:.2f} GiB ({self.memory_kind})",
            f"run          {self.total_steps} steps = {self.train_hours:.2f} h training + "
            f"{self.validation_hours:.2f} h validation ({self.validation_passes} passes) "
            f"= {self.total_hours:.2f} h",
            f"checkpoint   ~{self.checkpoint_bytes / 2**20:.0f} MiB each (weights + optimiser)",
        ]


def estimate_run(cfg: Config, *, steps: int = 3, runtime: Runtime | None = None) -> RunEstimate:
    """Measure ``steps`` steps of ``cfg`` (after one warm-up) and extrapolate the whole run.

    Validation is estimated as one forward pass (a third of a training step) per validation
    batch. Under DDP each process runs ``batch_size / world_size``; run this with the per-process
    batch to estimate a multi-GPU run.
    """
    report = bench_pretrain(cfg, steps=steps, warmup=1, measure_data=False, runtime=runtime)
    p = cfg.pretrain
    passes = p.steps // p.val_every + (1 if p.steps % p.val_every else 0)
    train_s = report.sec_per_step * p.steps
    val_s = passes * p.val_batches * report.sec_per_step / 3.0
    params = report.parameters + report.extra_parameters
    state_copies = 2 if p.optim.optimizer == "sgd" else 3  # weights + momentum (+ 2nd moment)
    return RunEstimate(
        sec_per_step=report.sec_per_step,
        peak_memory_bytes=report.peak_memory_bytes,
        memory_kind=report.memory_kind,
        device=report.device,
        total_steps=p.steps,
        validation_passes=passes,
        train_hours=train_s / 3600,
        validation_hours=val_s / 3600,
        total_hours=(train_s + val_s) / 3600,
        checkpoint_bytes=4 * params * state_copies,
    )


__all__ = [
    "BenchReport",
    "RunEstimate",
    "bench_pretrain",
    "count_conv_flops",
    "count_pretrain_flops",
    "estimate_run",
    "measure_loader",
    "synthetic_source",
]
