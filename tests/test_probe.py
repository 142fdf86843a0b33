"""Probes of a pretraining run: gap and verdict, train/val cases, the ``mae3d probe`` command."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from toolkit.cli import main
from toolkit.config import load_config
from toolkit.data.io import save_volume
from toolkit.data.manifest import Case, Manifest, load_manifest, save_manifest
from toolkit.data.sampling import split_by_subject
from toolkit.errors import DataError
from toolkit.pretrain import pretrain
from toolkit.probe import (
    ProbeResult,
    format_probe,
    probe_cases,
    summarize_probe,
    verdict,
    write_probe,
)

TOY_LABELS = {0: "background", 1: "band", 2: "high"}


def test_gap_is_paired_by_seed_and_judged_against_its_spread() -> None:
    rows = []
    for seed, (mae, rnd) in enumerate([(0.80, 0.70), (0.90, 0.74), (0.85, 0.78)]):
        rows += [("linear", "mae", seed, "mean", "mean", mae)]
        rows += [("linear", "random", seed, "mean", "mean", rnd)]
    table = pd.DataFrame(rows, columns=["probe", "encoder", "seed", "label", "label_name", "dice"])
    summary, gaps = summarize_probe(table)
    # Per-seed gaps 0.10, 0.16, 0.07: mean 0.11, sd 0.0458.
    assert gaps.loc[0, "gap"] == pytest.approx(0.11)
    assert gaps.loc[0, "sd"] == pytest.approx(np.std([0.10, 0.16, 0.07], ddof=1))
    row = summary[summary["encoder"] == "random"].iloc[0]
    assert row["mean"] == pytest.approx(0.74) and row["n"] == 3
    assert verdict(0.11, 0.0458) == "MAE ahead of random by more than the spread"
    assert verdict(-0.05, 0.02) == "MAE behind random by more than the spread"
    assert verdict(0.01, 0.02) == "MAE within the spread of random"
    assert "one seed" in verdict(0.2, float("nan"))
    one = table[table["seed"] == 0]
    text = format_probe(*summarize_probe(one))
    assert "linear  mae      0.800\n" in text  # one seed: no sd to show
    assert "+0.100 (n=1): one seed" in text


def test_one_seed_probe_json_is_strict(tmp_path: Path) -> None:
    rows = [("mlp", "mae", 0, "mean", "mean", 0.8), ("mlp", "random", 0, "mean", "mean", 0.7)]
    table = pd.DataFrame(rows, columns=["probe", "encoder", "seed", "label", "label_name", "dice"])
    summary, gaps = summarize_probe(table)
    assert np.isnan(gaps.loc[0, "sd"])  # one seed: no spread
    write_probe(ProbeResult(table, summary, gaps), tmp_path)

    def refuse(name: str) -> None:
        raise ValueError(f"probe.json holds {name}, which strict JSON readers refuse")

    saved = json.loads((tmp_path / "probe.json").read_text(), parse_constant=refuse)
    assert saved["gaps"][0]["sd"] is None and saved["gaps"][0]["gap"] == pytest.approx(0.1)


def _manifest(splits: list[str | None], subjects: list[str] | None = None) -> Manifest:
    cases = tuple(
        Case(
            case_id=f"c{i}",
            subject=(subjects or [f"s{j}" for j in range(len(splits))])[i],
            images={"image": Path(f"img{i}.nii.gz")},
            label=Path(f"lab{i}.nii.gz"),
            split=split,
        )
        for i, split in enumerate(splits)
    )
    return Manifest(
        name="toy",
        root=Path("."),
        root_spec=".",
        channels=("image",),
        labels=TOY_LABELS,
        cases=cases,
    )


def test_validation_cases_never_include_test() -> None:
    cfg = load_config("tiny", {"data.val_fraction": 0.25})
    train, val = probe_cases(cfg, _manifest(["train", "val", "train", "test"]))
    assert (train, val) == (["c0", "c2"], ["c1"])
    # No val split: the subjects fine-tuning holds out (seed 0, data.val_fraction).
    m = _manifest(["train", "train", "train", "train", "test"])
    train, val = probe_cases(cfg, m)
    ids = ["c0", "c1", "c2", "c3"]
    assert (train, val) == split_by_subject(ids, lambda c: f"s{c[1]}", 0.25, seed=0)
    assert len(val) == 1 and "c4" not in train + val
    with pytest.raises(DataError, match="split: val"):
        probe_cases(cfg, _manifest(["train", "train", "test"], ["s0", "s0", "s1"]))


# --------------------------------------------------------------------------------------------------
# The command on a tiny pretraining run


def _phantom(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, 16)] * 3, indexing="ij"))
    r = np.sqrt(((grid / rng.uniform(0.6, 0.85, size=3)[:, None, None, None]) ** 2).sum(0))
    label = np.zeros(r.shape, np.uint8)
    label[r < 1.0] = 2
    label[r < 0.55] = 1
    image = np.choose(label, [0.0, 2.0, 1.0]) + 0.1 * rng.standard_normal(r.shape)
    return image.astype(np.float32), label


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("probe")
    data = root / "data"
    cases, pre = [], []
    for i, split in enumerate(["train", "train", "val", "test"]):
        image, label = _phantom(i)
        save_volume(image, np.diag([2.0, 2.0, 2.0, 1.0]), data / f"img{i}.nii.gz")
        save_volume(label, np.diag([2.0, 2.0, 2.0, 1.0]), data / f"lab{i}.nii.gz")
        images = {"image": Path(f"img{i}.nii.gz")}
        cases.append(Case(f"c{i}", f"s{i}", images, label=Path(f"lab{i}.nii.gz"), split=split))
        pre.append(Case(f"c{i}", f"s{i}", images))
    labels = {0: "background", 1: "inner", 2: "outer"}
    kw = {"root": data, "root_spec": ".", "channels": ("image",)}
    labelled = save_manifest(
        Manifest(name="toy", labels=labels, cases=tuple(cases), **kw), data / "toy.yaml"
    )
    unlabelled = save_manifest(Manifest(name="toy_pre", cases=tuple(pre), **kw), data / "pre.yaml")
    cfg = load_config(
        "tiny",
        {
            "data.pretrain_manifest": str(unlabelled),
            "data.patch_size": [16, 16, 16],
            "data.target_spacing_mm": [2.0, 2.0, 2.0],
            "data.val_fraction": 0.25,
            "pretrain.steps": 2,
            "pretrain.val_every": 2,
            "pretrain.checkpoint_every": 2,
            "pretrain.snapshot_every": 100,
        },
    )
    return pretrain(cfg, root / "runs" / "mae", progress=False), labelled


def test_probe_command_end_to_end(
    tiny_run: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    run, labelled = tiny_run
    out = run.parent / "probe_out"
    with pytest.raises(SystemExit) as info:
        main(
            ["probe", str(run), "--manifest", str(labelled), "--seeds", "2", "--out", str(out)]
            + ["--steps", "40", "--voxels-per-class", "300", "--device", "cpu"]
        )
    assert info.value.code == 0
    printed = capsys.readouterr().out
    assert "linear  mae" in printed and "mlp     random" in printed
    assert "MAE - random" in printed
    saved = json.loads((out / "probe.json").read_text())
    assert saved["info"]["train_cases"] == ["c0", "c1"] and saved["info"]["val_cases"] == ["c2"]
    assert len(saved["rows"]) == 2 * 4 * 3
    assert all(0.0 <= r["dice"] <= 1.0 for r in saved["rows"])
    assert len(saved["gaps"]) == 2 and all(g["sd"] is not None for g in saved["gaps"])
    assert (out / "probe.png").stat().st_size > 0
    assert "| probe | encoder |" in (out / "probe.md").read_text()


def test_probe_command_bad_inputs_are_one_line(
    tiny_run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run, labelled = tiny_run
    unlabelled = labelled.parent / "pre.yaml"
    # One training subject and a test case: no val split, and no subject to hold out.
    one = replace(load_manifest(labelled).subset(["c0", "c3"]), name="toy_one")
    no_val = save_manifest(one, labelled.parent / "one.yaml")
    cases = [
        (["probe", str(tmp_path), "--manifest", str(labelled)], "not a pretraining run folder"),
        (["probe", str(run), "--manifest", str(unlabelled)], "manifest has no labels"),
        (["probe", str(run), "--manifest", str(no_val)], "no validation cases"),
        (["probe", str(run), "--manifest", str(labelled), "--seeds", "0"], "--seeds"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
