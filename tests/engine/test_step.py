"""One step without host synchronisation, and the window that checks the steps at check points."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode

from tests.engine.toy import ToyTask, toy_config
from toolkit.engine.loop import build_training_state, train
from toolkit.engine.runtime import setup_runtime
from toolkit.engine.step import NonFiniteError, StepOutput, StepWindow, run_step

# Tensor methods that copy a value to the host (on a GPU: wait for the device).
HOST_READS = {"item", "cpu", "tolist", "numpy", "__float__", "__bool__", "__int__", "__index__"}


class _HostReads(TorchFunctionMode):
    """Records every tensor method call that reads a value back to the host."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        name = getattr(func, "__name__", "")
        if name in HOST_READS:
            self.seen.append(name)
        return func(*args, **(kwargs or {}))


def _out(loss: float, norm: float = 1.0, **extras: float) -> StepOutput:
    return StepOutput(
        torch.tensor(loss), torch.tensor(norm), {k: torch.tensor(v) for k, v in extras.items()}
    )


def test_run_step_reads_nothing_back_to_the_host() -> None:
    cfg = toy_config()
    task = ToyTask(steps=4)
    rt = setup_runtime(cfg.runtime, init_distributed=False)
    state = build_training_state(task, cfg, rt)
    batches = task.train_batches(0, rt)
    before = [p.detach().clone() for p in state.params]
    for step in range(2):
        batch = next(batches)
        with _HostReads() as reads:
            out = run_step(task, state, batch, step, rt, grad_clip=1.0)
        assert reads.seen == [], f"step {step} read {reads.seen} back to the host"
        assert out.loss.dim() == 0 and out.grad_norm.dim() == 0
    assert any(not torch.equal(a, b) for a, b in zip(before, state.params, strict=True))


def test_window_returns_the_values_of_its_steps_in_order() -> None:
    rt = setup_runtime(toy_config().runtime, init_distributed=False)
    window = StepWindow(first_step=5)
    for i in range(3):
        window.add(_out(0.5 + i, norm=2.0 * i, mse=0.1 * i))
    values = window.flush(rt, stop_requested=True)
    assert values.losses == pytest.approx([0.5, 1.5, 2.5])
    assert values.grad_norms == pytest.approx([0.0, 2.0, 4.0])
    assert values.extras["mse"] == pytest.approx([0.0, 0.1, 0.2])
    assert values.stop_requested
    assert len(window) == 0 and window.first_step == 8
    assert window.flush(rt).losses == []


@pytest.mark.parametrize(
    ("outputs", "check_norm", "message"),
    [
        ([_out(1.0), _out(math.nan), _out(math.inf)], True, "non-finite loss at step 11"),
        ([_out(1.0), _out(1.0, norm=math.inf), _out(math.nan)], True, "gradient norm at step 11"),
        ([_out(1.0, norm=math.nan), _out(math.inf)], False, "non-finite loss at step 11"),
    ],
)
def test_window_names_the_first_non_finite_step(
    outputs: list[StepOutput], check_norm: bool, message: str
) -> None:
    rt = setup_runtime(toy_config().runtime, init_distributed=False)
    window = StepWindow(first_step=10, check_grad_norm=check_norm)
    for out in outputs:
        window.add(out)
    with pytest.raises(NonFiniteError, match=message):
        window.flush(rt)


def test_loop_reads_steps_back_only_at_check_steps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flushed_at: list[int] = []
    real_flush = StepWindow.flush

    def counting_flush(self: StepWindow, *args, **kwargs):  # type: ignore[no-untyped-def]
        flushed_at.append(self.first_step + len(self) - 1)
        return real_flush(self, *args, **kwargs)

    monkeypatch.setattr(StepWindow, "flush", counting_flush)
    # log every 4, validate every 5, checkpoint every 4 steps of 10.
    task = ToyTask(steps=10, log_every=4, val_every=5, checkpoint_every=4)
    result = train(task, toy_config(), tmp_path, progress=False)
    assert flushed_at == [4, 5, 8, 10]
    assert len(result.losses) == 10 and all(math.isfinite(v) for v in result.losses)
