"""Config: presets, YAML round trip, dotted overrides and clear errors naming the field."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from toolkit.config import (
    PRESETS,
    Config,
    apply_overrides,
    describe,
    from_dict,
    load_config,
    save_config,
)
from toolkit.errors import ConfigError


def test_paper_preset_matches_recipe() -> None:
    cfg = load_config("paper")
    assert cfg.model.name == "resenc_l"
    assert cfg.data.patch_size == (160, 160, 160)
    assert cfg.data.target_spacing_mm == (1.0, 1.0, 1.0)
    assert (cfg.mask.ratio, cfg.mask.block_size) == (0.75, 16)
    for optim in (cfg.pretrain.optim, cfg.finetune.optim):
        assert (optim.optimizer, optim.momentum, optim.weight_decay) == ("sgd", 0.99, 3e-5)
        assert (optim.poly_exponent, optim.grad_clip) == (0.9, 12.0)
    assert (cfg.pretrain.optim.lr, cfg.pretrain.optim.schedule) == (1e-2, "poly")
    assert cfg.pretrain.optim.warmup_steps == 0
    assert (cfg.pretrain.batch_size, cfg.pretrain.steps) == (6, 250_000)
    assert (cfg.finetune.optim.lr, cfg.finetune.optim.lr_scratch) == (1e-3, 1e-2)
    assert cfg.finetune.batch_size == 2


def test_configs_are_frozen() -> None:
    cfg = load_config("tiny")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.mask.ratio = 0.5  # type: ignore[misc]


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_yaml_round_trip(tmp_path, name: str) -> None:
    cfg = apply_overrides(load_config(name), ["mask.ratio_range=[0.6, 0.9]"])
    path = save_config(cfg, tmp_path / "c.yaml")
    assert load_config(path) == cfg
    assert yaml.safe_load(path.read_text())["preset"] == name


def test_overrides_parse_types() -> None:
    cfg = load_config(
        "tiny",
        [
            "mask.ratio=0.6",
            "data.patch_size=[32, 32, 32]",
            "mask.variant=dense",
            "pretrain.augment=false",
        ],
    )
    assert cfg.mask.ratio == 0.6
    assert cfg.data.patch_size == (32, 32, 32)
    assert cfg.mask.variant == "dense"
    assert cfg.pretrain.augment is False
    # ints are accepted for floats, the result is a float
    assert isinstance(load_config("tiny", ["pretrain.optim.lr=1"]).pretrain.optim.lr, float)


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("mask.ratoi=0.6", "mask.ratoi: unknown field (did you mean 'ratio'?)"),
        ("mask.ratio=1.5", "mask.ratio: must be in [0, 1]"),
        ("mask.ratio=abc", "mask.ratio: expected a number"),
        ("mask.variant=sparse", "mask.variant: must be one of dense, s3d"),
        ("data.patch_size=[32, 32]", "data.patch_size: expected 3 values"),
        ("data.patch_size=[32, 0, 32]", "data.patch_size: every entry must be > 0"),
        ("pretrain.steps=1.5", "pretrain.steps: expected an integer"),
        ("pretrain.augment=1", "pretrain.augment: expected true or false"),
        ("mask.ratio_range=[0.9, 0.6]", "mask.ratio_range: must be two numbers"),
        ("nosection.x=1", "nosection: unknown field"),
        ("mask.ratio", "an override must look like section.field=value"),
        ("pretrain.optim.lr=.nan", "pretrain.optim.lr: must be finite"),
        ("finetune.optim.lr_scratch=0", "finetune.optim.lr_scratch: must be > 0"),
    ],
)
def test_bad_overrides_name_the_field(override: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config("tiny", [override])
    assert fragment in str(err.value)


def test_cross_field_check() -> None:
    with pytest.raises(ConfigError, match="mask.input_mask_token"):
        load_config("tiny", ["mask.variant=s3d", "mask.input_mask_token=true"])


def test_yaml_with_unknown_key_and_bad_preset(tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("preset: tiny\nmodel:\n  nmae: resenc_m\n")
    with pytest.raises(ConfigError, match="model.nmae: unknown field"):
        load_config(bad)
    with pytest.raises(ConfigError, match="preset: unknown preset 'huge'"):
        from_dict({"preset": "huge"})
    with pytest.raises(ConfigError, match="neither a preset"):
        load_config(tmp_path / "missing.yaml")


def test_yaml_on_top_of_preset(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("preset: tiny\nmask:\n  ratio: 0.9\n")
    cfg = load_config(path)
    assert cfg.mask.ratio == 0.9
    assert cfg.model.name == load_config("tiny").model.name


def test_every_field_documented() -> None:
    rows = describe(Config)
    assert len(rows) > 50
    undocumented = [name for name, _, help_ in rows if not help_]
    assert undocumented == []


@pytest.mark.parametrize("text", ["3e-3", "3E-3", "3.e-3", "+3.0e-03"])
def test_exponent_numbers_parse_as_floats(text: str) -> None:
    # PyYAML reads these as strings (YAML 1.1); configs and overrides must still take them.
    cfg = load_config("tiny", [f"pretrain.optim.lr={text}"])
    assert cfg.pretrain.optim.lr == pytest.approx(3e-3)
    assert from_dict({"pretrain": {"optim": {"lr": text}}}).pretrain.optim.lr == pytest.approx(3e-3)


def test_a_word_is_still_not_a_number() -> None:
    with pytest.raises(ConfigError, match="pretrain.optim.lr: expected a number"):
        load_config("tiny", ["pretrain.optim.lr=fast"])
