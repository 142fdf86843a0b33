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
