"""Learning-rate schedules and optimisers against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from tests.engine.toy import toy_config
from toolkit.engine.schedules import (
    build_optimizer,
    build_scheduler,
    lr_multiplier,
    make_lr_lambda,
)
from toolkit.errors import ConfigError


def test_poly_matches_nnunet_formula() -> None:
    # nnU-Net: lr = initial * (1 - step / max_steps) ** 0.9
    assert lr_multiplier(0, 1000) == 1.0
    assert lr_multiplier(250, 1000) == pytest.approx(0.75**0.9)
    assert lr_multiplier(999, 1000) == pytest.approx(0.001**0.9)
    assert lr_multiplier(1000, 1000) == 0.0
    assert lr_multiplier(500, 1000, poly_exponent=2.0) == pytest.approx(0.25)


def test_warmup_is_linear_then_the_schedule_runs_over_the_rest() -> None:
    values = [lr_multiplier(s, 110, schedule="cosine", warmup_steps=10) for s in range(12)]
    assert values[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert values[10] == 1.0  # decay starts after warm-up
    mid = lr_multiplier(60, 110, schedule="cosine", warmup_steps=10)
    assert mid == pytest.approx(0.5)  # half way through the 100 decay steps
    assert lr_multiplier(60, 110, schedule="poly", warmup_steps=10) == pytest.approx(0.5**0.9)
    assert lr_multiplier(70, 110, schedule="constant", warmup_steps=10) == 1.0


def test_bad_schedules_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="pretrain.optim.warmup_steps"):
        lr_multiplier(0, 10, warmup_steps=10)
    with pytest.raises(ConfigError, match="pretrain.optim.schedule"):
        lr_multiplier(0, 10, schedule="step")


def test_paper_optimizer_is_sgd_nesterov() -> None:
    cfg = toy_config()  # tiny preset keeps the paper's optim section apart from lr / momentum
    paper = toy_config(pretrain__optim__lr=1e-2, pretrain__optim__momentum=0.99).pretrain.optim
    opt = build_optimizer(torch.nn.Linear(2, 2).parameters(), paper)
    assert isinstance(opt, torch.optim.SGD)
    group = opt.param_groups[0]
    assert group["nesterov"] and group["momentum"] == 0.99
    assert group["lr"] == 1e-2 and group["weight_decay"] == 3e-5
    assert cfg.pretrain.optim.schedule == "poly" and cfg.pretrain.optim.grad_clip == 12.0


def test_adamw_with_warmup_and_cosine() -> None:
    optim = toy_config(
        pretrain__optim__optimizer="adamw",
        pretrain__optim__schedule="cosine",
        pretrain__optim__warmup_steps=2,
        pretrain__optim__lr=1e-3,
    ).pretrain.optim
    opt = build_optimizer(torch.nn.Linear(2, 2).parameters(), optim)
    assert isinstance(opt, torch.optim.AdamW)
    sched = build_scheduler(opt, optim, total_steps=6)
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expected = [lr_multiplier(s, 6, schedule="cosine", warmup_steps=2) * 1e-3 for s in range(6)]
    assert lrs == pytest.approx(expected)


def test_one_multiplier_per_param_group() -> None:
    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    optim = toy_config().pretrain.optim
    opt = build_optimizer(
        [{"params": a.parameters()}, {"params": b.parameters(), "lr": 1.0}], optim, lr=0.5
    )
    sched = build_scheduler(opt, optim, 10, lr_lambdas=[lambda s: 0.0, lambda s: 1.0])
    assert [g["lr"] for g in opt.param_groups] == [0.0, 1.0]
    with pytest.raises(ConfigError, match="2 parameter groups"):
        build_scheduler(opt, optim, 10, lr_lambdas=[lambda s: 1.0])
    assert sched.last_epoch == 0


def test_scheduler_state_is_weights_only_loadable(tmp_path) -> None:  # type: ignore[no-untyped-def]
    optim = toy_config().pretrain.optim
    opt = build_optimizer(torch.nn.Linear(2, 2).parameters(), optim)
    sched = build_scheduler(opt, optim, 10)
    for _ in range(3):
        opt.step()
        sched.step()
    torch.save(sched.state_dict(), tmp_path / "s.pt")
    state = torch.load(tmp_path / "s.pt", weights_only=True)
    fresh = build_scheduler(opt, optim, 10)
    fresh.load_state_dict(state)
    assert fresh.last_epoch == 3
    assert make_lr_lambda(10, optim)(3) == pytest.approx(math.pow(0.7, 0.9))


def test_finetune_section_has_no_schedule_of_its_own() -> None:
    # Fine-tuning's lr shape is finetune.schedule: without lr_lambdas the loop must not guess one.
    optim = toy_config().finetune.optim
    opt = build_optimizer(torch.nn.Linear(2, 2).parameters(), optim)
    assert opt.param_groups[0]["lr"] == optim.lr
    with pytest.raises(ConfigError, match="has no lr schedule"):
        build_scheduler(opt, optim, 10)


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_fused_optimiser_updates_like_the_default(optimizer: str) -> None:
    from toolkit.config import PretrainOptimConfig
    from toolkit.engine.schedules import build_optimizer

    cfg = PretrainOptimConfig(optimizer=optimizer, lr=0.1, momentum=0.9, weight_decay=1e-3)
    torch.manual_seed(0)
    start = [torch.randn(5, 3), torch.randn(7)]
    grads = [[torch.randn_like(p) for p in start] for _ in range(3)]
    results = []
    for fused in (False, True):
        params = [torch.nn.Parameter(p.clone()) for p in start]
        opt = build_optimizer(params, cfg, fused=fused)
        assert opt.defaults.get("fused") is (True if fused else None)
        for step in grads:
            for p, g in zip(params, step, strict=True):
                p.grad = g.clone()
            opt.step()
        results.append([p.detach() for p in params])
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b)
