"""Sweep specs: parsing, and errors that name the spec file and the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.sweep.fakes import spec_dict
from toolkit.errors import ConfigError
from toolkit.sweep import (
    expand_sweep,
    format_value,
    load_sweep_spec,
)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"axis": {"mask.ratoi": [0.5]}},
            r"axes.mask.ratoi: unknown config field \(did you mean 'mask.ratio'\?\)",
        ),
        ({"axis": {"runtime.seed": [1, 2]}}, "runtime.seed: cannot be an axis; use 'seeds:'"),
        ({"axis": {"mask.ratio": 0.5}}, "axes.mask.ratio: expected a non-empty list"),
        (
            {"axis": {"mask.ratio": [0.6, 1.5]}},
            r"combination mask.ratio=1.5: mask.ratio: must be in \[0, 1\]",
        ),
        ({"axis": {"mask.ratio": [0.6, 0.60]}}, "would share the folder"),
        ({"top": {"sede": [1]}}, r"sede: unknown key \(did you mean 'seeds'\?\)"),
        ({"top": {"seeds": [1, 1]}}, "seeds: a seed is listed twice"),
        ({"top": {"datasets": []}}, "datasets: expected a non-empty list"),
        ({"top": {"datasets": ["pre.yaml"]}}, "has no labels"),
        ({"top": {"datasets": ["d1.yaml", "d1.yaml"]}}, "the name 'd1' is used twice"),
        (
            {"top": {"datasets": [{"synthetic": {"labelled": 4, "subjects": 3}}]}},
            "no unlabelled subjects",
        ),
        ({"top": {"pretrain_data": {"synthetic": {"subjects": 0}}}}, "subjects >= 1"),
        ({"top": {"pretrain_data": {"synthtic": {}}}}, "did you mean 'synthetic'"),
        ({"top": {"overrides": ["mask.variant=sparse"]}}, "mask.variant: must be one of"),
        ({"top": {"pretrained_checkpoint": "latest"}}, "must be final or best"),
        (
            {"top": {"overrides": ["finetune.steps=3"]}},
            "combination pretrained mask.ratio=0.6 mask.variant=dense finetune.schedule=sawtooth: "
            "finetune.warmup_fraction",
        ),
        ({"drop": "base"}, "base: missing"),
        ({"drop": "pretrain_data"}, "pretrain_data: missing"),
    ],
)
def test_spec_errors_name_the_key(tmp_path: Path, change: dict[str, Any], message: str) -> None:
    data = spec_dict(tmp_path)
    if "axis" in change:
        data["axes"] = change["axis"]
    data.update(change.get("top", {}))
    if "drop" in change:
        del data[change["drop"]]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=message) as info:
        expand_sweep(load_sweep_spec(path), tmp_path / "out")
    assert str(info.value).startswith(str(path))


def test_value_names() -> None:
    assert format_value(0.6) == "0.6" and format_value(3e-5) == "3e-05"
    assert format_value(True) == "true" and format_value(None) == "none"
    assert format_value((48, 48, 32)) == "48x48x32"
    assert format_value("/data/sets/brats.yaml") == "brats"
    assert format_value("warmup_poly") == "warmup_poly" and format_value("a b/c") == "c"
    assert format_value("a b") == "a-b"
