"""Configs saved before each stage had its own optimiser still load; old names fail clearly."""

from __future__ import annotations

import pytest
import yaml

from toolkit.config import Config, describe, from_dict, load_config, save_config
from toolkit.config_legacy import migrate_config_dict
from toolkit.errors import ConfigError


def test_each_stage_has_its_own_optimiser_section(tmp_path) -> None:
    cfg = load_config("tiny", ["pretrain.optim.optimizer=adamw", "finetune.optim.lr=0.03"])
    assert (cfg.pretrain.optim.optimizer, cfg.finetune.optim.optimizer) == ("adamw", "sgd")
    assert (cfg.pretrain.optim.lr, cfg.finetune.optim.lr) == (1e-2, 0.03)
    names = [name for name, _, _ in describe(Config)]
    assert {"pretrain.optim.lr", "pretrain.optim.schedule", "finetune.optim.lr_scratch"} <= set(
        names
    )
    assert not any(n.startswith("optim.") for n in names)
    assert cfg.to_dict()["finetune"]["optim"]["lr"] == 0.03
    assert load_config(save_config(cfg, tmp_path / "c.yaml")) == cfg


@pytest.mark.parametrize(
    ("override", "points_to"),
    [
        ("optim.lr=0.003", "set pretrain.optim.lr and/or finetune.optim.lr"),
        ("optim.schedule=cosine", "set pretrain.optim.schedule"),
        ("finetune.lr_scratch=0.1", "moved to finetune.optim.lr_scratch"),
        ("finetune.lr_pretrained=0.1", "moved to finetune.optim.lr"),
    ],
)
def test_old_optim_override_names_the_new_fields(override: str, points_to: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config("tiny", [override])
    message = str(err.value)
    assert points_to in message and "\n" not in message


OLD_STYLE = {
    "preset": "tiny",
    "optim": {"optimizer": "adamw", "lr": 0.02, "momentum": 0.9, "schedule": "cosine"},
    "finetune": {"lr_pretrained": 0.004, "lr_scratch": 0.05, "steps": 7},
}


def _check_migrated(cfg: Config) -> None:
    pt, ft = cfg.pretrain.optim, cfg.finetune.optim
    # Shared fields go to both stages; the old optim.lr and schedule were pretraining's only.
    assert (pt.optimizer, pt.momentum, pt.lr, pt.schedule) == ("adamw", 0.9, 0.02, "cosine")
    assert (ft.optimizer, ft.momentum, ft.lr, ft.lr_scratch) == ("adamw", 0.9, 0.004, 0.05)
    assert cfg.finetune.steps == 7


def test_old_style_dict_migrates_with_one_note(caplog) -> None:
    with caplog.at_level("WARNING", logger="toolkit.config"):
        cfg = from_dict(OLD_STYLE, source="old.pt")
    _check_migrated(cfg)
    notes = [r.getMessage() for r in caplog.records]
    assert len(notes) == 1 and notes[0].startswith("old.pt: old config layout migrated")
    assert "optim.* -> pretrain.optim.* and finetune.optim.*" in notes[0]
    caplog.clear()
    with caplog.at_level("WARNING", logger="toolkit.config"):
        assert from_dict(cfg.to_dict()) == cfg  # a current config: nothing to say
    assert caplog.records == []


def test_old_style_yaml_and_run_folder_load(tmp_path, caplog) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(OLD_STYLE))
    with caplog.at_level("WARNING", logger="toolkit.config"):
        _check_migrated(load_config(path))
    assert len(caplog.records) == 1 and str(path) in caplog.records[0].getMessage()


def test_old_style_finetune_lr_without_optim_section() -> None:
    cfg = from_dict({"preset": "paper", "finetune": {"lr_pretrained": 0.007}})
    assert (cfg.finetune.optim.lr, cfg.pretrain.optim.lr) == (0.007, 1e-2)


def test_migration_leaves_its_input_alone() -> None:
    old = {"optim": {"lr": 0.1}, "finetune": {"lr_scratch": 0.2}}
    new, note = migrate_config_dict(old)
    assert old == {"optim": {"lr": 0.1}, "finetune": {"lr_scratch": 0.2}}
    assert new == {"pretrain": {"optim": {"lr": 0.1}}, "finetune": {"optim": {"lr_scratch": 0.2}}}
    assert note is not None and "finetune.lr_scratch -> finetune.optim.lr_scratch" in note
    with pytest.raises(ConfigError, match="optim.lr_max: unknown field"):
        migrate_config_dict({"optim": {"lr_max": 1.0}})
