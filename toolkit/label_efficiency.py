"""Label efficiency: Dice against the number of labelled training cases, pretrained vs scratch.

For every ``k`` in ``ks``, every seed and both arms, :func:`run_label_efficiency` fine-tunes on
``k`` labelled training cases (``finetune.num_train_cases = k``; a seed-dependent random subset of
subjects, ``finetune.train_subset_seed = seed``, so the spread covers both the subset and the
initialisation) and scores the ``best`` checkpoint on the test split. The held-out validation
cases that pick ``best`` are the same in every run (see :data:`toolkit.finetune.SPLIT_SEED`).

Outputs in ``out_dir``: one run folder per (k, arm, seed), ``label_efficiency.csv`` (tidy: one row
per k x arm x seed x case x label) and ``dice_vs_k.png``. Finished runs are reused and unfinished
ones resumed, so an interrupted study continues where it stopped.

Example:
    >>> from toolkit.config import load_config
    >>> cfg = load_config("tiny", {"data.finetune_manifest": "labelled.yaml"})  # doctest: +SKIP
    >>> ckpt = Path("runs/mae/checkpoints/final.pt")
    >>> table = run_label_efficiency(cfg, ckpt, ks=(1, 3), seeds=(0, 1))  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from toolkit.config import Config
from toolkit.errors import ConfigError

if TYPE_CHECKING:
    import pandas as pd

PathLike = str | os.PathLike[str]

ARMS = ("pretrained", "scratch")
TABLE_FILE = "label_efficiency.csv"
PLOT_FILE = "dice_vs_k.png"
TABLE_COLUMNS = (
    "k",
    "k_requested",
    "arm",
    "seed",
    "case",
    "label",
    "label_name",
    "dice",
    "hd95_mm",
)


def run_name(k: int, arm: str, seed: int) -> str:
    """Folder name of one run, e.g. ``k03_pretrained_seed1`` (``kall`` for k = 0)."""
    return f"k{'all' if k == 0 else f'{k:02d}'}_{arm}_seed{seed}"


def run_label_efficiency(
    cfg: Config,
    pretrained_ckpt: Path,
    ks: Sequence[int] = (1, 3, 0),
    seeds: Sequence[int] = (0, 1),
    out_dir: PathLike = "runs/label_efficiency",
    *,
    split: str = "test",
    arms: Sequence[str] = ARMS,
    progress: bool = True,
) -> pd.DataFrame:
    """Fine-tune every (k, arm, seed), evaluate on ``split`` and plot Dice against k.

    Args:
        cfg: fine-tuning config (``data.finetune_manifest`` with a ``test`` split).
        pretrained_ckpt: pretraining checkpoint of the ``pretrained`` arm.
        ks: numbers of labelled training cases (0 = all).
        seeds: seeds; each sets ``runtime.seed`` and ``finetune.train_subset_seed``.
        out_dir: study folder.
        split: manifest split to score.
        arms: ``pretrained`` and/or ``scratch``.
        progress: progress bars.

    Returns:
        The tidy table of :data:`TABLE_COLUMNS` (``k`` = training cases actually used).

    Raises:
        ConfigError: empty ``ks`` / ``seeds``, negative k, unknown arm or no manifest.
    """
    import pandas as pd

    from toolkit.engine.checkpoint import checkpoint_path, load_checkpoint
    from toolkit.evaluate import evaluate
    from toolkit.finetune import finetune_or_reuse
    from toolkit.report import plot_dice_vs_k
    from toolkit.visualize import save_figure

    if not ks or not seeds:
        raise ConfigError("label efficiency: give at least one k and one seed")
    if any(k < 0 for k in ks):
        raise ConfigError(f"ks: numbers of training cases must be >= 0 (0 = all), got {tuple(ks)}")
    bad = [a for a in arms if a not in ARMS]
    if bad:
        raise ConfigError(f"arms: unknown {', '.join(bad)} (known: {', '.join(ARMS)})")
    if not cfg.data.finetune_manifest:
        raise ConfigError("data.finetune_manifest: label efficiency needs a labelled manifest")
    out = Path(out_dir)
    runs_dir = out / "runs"
    frames = []
    for k in ks:
        for seed in seeds:
            for arm in arms:
                run_cfg = cfg.replace(
                    {
                        "finetune.num_train_cases": int(k),
                        "finetune.train_subset_seed": int(seed),
                        "runtime.seed": int(seed),
                    }
                )
                run = runs_dir / run_name(k, arm, seed)
                finetune_or_reuse(
                    run_cfg,
                    run,
                    pretrained=pretrained_ckpt if arm == "pretrained" else None,
                    progress=progress,
                )
                final = checkpoint_path(run, "final")
                used = len(load_checkpoint(final)["task_state"]["train_ids"])
                df = evaluate(
                    run,
                    cfg.data.finetune_manifest,
                    split=split,
                    run_name=run.name,
                    progress=progress,
                )
                df = df.assign(k=used, k_requested=int(k), arm=arm, seed=int(seed))
                frames.append(df[list(TABLE_COLUMNS)])
    table = pd.concat(frames, ignore_index=True)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / (TABLE_FILE + ".tmp")
    table.to_csv(tmp, index=False)
    tmp.replace(out / TABLE_FILE)
    save_figure(plot_dice_vs_k(table, title="Label efficiency"), out / PLOT_FILE)
    return table


__all__ = ["ARMS", "TABLE_COLUMNS", "run_label_efficiency", "run_name"]
