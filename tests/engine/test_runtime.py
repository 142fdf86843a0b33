"""Runtime resolution on CPU, seeding, RNG state round trips and model wrappers."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn

from toolkit.config import RuntimeConfig
from toolkit.engine.runtime import (
    autocast,
    get_rng_state,
    prepare_model,
    seed_everything,
    set_rng_state,
    setup_runtime,
    unwrap_model,
)
from toolkit.errors import ConfigError


def test_cpu_forces_fp32_with_a_note(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    rt = setup_runtime(RuntimeConfig(device="cpu", precision="bf16", channels_last=True))
    assert rt.device.type == "cpu" and rt.precision == "fp32" and not rt.channels_last
    assert any("bf16" in n for n in rt.notes) and any("channels_last" in n for n in rt.notes)
    assert rt.is_main and not rt.distributed and rt.world_size == 1
    assert not rt.pin_memory and rt.amp_dtype is None
    assert not rt.make_scaler().is_enabled()
    with autocast(rt):
        assert not torch.is_autocast_enabled("cpu")


def test_bad_devices_are_config_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(ConfigError, match="runtime.device"):
        setup_runtime(RuntimeConfig(device="tpu"))
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device"):
            setup_runtime(RuntimeConfig(device="cuda"))


def test_incomplete_torchrun_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(ConfigError, match="MASTER_ADDR"):
        setup_runtime(RuntimeConfig(device="cpu"))
    monkeypatch.setenv("RANK", "5")
    with pytest.raises(ConfigError, match="RANK=5"):
        setup_runtime(RuntimeConfig(device="cpu"))


def test_rng_state_round_trip_restores_every_generator(tmp_path) -> None:  # type: ignore[no-untyped-def]
    rt = setup_runtime(RuntimeConfig(device="cpu"), init_distributed=False)
    seed_everything(7)
    state = get_rng_state(rt)
    torch.save(state, tmp_path / "rng.pt")
    first = (random.random(), np.random.rand(), torch.rand(1).item())  # noqa: NPY002
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True), rt)
    again = (random.random(), np.random.rand(), torch.rand(1).item())  # noqa: NPY002
    assert first == again


def test_prepare_and_unwrap_model() -> None:
    rt = setup_runtime(RuntimeConfig(device="cpu"), init_distributed=False)
    net = nn.Linear(2, 2)
    assert prepare_model(net, rt) is net  # nothing to wrap on one CPU process

    class Compiled(nn.Module):  # what torch.compile returns: the module under ``_orig_mod``
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self._orig_mod = inner

    wrapped = Compiled(Compiled(net))
    assert unwrap_model(wrapped) is net
    assert list(wrapped.state_dict())[0].startswith("_orig_mod._orig_mod.")


# --------------------------------------------------------------------------------------------------
# CPU budget: threads and loader workers from the cores actually free


def test_cpu_budget_fits_idle_cores() -> None:
    from toolkit.engine.runtime import choose_cpu_budget

    assert choose_cpu_budget(0, 0, cores=2, busy=0) == (2, 0)  # quiet 2-core machine
    assert choose_cpu_budget(0, 0, cores=2, busy=1) == (1, 0)  # one core taken: 1 thread
    assert choose_cpu_budget(0, 2, cores=2, busy=1.2) == (1, 1)  # workers keep a core for the step
    assert choose_cpu_budget(0, 4, cores=16, busy=0) == (12, 4)
    assert choose_cpu_budget(0, 0, cores=2, busy=8) == (1, 0)  # never below one thread
    assert choose_cpu_budget(0, 8, cores=1, busy=0) == (1, 0)  # one core: no workers
    assert choose_cpu_budget(3, 2, cores=2, busy=2) == (3, 1)  # runtime.threads wins


def test_cgroup_quota_is_read(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from toolkit.engine.runtime import cgroup_cpu_limit

    path = tmp_path / "cpu.max"
    path.write_text("150000 100000\n")
    assert cgroup_cpu_limit(str(path)) == pytest.approx(1.5)
    path.write_text("max 100000\n")
    assert cgroup_cpu_limit(str(path)) is None
    path.write_text("garbage\n")
    assert cgroup_cpu_limit(str(path)) is None
    assert cgroup_cpu_limit(str(tmp_path / "missing")) is None


def test_setup_runtime_sets_threads_and_loader_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    import toolkit.engine.runtime as runtime

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(runtime, "available_cores", lambda: 4.0)
    monkeypatch.setattr(runtime, "busy_cores", lambda: 1.0)
    before = torch.get_num_threads()
    try:
        rt = setup_runtime(RuntimeConfig(device="cpu"), init_distributed=False)
        assert (rt.threads, rt.max_workers, torch.get_num_threads()) == (3, 3, 3)
        assert rt.loader_workers(2) == 2 and torch.get_num_threads() == 1  # 3 idle - 2 workers
        rt = setup_runtime(RuntimeConfig(device="cpu", threads=2), init_distributed=False)
        assert rt.loader_workers(8) == 3 and torch.get_num_threads() == 2  # the user's choice
        monkeypatch.setenv("OMP_NUM_THREADS", "1")  # e.g. torchrun's default
        rt = setup_runtime(RuntimeConfig(device="cpu"), init_distributed=False)
        assert torch.get_num_threads() == 1
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two processes share the 4 cores
        monkeypatch.delenv("OMP_NUM_THREADS")
        rt = setup_runtime(RuntimeConfig(device="cpu"), init_distributed=False)
        assert (rt.threads, rt.max_workers) == (1, 1)
    finally:
        torch.set_num_threads(before)


def test_prefetch_moves_volumes_one_batch_ahead() -> None:
    from dataclasses import dataclass

    from toolkit.engine.runtime import Runtime, prefetch_to_device

    @dataclass
    class FakeGpu(Runtime):
        @property
        def is_accelerator(self) -> bool:  # the copy path, with the CPU standing in for a GPU
            return True

    pulled: list[int] = []

    def source():  # type: ignore[no-untyped-def]
        for i in range(3):
            pulled.append(i)
            yield {"image": torch.full((1, 1, 2, 2, 2), float(i)), "index": torch.tensor([i])}

    got = []
    for batch in prefetch_to_device(source(), FakeGpu(device=torch.device("cpu"))):
        got.append(int(batch["index"]))
        assert len(pulled) == min(len(got) + 1, 3)  # the next batch was fetched before this step
        assert float(batch["image"].mean()) == got[-1]
    assert got == [0, 1, 2]
    plain = list(prefetch_to_device(iter([1, 2]), Runtime(device=torch.device("cpu"))))
    assert plain == [1, 2]
