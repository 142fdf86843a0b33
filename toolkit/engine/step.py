"""One optimiser step without host-device synchronisation, and the window that checks it later.

On a GPU every ``.item()``, ``float(tensor)`` or ``.cpu()`` makes the host wait until the device has
caught up, so the next step cannot be queued while this one runs. :func:`run_step` therefore
returns the loss, the gradient norm and the task's extras as device tensors, and
:class:`StepWindow` collects them until the loop reaches a *check step* (a log, validation,
checkpoint or snapshot step, the last step, or a stop). There one collective sums the losses and
the stop flag over processes and one copy brings everything to the host; the window then checks
every step it holds, in order, for a non-finite loss or gradient norm.

What the deferral changes: a NaN is reported at the next check step rather than at once, so the
steps between may have updated the parameters with it. The loop checks before every checkpoint it
writes, so no checkpoint ever holds such an update, and the error names the first bad step and the
last good checkpoint. On a CPU nothing is asynchronous and the values are exactly those of a
step-by-step check. The fp16 gradient scaler still synchronises in ``scaler.step`` (it must know
whether to skip the step); bf16 and fp32 have no scaler.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from toolkit.engine.runtime import Runtime, all_reduce_sum
from toolkit.errors import TrainingError

if TYPE_CHECKING:  # the loop imports this module; only the types come back
    from toolkit.engine.loop import Task, TrainingState


class NonFiniteError(TrainingError):
    """A NaN or infinite loss or gradient norm at a (1-based) step."""

    def __init__(self, step: int, what: str, value: float) -> None:
        super().__init__(f"non-finite {what} at step {step} ({value})")
        self.step, self.what, self.value = step, what, value


@dataclass
class StepOutput:
    """One optimiser step, still on the device (0-d fp32 tensors, detached).

    Attributes:
        loss: this process's loss.
        grad_norm: the total gradient norm before clipping (the same on every process).
        extras: the task's other outputs, each averaged over its elements.
    """

    loss: torch.Tensor
    grad_norm: torch.Tensor
    extras: dict[str, torch.Tensor]


def run_step(
    task: Task,
    state: TrainingState,
    batch: Any,
    step: int,
    rt: Runtime,
    *,
    grad_clip: float,
) -> StepOutput:
    """Forward, backward, clip and update for one step, without waiting for the device.

    Args:
        task: computes the step (``task.training_step`` returns a dict with ``loss``).
        state: model, optimiser, scheduler and scaler.
        batch: the step's batch, already on the device.
        step: 0-based step index (random draws of the task are a function of it).
        rt: the runtime.
        grad_clip: max gradient norm (0 = no clipping; the norm is still returned).

    Returns:
        A :class:`StepOutput` of device tensors; give it to :meth:`StepWindow.add` and check the
        window at the next check step.
    """
    state.model.train()
    state.optimizer.zero_grad(set_to_none=True)
    with rt.autocast():
        outputs = task.training_step(state.model, batch, step, rt)
    if "loss" not in outputs:
        raise TypeError(f"{type(task).__name__}.training_step must return a dict with 'loss'")
    loss = outputs["loss"]
    state.scaler.scale(loss).backward()
    _drop_frozen_gradients(state.optimizer)
    state.scaler.unscale_(state.optimizer)
    max_norm = grad_clip if grad_clip > 0 else math.inf
    grad_norm = torch.nn.utils.clip_grad_norm_(state.params, max_norm)
    state.scaler.step(state.optimizer)
    state.scaler.update()
    state.scheduler.step()
    extras = {k: v.detach().float().mean() for k, v in outputs.items() if k != "loss"}
    return StepOutput(loss.detach().float().reshape(()), grad_norm.detach().float(), extras)


def _drop_frozen_gradients(optimizer: torch.optim.Optimizer) -> None:
    """Forget the gradients of parameter groups whose learning rate is 0 at this step.

    A group at lr 0 is frozen (e.g. the encoder while fine-tuning warms the decoder up). Without
    DDP a task can freeze it with ``requires_grad_(False)``; under DDP every parameter must keep
    producing gradients, and those would still feed momentum, weight decay and the clipped norm,
    so the run would drift from the single-process one. Dropping them makes both the same.
    """
    for group in optimizer.param_groups:
        if group["lr"] == 0:
            for p in group["params"]:
                p.grad = None


@dataclass
class WindowValues:
    """The host values of the steps a :class:`StepWindow` held.

    Attributes:
        losses: per step, the loss averaged over processes.
        grad_norms: per step, the gradient norm.
        extras: per extra, its per-step values (this process's).
        stop_requested: some process asked to stop.
    """

    losses: list[float]
    grad_norms: list[float]
    extras: dict[str, list[float]]
    stop_requested: bool


@dataclass
class StepWindow:
    """Step outputs kept on the device until the next check step.

    Attributes:
        first_step: 1-based number of the first step the window holds (for error messages).
        check_grad_norm: raise on a non-finite gradient norm too (off with the fp16 scaler,
            which skips such steps itself).
    """

    first_step: int
    check_grad_norm: bool = True
    _outputs: list[StepOutput] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self._outputs)

    def add(self, out: StepOutput) -> None:
        """Keep one step's outputs (no synchronisation)."""
        self._outputs.append(out)

    def flush(self, rt: Runtime, *, stop_requested: bool = False) -> WindowValues:
        """Bring the window to the host (one collective, one copy), check it and empty it.

        Every process must call this at the same step: the losses and the stop flag are summed
        over processes so that all of them log the same loss and take the same decision.

        Raises:
            NonFiniteError: the first step (in order) whose loss, or gradient norm when
                ``check_grad_norm``, is NaN or infinite.
        """
        outs, self._outputs = self._outputs, []
        first, self.first_step = self.first_step, self.first_step + len(outs)
        if not outs:
            return WindowValues([], [], {}, stop_requested)
        n = len(outs)
        losses = torch.stack([o.loss for o in outs])
        stop = torch.tensor([float(stop_requested)], device=losses.device)
        shared = all_reduce_sum(torch.cat([losses, stop]), rt)
        names = sorted({k for o in outs for k in o.extras})
        local = [torch.stack([o.grad_norm for o in outs])]
        local += [torch.stack([o.extras[k] for o in outs if k in o.extras]) for k in names]
        host = torch.cat([shared, *local]).cpu().tolist()  # the one host-device synchronisation
        loss_values = [v / rt.world_size for v in host[:n]]
        grad_norms = host[n + 1 : 2 * n + 1]
        extras: dict[str, list[float]] = {}
        offset = 2 * n + 1
        for k, values in zip(names, local[1:], strict=True):
            extras[k] = host[offset : offset + len(values)]
            offset += len(values)
        for i, (loss, norm) in enumerate(zip(loss_values, grad_norms, strict=True)):
            if not math.isfinite(loss):
                raise NonFiniteError(first + i, "loss", loss)
            if self.check_grad_norm and not math.isfinite(norm):
                raise NonFiniteError(first + i, "gradient norm", norm)
        return WindowValues(loss_values, grad_norms, extras, host[n] > 0)
