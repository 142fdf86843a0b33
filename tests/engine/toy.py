"""A tiny stand-in task for the engine tests: a two-layer conv denoiser on in-memory volumes.

Defined here (not in the library) so the loop is tested independently of the MAE models. Module
level, so DDP tests can send it to spawned processes.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from toolkit.config import Config, load_config
from toolkit.data.sampling import (
    ArrayPatchSource,
    RandomPatchDataset,
    StepBatchSampler,
    make_loader,
)
from toolkit.engine.loop import LoopSettings, Task, step_generator
from toolkit.engine.runtime import Runtime

PATCH = 8


def toy_config(**overrides: Any) -> Config:
    """The tiny preset on CPU with plain SGD settings; ``overrides`` are dotted keys."""
    base = {"runtime.device": "cpu", "pretrain.optim.lr": 0.05, "pretrain.optim.momentum": 0.9}
    base.update({k.replace("__", "."): v for k, v in overrides.items()})
    return load_config("tiny", base)


class ToyTask(Task):
    """Denoise random 8^3 crops of three random 12^3 volumes with a 2-layer conv net.

    Hooks for the tests: ``nan_at`` makes the loss of that (1-based) step NaN, ``grad_nan_at`` its
    gradient, ``stop_at`` creates
    ``RUN_DIR/STOP`` during that step, ``interrupt_at`` sends this process SIGINT during it.
    """

    name = "toy"

    def __init__(
        self,
        *,
        steps: int = 6,
        batch_size: int = 2,
        seed: int = 0,
        log_every: int = 2,
        val_every: int = 3,
        checkpoint_every: int = 2,
        nan_at: int | None = None,
        grad_nan_at: int | None = None,
        stop_at: int | None = None,
        interrupt_at: int | None = None,
        run_dir: Path | None = None,
    ) -> None:
        rng = np.random.default_rng(0)
        self.source = ArrayPatchSource(
            {f"c{i}": rng.standard_normal((1, 12, 12, 12)).astype(np.float32) for i in range(3)}
        )
        self._settings = LoopSettings(
            total_steps=steps,
            batch_size=batch_size,
            log_every=log_every,
            val_every=val_every,
            checkpoint_every=checkpoint_every,
            grad_clip=12.0,
            optim=toy_config().pretrain.optim,
        )
        self.seed = seed
        self.nan_at, self.stop_at, self.interrupt_at = nan_at, stop_at, interrupt_at
        self.grad_nan_at = grad_nan_at
        self.run_dir = run_dir
        self.validations = 0

    @property
    def settings(self) -> LoopSettings:
        return self._settings

    def build_model(self, rt: Runtime) -> nn.Module:
        return nn.Sequential(
            nn.Conv3d(1, 4, 3, padding=1), nn.LeakyReLU(0.01), nn.Conv3d(4, 1, 3, padding=1)
        )

    def train_batches(self, start_step: int, rt: Runtime) -> Iterator[Any]:
        dataset = RandomPatchDataset(
            self.source, self.source.case_ids, (PATCH,) * 3, seed=self.seed
        )
        sampler = StepBatchSampler(
            start_step,
            self.settings.total_steps,
            self.settings.batch_size,
            rank=rt.rank,
            world_size=rt.world_size,
        )
        return iter(make_loader(dataset, sampler, num_workers=0))

    def training_step(
        self, model: nn.Module, batch: Any, step: int, rt: Runtime
    ) -> dict[str, torch.Tensor]:
        rows = batch["index"] - step * self.settings.batch_size
        noise = torch.randn(
            (self.settings.batch_size, 1, PATCH, PATCH, PATCH),
            generator=step_generator(self.seed, step, 1),
        )[rows]
        x = batch["image"].to(rt.device)
        loss = F.mse_loss(model(x + 0.5 * noise.to(rt.device)), x)
        if self.nan_at == step + 1:
            loss = loss * float("nan")
        if self.grad_nan_at == step + 1:  # a finite loss whose gradient is 0 * inf = NaN
            w = next(model.parameters())
            loss = loss + 0.0 * torch.sqrt((w - w.detach()).abs()).sum()
        if self.stop_at == step + 1 and self.run_dir is not None:
            (self.run_dir / "STOP").touch()
        if self.interrupt_at == step + 1:
            os.kill(os.getpid(), signal.SIGINT)
        return {"loss": loss, "noise_std": noise.std()}

    def validate(self, model: nn.Module, rt: Runtime) -> dict[str, float]:
        self.validations += 1
        x = torch.randn((2, 1, PATCH, PATCH, PATCH), generator=torch.Generator().manual_seed(123))
        return {"val_loss": float(F.mse_loss(model(x.to(rt.device)), x.to(rt.device)))}
