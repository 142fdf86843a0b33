"""Label efficiency: the grid of runs, the tidy table and the Dice-vs-k plot."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from toolkit.config import Config, load_config
from toolkit.data.io import save_volume
from toolkit.data.manifest import Case, Manifest, save_manifest
from toolkit.data.sampling import ArrayPatchSource
from toolkit.engine.checkpoint import save_checkpoint
from toolkit.errors import ConfigError
from toolkit.label_efficiency import TABLE_COLUMNS, run_label_efficiency, run_name
from toolkit.models import build_mae
from toolkit.pretrain import PretrainTask
from toolkit.report import plot_dice_vs_k

LABELS = {0: "background", 1: "inner", 2: "outer"}


def _dataset(root: Path, n: int = 5) -> Path:
    cases = []
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, 20)] * 3, indexing="ij"))
    for i in range(n):
        r = np.sqrt((grid**2).sum(0)) * (1 + 0.05 * i)
        label = np.where(r < 0.45, 1, np.where(r < 0.9, 2, 0)).astype(np.uint8)
        image = np.choose(label, [0.0, 2.0, 1.0]).astype(np.float32)
        save_volume(image, affine, root / f"img{i}.nii.gz")
        save_volume(label, affine, root / f"lab{i}.nii.gz")
        cases.append(
            Case(
                case_id=f"c{i}",
                subject=f"s{i}",
                images={"image": Path(f"img{i}.nii.gz")},
                label=Path(f"lab{i}.nii.gz"),
                split="test" if i == n - 1 else "train",
            )
        )
    manifest = Manifest(
        name="toy",
        root=root,
        root_spec=".",
        channels=("image",),
        labels=LABELS,
        cases=tuple(cases),
    )
    return save_manifest(manifest, root / "toy.yaml")


@pytest.mark.slow
def test_label_efficiency_table_and_plot(tmp_path: Path) -> None:
    manifest = _dataset(tmp_path / "data")
    cfg = load_config(
        "tiny",
        {
            "data.finetune_manifest": str(manifest),
            "data.patch_size": [16, 16, 16],
            "data.target_spacing_mm": [2.0, 2.0, 2.0],
            "data.val_fraction": 0.25,
            "finetune.steps": 2,
            "finetune.val_every": 2,
            "finetune.schedule": "none",
            "finetune.augment": False,
        },
    )
    torch.manual_seed(0)
    mae = build_mae(cfg)
    task = PretrainTask(cfg, ArrayPatchSource({"a": np.zeros((1, 8, 8, 8), np.float32)}), ["a"])
    ckpt = save_checkpoint(
        tmp_path / "mae.pt",
        {"config": cfg.to_dict(), "plan": {}, "step": 0, **task.model_state(mae)},
    )
    out = tmp_path / "le"
    table = run_label_efficiency(cfg, ckpt, ks=(1, 0), seeds=(0, 1), out_dir=out, progress=False)

    assert list(table.columns) == list(TABLE_COLUMNS)
    # 2 k x 2 seeds x 2 arms x 1 test case x 2 labels
    assert len(table) == 16
    assert set(table["arm"]) == {"pretrained", "scratch"}
    assert sorted(set(table["k"])) == [1, 3]  # 0 = all = the 3 training cases left after validation
    assert set(table["case"]) == {"c4"}
    assert (out / "label_efficiency.csv").is_file() and (out / "dice_vs_k.png").is_file()
    assert (out / "runs" / run_name(1, "scratch", 1) / "checkpoints" / "final.pt").is_file()
    reread = pd.read_csv(out / "label_efficiency.csv")
    assert len(reread) == len(table)

    # A second call reuses every finished run (no training) and gives the same table.
    again = run_label_efficiency(cfg, ckpt, ks=(1, 0), seeds=(0, 1), out_dir=out, progress=False)
    pd.testing.assert_frame_equal(again, table)


def test_grid_configs_and_reuse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The grid logic without training: configs per run, pretrained only for that arm, reuse."""
    import toolkit.evaluate
    import toolkit.finetune

    calls: list[tuple[str, int, int, int, bool]] = []

    def fake_finetune(
        cfg: Config, out: Path, *, pretrained: Path | None, resume: bool, progress: bool
    ) -> Path:
        ft = cfg.finetune
        calls.append(
            (out.name, ft.num_train_cases, ft.train_subset_seed, cfg.runtime.seed, bool(pretrained))
        )
        ids = [f"c{i}" for i in range(ft.num_train_cases or 4)]
        save_checkpoint(out / "checkpoints" / "final.pt", {"task_state": {"train_ids": ids}})
        return out

    def fake_evaluate(
        run: Path, manifest: str, *, split: str, run_name: str, progress: bool
    ) -> pd.DataFrame:
        return pd.DataFrame(
            [
                {
                    "run": run_name,
                    "case": "t",
                    "label": 1,
                    "label_name": "a",
                    "dice": 0.5,
                    "hd95_mm": 1.0,
                }
            ]
        )

    monkeypatch.setattr(toolkit.finetune, "finetune", fake_finetune)
    monkeypatch.setattr(toolkit.evaluate, "evaluate", fake_evaluate)
    cfg = load_config("tiny", {"data.finetune_manifest": "toy.yaml"})
    table = run_label_efficiency(
        cfg, tmp_path / "mae.pt", ks=(2, 0), seeds=(7,), out_dir=tmp_path, progress=False
    )
    assert sorted(calls) == [
        ("k02_pretrained_seed7", 2, 7, 7, True),
        ("k02_scratch_seed7", 2, 7, 7, False),
        ("kall_pretrained_seed7", 0, 7, 7, True),
        ("kall_scratch_seed7", 0, 7, 7, False),
    ]
    assert sorted(set(zip(table["k_requested"], table["k"], strict=True))) == [(0, 4), (2, 2)]
    calls.clear()
    run_label_efficiency(
        cfg, tmp_path / "mae.pt", ks=(2, 0), seeds=(7,), out_dir=tmp_path, progress=False
    )
    assert calls == []  # finished runs are reused


def test_bad_arguments() -> None:
    cfg = load_config("tiny", {"data.finetune_manifest": "x.yaml"})
    with pytest.raises(ConfigError, match="at least one k"):
        run_label_efficiency(cfg, Path("x.pt"), ks=(), seeds=(0,))
    with pytest.raises(ConfigError, match=">= 0"):
        run_label_efficiency(cfg, Path("x.pt"), ks=(-1,), seeds=(0,))
    with pytest.raises(ConfigError, match="unknown"):
        run_label_efficiency(cfg, Path("x.pt"), ks=(1,), seeds=(0,), arms=("linear",))


def test_dice_vs_k_plot_has_one_line_per_arm() -> None:
    rows = [
        {"k": k, "arm": arm, "seed": seed, "dice": 0.5 + 0.01 * k}
        for k in (1, 3, 10)
        for arm in ("pretrained", "scratch")
        for seed in (0, 1)
    ]
    fig = plot_dice_vs_k(pd.DataFrame(rows))
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    assert len(ax.get_lines()) >= 2
