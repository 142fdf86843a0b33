"""The end-to-end demo behind ``make demo`` / ``mae3d demo``: from nothing to a report.

Stages (each timed; the whole run is sized for about 10 minutes on 2 CPU cores):

1. **synth** — synthetic brains with exact tissue labels (:mod:`toolkit.data.synthetic`): unlabelled
   pretraining subjects and other, labelled subjects split train / test; plus the real MNI152
   template with tissue labels (:mod:`toolkit.data.mni`) as a second test set.
2. **check** — :func:`toolkit.data.validate.check_manifests` over all three manifests (files,
   grids, labels, subject leakage between pretraining and labelled sets).
3. **preprocess** — the three caches (:func:`toolkit.data.preprocess.preprocess_manifest`).
4. **pretrain** — S3D MAE on the ``tiny`` ResEnc.
5. **sweep** — both arms (pretrained, scratch) fine-tuned on the same few labelled subjects with
   the same grid of peak lr x schedule and the same number of steps; each arm keeps the setting
   with the best *validation* Dice (held-out training subjects, never the test set). The paper's
   long-run values (1e-3 with warm-up vs 1e-2) are not assumed to suit a run this short.
6. **final** — each arm's chosen setting trained for ``final_steps`` (the sweep run is reused when
   ``final_steps == sweep_steps``).
7. **probe** — did pretraining learn features worth transferring? The encoder is frozen and only
   the decoder trained, once with the MAE encoder and once with an untrained (random) one, same lr,
   steps and seeds; their validation Dice is compared. A probe at the level of random features says
   the MAE has not (yet) learnt anything the segmentation can use, whatever the test table says.
8. **evaluate** — sliding-window prediction of the synthetic test subjects and MNI152, Dice / HD95
   on the original grids.
9. **report** — ``DIR/report.md`` with the Dice table, the chosen schedules, loss curves, a
   reconstruction figure, segmentation overlays and the Dice plot.

Example:
    >>> result = run_demo("demo_out")  # doctest: +SKIP
    >>> print(result.table)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from toolkit.config import Config, load_config
from toolkit.errors import DataError, TrainingError

if TYPE_CHECKING:
    import pandas as pd

PathLike = str | os.PathLike[str]

ARMS = ("pretrained", "scratch")
#: Manifests are named ``demo_pretrain`` and ``demo_labelled`` (their caches likewise).
DATASET_NAME = "demo"


@dataclass(frozen=True)
class DemoSettings:
    """Sizes of the demo (defaults: the ``make demo`` run).

    Attributes:
        num_pretrain_subjects: unlabelled synthetic subjects for pretraining.
        num_labelled: labelled synthetic subjects (``test_fraction`` of them are test).
        test_fraction: share of labelled subjects in the test split.
        data_spacing_mm: voxel size the synthetic subjects are drawn at.
        target_spacing_mm: cache spacing (everything is resampled to it, MNI152 included).
        data_seed: seed of the synthetic data set.
        seed: seed of pretraining and fine-tuning.
        pretrain_patch: pretraining patch edge (voxels).
        pretrain_steps: MAE steps.
        finetune_patch: fine-tuning patch edge (voxels).
        num_train_cases: labelled training subjects per fine-tuning run ("a few").
        val_fraction: share of the labelled training subjects held out for validation Dice.
        batch_size: batch of pretraining and fine-tuning.
        sweep_lrs: peak learning rates tried for each arm.
        sweep_schedules: schedules tried for each arm.
        sweep_steps: steps of each sweep run.
        final_steps: steps of each arm's final runs.
        val_every: validation interval of fine-tuning runs (steps).
        final_seeds: seeds of each arm's final runs (``seed`` reuses the sweep run when
            ``final_steps == sweep_steps``).
        probe_seeds: seeds of the frozen-encoder probe (MAE encoder vs random encoder); empty
            skips the probe.
    """

    num_pretrain_subjects: int = 12
    num_labelled: int = 8
    test_fraction: float = 0.25
    data_spacing_mm: float = 2.0
    target_spacing_mm: float = 2.5
    data_seed: int = 0
    seed: int = 0
    # More MAE steps on smaller patches rather than fewer on larger ones, for the same CPU time:
    # in probes, 400 steps at 48^3 left the pretrained arm below scratch, 1200 at 32^3 did not.
    pretrain_patch: int = 32
    pretrain_steps: int = 1000
    finetune_patch: int = 32
    num_train_cases: int = 3
    val_fraction: float = 0.34
    batch_size: int = 2
    # Short SGD runs (momentum 0.99) want a higher peak lr than the paper's 250k-step 1e-3: in
    # probes of this demo 1e-3 and 3e-3 had barely started to learn after 150 steps in either arm.
    sweep_lrs: tuple[float, ...] = (3e-3, 1e-2, 3e-2)
    sweep_schedules: tuple[str, ...] = ("warmup_poly", "sawtooth")
    # Sweep runs as long as the final ones (and reused as such): a shorter sweep picked a setting
    # in probes that was best at 60 steps and poor at 150.
    sweep_steps: int = 120
    final_steps: int = 120
    val_every: int = 60
    # Each arm's chosen setting is trained with these seeds (initialisation, patch sampling,
    # augmentation) and the table reports mean and spread over them: one seed differences of a
    # few Dice points were run-to-run noise in probes.
    final_seeds: tuple[int, ...] = (0, 1, 2)
    # Frozen-encoder probe, sweep_steps long, at the pretrained arm's chosen lr: in probes of this
    # demo a 1-seed gap of 0.02-0.05 between the two encoders reversed with the next seed. Probes
    # (validation Dice, 3 seeds) found the MAE encoder level with a random one after 1000 or 3000
    # SGD steps and after 1000 AdamW steps (lr 1e-3 or 3e-3); an apparent +0.07 with AdamW was the
    # fine-tuning optimiser (optim.* was shared then), a random encoder gained as much from it.
    probe_seeds: tuple[int, ...] = (0, 1, 2)


#: A smoke-test size: every stage runs, nothing is learnt (``mae3d demo --quick``, tests).
QUICK = DemoSettings(
    num_pretrain_subjects=3,
    num_labelled=5,
    test_fraction=0.2,
    data_spacing_mm=3.0,
    target_spacing_mm=3.0,
    pretrain_patch=32,
    pretrain_steps=4,
    finetune_patch=32,
    num_train_cases=2,
    val_fraction=0.34,
    sweep_lrs=(1e-2,),
    sweep_schedules=("warmup_poly", "sawtooth"),
    sweep_steps=4,
    final_steps=4,
    val_every=2,
    final_seeds=(0, 1),
    probe_seeds=(0,),
)


@dataclass
class DemoResult:
    """What :func:`run_demo` produced.

    Attributes:
        table: the printed Dice table (Markdown).
        report: path of ``report.md``.
        seconds: wall time of the whole demo.
        cpu_seconds: CPU time of the whole demo (all of it runs in this process); on a shared
            machine this, not the wall time, tells what the demo costs.
        stage_seconds: wall time per stage.
        chosen: arm -> chosen ``{"lr", "schedule", "val_dice"}``.
        metrics: the tidy evaluation table of both arms on both test sets.
        sweep: one row per sweep run.
        probe: one row per frozen-encoder probe run: ``encoder`` ("mae" or "random"), ``seed``,
            ``val_dice`` (empty without probe seeds).
    """

    table: str
    report: Path
    seconds: float
    cpu_seconds: float
    stage_seconds: dict[str, float]
    chosen: dict[str, dict[str, Any]]
    metrics: pd.DataFrame
    sweep: pd.DataFrame
    probe: pd.DataFrame


class _Timer:
    """Wall and CPU seconds per stage (CPU time of this process: everything runs in it)."""

    def __init__(self, echo: Callable[[str], None]) -> None:
        self.seconds: dict[str, float] = {}
        self.cpu_seconds: dict[str, float] = {}
        self.echo = echo

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.echo(f"== {name}")
        start, start_cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.seconds[name] = time.perf_counter() - start
            self.cpu_seconds[name] = time.process_time() - start_cpu
            self.echo(
                f"   {name}: {self.seconds[name]:.0f} s wall, {self.cpu_seconds[name]:.0f} s CPU"
            )


def demo_config(settings: DemoSettings, out: Path) -> Config:
    """The ``tiny`` preset sized by ``settings``, with the demo's data and cache folders."""
    s = settings
    spacing = [s.target_spacing_mm] * 3
    return load_config(
        "tiny",
        {
            "data.pretrain_manifest": str(out / "data" / "pretrain.yaml"),
            "data.finetune_manifest": str(out / "data" / "labelled.yaml"),
            "data.cache_dir": str(out / "cache"),
            "data.target_spacing_mm": spacing,
            "data.patch_size": [s.pretrain_patch] * 3,
            # Pretraining holds out one subject in ten; fine-tuning overrides it (see below).
            "data.val_fraction": 0.1,
            "data.num_workers": 0,
            "pretrain.steps": s.pretrain_steps,
            "pretrain.batch_size": s.batch_size,
            "pretrain.val_every": max(1, s.pretrain_steps // 4),
            "pretrain.checkpoint_every": s.pretrain_steps,
            "pretrain.snapshot_every": s.pretrain_steps,
            "pretrain.log_every": max(1, s.pretrain_steps // 40),
            "finetune.batch_size": s.batch_size,
            "finetune.num_train_cases": s.num_train_cases,
            "finetune.log_every": max(1, s.sweep_steps // 12),
            "evaluate.overlap": 0.5,
            "evaluate.sw_batch_size": 2,
            "runtime.device": "cpu",
            "runtime.precision": "fp32",
            "runtime.seed": s.seed,
        },
    )


def _finetune_config(
    cfg: Config,
    settings: DemoSettings,
    steps: int,
    lr: float,
    schedule: str,
    arm: str,
    seed: int | None = None,
) -> Config:
    lr_key = "finetune.optim.lr" if arm == "pretrained" else "finetune.optim.lr_scratch"
    schedule_key = "finetune.schedule" if arm == "pretrained" else "finetune.schedule_scratch"
    return cfg.replace(
        {
            "data.patch_size": [settings.finetune_patch] * 3,
            "data.val_fraction": settings.val_fraction,
            "finetune.steps": steps,
            "finetune.val_every": min(settings.val_every, steps),
            "finetune.checkpoint_every": steps,
            "finetune.log_every": max(1, steps // 15),
            lr_key: lr,
            schedule_key: schedule,
            "runtime.seed": settings.seed if seed is None else seed,
        }
    )


def _best_val_dice(run: Path) -> float:
    from toolkit.engine.checkpoint import checkpoint_path, load_checkpoint

    best = load_checkpoint(checkpoint_path(run, "best")).get("best") or {}
    value = best.get("value")
    return float("nan") if value is None else float(value)


def dice_table(metrics: pd.DataFrame) -> pd.DataFrame:
    """Mean Dice per test set and label for each arm, its spread over seeds, and the difference.

    Each seed's Dice is first averaged over test cases; the table gives the mean and standard
    deviation of those per-seed values (sd 0 with one seed), plus a ``mean`` row per test set
    (averaged over labels too) and ``difference`` = pretrained - scratch of the means.

    Args:
        metrics: tidy evaluation rows with columns ``dataset``, ``label_name``, ``arm``, ``dice``
            and optionally ``seed``.

    Returns:
        Columns ``dataset``, ``label``, then ``<arm>`` and ``<arm>_sd`` per arm, ``difference``.
    """
    import pandas as pd

    df = metrics if "seed" in metrics.columns else metrics.assign(seed=0)
    per_label = df.groupby(["dataset", "label_name", "arm", "seed"], sort=False)["dice"].mean()
    per_set = df.groupby(["dataset", "arm", "seed"], sort=False)["dice"].mean()
    per_set = per_set.reset_index().assign(label_name="mean")
    seeds = pd.concat([per_label.reset_index(), per_set], ignore_index=True)
    stats = seeds.groupby(["dataset", "label_name", "arm"], sort=False)["dice"].agg(["mean", "std"])
    stats["std"] = stats["std"].fillna(0.0)
    wide = stats["mean"].unstack("arm")
    spread = stats["std"].unstack("arm").add_suffix("_sd")
    table = pd.concat([wide, spread], axis=1).reset_index()
    table = table.sort_values("dataset", kind="stable").reset_index(drop=True)
    arms = [a for a in ARMS if a in wide.columns]
    ordered = ["dataset", "label_name"] + [c for a in arms for c in (a, f"{a}_sd")]
    table = table[ordered]
    if {"pretrained", "scratch"} <= set(arms):
        table["difference"] = table["pretrained"] - table["scratch"]
    return table.rename(columns={"label_name": "label"})


def format_dice_table(table: pd.DataFrame) -> str:
    """:func:`dice_table` as Markdown with ``mean ± sd`` cells."""
    arms = [a for a in ARMS if a in table.columns]
    header = ["test set", "label", *arms] + (["difference"] if "difference" in table else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * 2 + "---:|" * (len(header) - 2)]
    for row in table.to_dict(orient="records"):
        cells = [str(row["dataset"]), str(row["label"])]
        cells += [f"{row[a]:.3f} ± {row[f'{a}_sd']:.3f}" for a in arms]
        if "difference" in row:
            cells.append(f"{row['difference']:+.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_demo(
    out_dir: PathLike = "demo_out",
    *,
    settings: DemoSettings | None = None,
    quick: bool = False,
    echo: Callable[[str], None] | None = None,
) -> DemoResult:
    """Run the whole demo into ``out_dir`` (see the module docstring).

    Args:
        out_dir: demo folder: ``data/``, ``cache/``, ``runs/``, ``report.md``, ``figures/``.
        settings: sizes (default :class:`DemoSettings`, or :data:`QUICK` with ``quick``).
        quick: smoke-test sizes (every stage runs; the numbers mean nothing).
        echo: where progress lines go (default: ``tqdm.write``).

    Returns:
        A :class:`DemoResult`; the table is also printed.

    Raises:
        DataError: the generated data fail the manifest check.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    from toolkit.data.mni import write_mni152_case
    from toolkit.data.preprocess import preprocess_manifest
    from toolkit.data.synthetic import write_synthetic_dataset
    from toolkit.data.validate import check_manifests
    from toolkit.engine.checkpoint import checkpoint_path
    from toolkit.evaluate import evaluate
    from toolkit.finetune import finetune_or_reuse
    from toolkit.pretrain import pretrain

    say = echo or tqdm.write
    s = settings if settings is not None else (QUICK if quick else DemoSettings())
    out = Path(out_dir)
    data = out / "data"
    runs = out / "runs"
    _claim_folder(out, s)
    timer = _Timer(say)
    started, started_cpu = time.perf_counter(), time.process_time()
    cfg = demo_config(s, out)

    with timer.stage("synth"):
        paths = write_synthetic_dataset(
            data,
            s.num_pretrain_subjects,
            s.num_labelled,
            s.data_seed,
            spacing_mm=s.data_spacing_mm,
            test_fraction=s.test_fraction,
            name=DATASET_NAME,
            workers=1,
            progress=False,
        )
        mni = write_mni152_case(data)

    manifests = {"pretrain": paths["pretrain"], "labelled": paths["labelled"], "mni152": mni}
    with timer.stage("check"):
        problems = check_manifests(list(manifests.values()), progress=False)
        if problems:
            raise DataError(
                "demo data failed the manifest check:\n" + "\n".join(str(p) for p in problems)
            )

    with timer.stage("preprocess"):
        from toolkit.data.manifest import load_manifest

        for path in manifests.values():
            m = load_manifest(path)
            preprocess_manifest(
                m,
                out / "cache" / m.name,
                target_spacing_mm=cfg.data.target_spacing_mm,
                image_order=cfg.data.image_order,
                workers=0,
                progress=False,
            )

    mae_run = runs / "pretrain"
    with timer.stage("pretrain"):
        if not checkpoint_path(mae_run, "final").is_file():
            resume = checkpoint_path(mae_run, "latest").is_file()
            pretrain(cfg, mae_run, resume=resume, progress=False)
    ckpt = checkpoint_path(mae_run, "final")

    def run_finetune(
        run: Path, arm: str, steps: int, lr: float, schedule: str, seed: int | None = None
    ) -> bool:
        """Train (or reuse) one run; False if it diverged (a non-finite loss)."""
        run_cfg = _finetune_config(cfg, s, steps, lr, schedule, arm, seed)
        try:
            finetune_or_reuse(
                run_cfg, run, pretrained=ckpt if arm == "pretrained" else None, progress=False
            )
        except TrainingError as exc:
            if "non-finite" not in str(exc):
                raise
            say(f"   {run.name}: diverged ({exc}); counted as validation Dice NaN")
            return False
        return True

    rows = []
    with timer.stage("sweep"):
        for arm in ARMS:
            for schedule in s.sweep_schedules:
                for lr in s.sweep_lrs:
                    run = runs / "sweep" / f"{arm}_{schedule}_lr{lr:g}"
                    ok = run_finetune(run, arm, s.sweep_steps, lr, schedule)
                    rows.append(
                        {
                            "arm": arm,
                            "schedule": schedule,
                            "lr": lr,
                            "val_dice": _best_val_dice(run) if ok else float("nan"),
                            "run": str(run),
                        }
                    )
                    val = rows[-1]["val_dice"]
                    say(f"   {arm:10s} {schedule:11s} lr {lr:<6g} val Dice {val:.3f}")
    sweep = pd.DataFrame(rows)
    chosen: dict[str, dict[str, Any]] = {}
    for arm in ARMS:
        arm_rows = sweep[sweep["arm"] == arm]
        best = arm_rows.loc[arm_rows["val_dice"].fillna(-1.0).idxmax()]
        chosen[arm] = {
            "lr": float(best["lr"]),
            "schedule": str(best["schedule"]),
            "val_dice": float(best["val_dice"]),
            "run": str(best["run"]),
        }
        say(
            f"   {arm}: chose {best['schedule']} with peak lr {best['lr']:g} "
            f"(validation Dice {best['val_dice']:.3f})"
        )

    # final_runs[arm][seed]; the first seed's run is the one shown in figures.
    final_runs: dict[str, dict[int, Path]] = {arm: {} for arm in ARMS}
    with timer.stage("final"):
        for arm in ARMS:
            c = chosen[arm]
            for seed in s.final_seeds:
                if seed == s.seed and s.final_steps == s.sweep_steps:
                    final_runs[arm][seed] = Path(c["run"])
                    continue
                run = runs / "final" / f"{arm}_seed{seed}"
                if not run_finetune(run, arm, s.final_steps, c["lr"], c["schedule"], seed):
                    raise TrainingError(f"{run}: the chosen setting diverged with seed {seed}")
                final_runs[arm][seed] = run

    probe_rows = []
    if s.probe_seeds:
        with timer.stage("probe"):
            # Same lr for both encoders (the pretrained arm's pick), so only the weights differ.
            lr = chosen["pretrained"]["lr"]
            for arm, encoder in (("pretrained", "mae"), ("scratch", "random")):
                for seed in s.probe_seeds:
                    run = runs / "probe" / f"{encoder}_encoder_seed{seed}"
                    ok = run_finetune(run, arm, s.sweep_steps, lr, "frozen_encoder", seed)
                    val = _best_val_dice(run) if ok else float("nan")
                    probe_rows.append({"encoder": encoder, "seed": seed, "val_dice": val})
                    say(f"   frozen {encoder:6s} encoder seed {seed} val Dice {val:.3f}")
    probe = pd.DataFrame(probe_rows, columns=["encoder", "seed", "val_dice"])

    frames = []
    with timer.stage("evaluate"):
        for arm, seeds in final_runs.items():
            for seed, run in seeds.items():
                for key, split in (("labelled", "test"), ("mni152", None)):
                    df = evaluate(
                        run,
                        manifests[key],
                        split=split,
                        run_name=f"{arm}_seed{seed}",
                        out_dir=out / "evaluation" / f"{arm}_seed{seed}" / key,
                        progress=False,
                    )
                    frames.append(df.assign(arm=arm, seed=seed))
    metrics = pd.concat(frames, ignore_index=True)
    table_df = dice_table(metrics)
    table = format_dice_table(table_df)
    seconds = time.perf_counter() - started
    cpu_seconds = time.process_time() - started_cpu

    with timer.stage("report"):
        report = write_demo_report(
            out,
            s,
            cfg,
            table_df,
            metrics,
            sweep,
            probe,
            chosen,
            final_runs,
            mae_run,
            manifests,
            timer,
            seconds,
            cpu_seconds,
        )
    seconds = time.perf_counter() - started
    cpu_seconds = time.process_time() - started_cpu
    _write_json(
        out / "demo_result.json",
        {
            "settings": asdict(s),
            "seconds": seconds,
            "cpu_seconds": cpu_seconds,
            "torch_threads": _torch_threads(),
            "stage_seconds": timer.seconds,
            "stage_cpu_seconds": timer.cpu_seconds,
            "chosen": chosen,
            "table": table_df.to_dict(orient="records"),
            "probe": probe.to_dict(orient="records"),
        },
    )
    say("")
    say(
        f"Dice on the test sets (mean over cases, ± sd over {len(s.final_seeds)} seed(s); "
        "difference = pretrained - scratch):"
    )
    say(table)
    for arm in ARMS:
        c = chosen[arm]
        say(
            f"{arm}: schedule {c['schedule']}, peak lr {c['lr']:g} "
            f"(chosen on validation Dice {c['val_dice']:.3f})"
        )
    probe_line = probe_finding(probe)
    if probe_line:
        say(probe_line)
    say(
        f"wall time {seconds:.0f} s, CPU time {cpu_seconds:.0f} s ({_torch_threads()} torch "
        f"thread(s)); report: {report}"
    )
    return DemoResult(
        table, report, seconds, cpu_seconds, dict(timer.seconds), chosen, metrics, sweep, probe
    )


def _torch_threads() -> int:
    import torch

    return int(torch.get_num_threads())


SETTINGS_FILE = "demo_settings.json"


def _claim_folder(out: Path, settings: DemoSettings) -> None:
    """Record the settings in ``out``; refuse a folder made with other settings.

    Finished runs in ``out`` are reused (an interrupted demo continues), which is only right when
    they were made with the same settings.

    Raises:
        ConfigError: ``out`` holds a demo with different settings.
    """
    from toolkit.errors import ConfigError

    wanted = json.loads(json.dumps(asdict(settings)))
    path = out / SETTINGS_FILE
    if path.is_file():
        try:
            found = json.loads(path.read_text())
        except ValueError:
            found = None
        if found != wanted:
            raise ConfigError(
                f"--out: {out} holds a demo made with other settings ({path}); choose another "
                "folder or delete it"
            )
        return
    out.mkdir(parents=True, exist_ok=True)
    _write_json(path, wanted)


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    tmp.replace(path)


def write_demo_report(
    out: Path,
    settings: DemoSettings,
    cfg: Config,
    table: pd.DataFrame,
    metrics: pd.DataFrame,
    sweep: pd.DataFrame,
    probe: pd.DataFrame,
    chosen: dict[str, dict[str, Any]],
    final_runs: dict[str, dict[int, Path]],
    mae_run: Path,
    manifests: dict[str, Path],
    timer: _Timer,
    seconds: float,
    cpu_seconds: float,
) -> Path:
    """Write ``out/report.md`` with its figures (see the module docstring)."""
    import numpy as np

    from toolkit.data.io import load_volume
    from toolkit.data.manifest import load_manifest
    from toolkit.engine.logging import read_history
    from toolkit.models import build_segmentation_model
    from toolkit.report import (
        MarkdownReport,
        plot_dice_by_label,
        plot_segmentation_overlay,
    )
    from toolkit.visualize import plot_loss_curves

    s = settings
    first_seed = {arm: min(seeds) for arm, seeds in final_runs.items()}
    first = {arm: final_runs[arm][seed] for arm, seed in first_seed.items()}
    labels = load_manifest(manifests["labelled"]).labels
    assert labels is not None  # the manifest check passed, so the labelled set has labels
    num_classes = max(labels) + 1
    network = build_segmentation_model(cfg, num_classes)
    num_params = sum(p.numel() for p in network.parameters())
    rep = MarkdownReport(out, "MAE3D demo: pretrained vs from scratch")
    n_test = int(round(s.test_fraction * s.num_labelled)) or 1
    rep.text(
        f"Synthetic brains ({s.num_pretrain_subjects} unlabelled for pretraining, "
        f"{s.num_labelled} labelled: {n_test} test, the rest train/validation) at "
        f"{s.data_spacing_mm:g} mm, resampled to {s.target_spacing_mm:g} mm; the real MNI152 "
        f"template as a second test set. Network `{cfg.model.name}` ({num_params / 1e3:.0f} k "
        f"parameters), S3D MAE pretraining for {s.pretrain_steps} steps on "
        f"{s.pretrain_patch}^3 patches; fine-tuning on {s.num_train_cases} labelled subjects "
        f"with {s.finetune_patch}^3 patches, {s.final_steps} steps, seeds "
        f"{', '.join(map(str, s.final_seeds))}. Wall time {seconds:.0f} s, CPU time "
        f"{cpu_seconds:.0f} s with {_torch_threads()} torch thread(s) (see Timing)."
    )
    rep.heading("Dice on the test sets")
    rep.text(
        f"Dice averaged over the test cases of each set, mean ± sd over {len(s.final_seeds)} "
        "seed(s); `difference` = pretrained - scratch."
    )
    rep.table(format_dice_table(table))
    rep.figure(
        plot_dice_by_label(metrics, hue="arm", col="dataset"),
        "dice",
        "Dice per label (bars: mean ± sd over cases and seeds; dots: one case of one seed)",
    )
    rep.heading("What we found")
    rep.bullets(_findings(table, sweep, probe))

    rep.heading("Schedules chosen on validation Dice")
    rep.text(
        f"Both arms ran the same grid (peak lr {', '.join(f'{v:g}' for v in s.sweep_lrs)} x "
        f"schedule {', '.join(s.sweep_schedules)}) for {s.sweep_steps} steps each; each arm kept "
        "the setting with the best validation Dice on held-out training subjects (the test sets "
        "are not used). "
        + (
            "The chosen runs are the ones evaluated below."
            if s.final_steps == s.sweep_steps
            else f"The chosen settings were then trained for {s.final_steps} steps."
        )
        + " The grid sits above the paper's peak lr (1e-3 pretrained, 1e-2 scratch): those values "
        "are meant for 250k steps, and at a few hundred SGD steps with momentum 0.99 they "
        "leave a network that has barely started to learn."
    )
    rep.bullets(
        [
            f"**{arm}**: {c['schedule']}, peak lr {c['lr']:g} (validation Dice {c['val_dice']:.3f})"
            for arm, c in chosen.items()
        ]
    )
    rep.table(sweep.drop(columns=["run"]).sort_values(["arm", "val_dice"], ascending=[True, False]))

    if len(probe):
        rep.heading("Encoder probe: did pretraining learn transferable features?")
        rep.text(
            "The encoder is frozen and only the decoder trained, once on the MAE encoder and once "
            f"on an untrained (random) one: {s.sweep_steps} steps, schedule frozen_encoder, peak "
            f"lr {chosen['pretrained']['lr']:g} (the pretrained arm's pick) for both, seeds "
            f"{', '.join(map(str, s.probe_seeds))}. Validation Dice (held-out training subjects)."
        )
        by_seed = probe.pivot_table(index="seed", columns="encoder", values="val_dice")
        rep.table(by_seed.rename(columns=lambda c: f"{c} encoder").reset_index())

    rep.heading("Training curves")
    pre_hist = read_history(mae_run)
    if pre_hist:
        rep.figure(
            plot_loss_curves(pre_hist, title="MAE pretraining"),
            "pretrain_loss",
            "Pretraining: masked reconstruction loss (training and validation) and learning rate",
        )
    for arm, run in first.items():
        hist = read_history(run)
        if hist:
            rep.figure(
                plot_loss_curves(hist, loss_keys=["loss", "val_dice"], title=f"fine-tuning: {arm}"),
                f"finetune_{arm}",
                f"Fine-tuning ({arm}, seed {first_seed[arm]}): Dice + CE loss, validation Dice "
                "and learning rates",
            )
    snapshots = sorted((mae_run / "snapshots").glob("step_*.png"))
    if snapshots:
        rep.heading("Reconstruction")
        rep.image(
            snapshots[-1], "MAE reconstruction of a validation crop at the end of pretraining"
        )

    rep.heading("Segmentations")
    for key, split in (("labelled", "test"), ("mni152", None)):
        m = load_manifest(manifests[key])
        case = next(c for c in m.cases if split is None or c.split == split)
        image = load_volume(m.image_paths(case)[0], canonical=True).array
        label_path = m.label_path(case)
        assert label_path is not None
        reference = np.rint(load_volume(label_path, canonical=True).array).astype(np.int16)
        preds = {}
        for arm in final_runs:
            folder = out / "evaluation" / f"{arm}_seed{first_seed[arm]}" / key
            path = folder / "predictions" / f"{case.case_id}.nii.gz"
            preds[arm] = np.rint(load_volume(path, canonical=True).array).astype(np.int16)
        rep.figure(
            plot_segmentation_overlay(
                image, reference, preds, label_names=m.labels, title=f"{m.name}: {case.case_id}"
            ),
            f"overlay_{key}",
            f"{m.name} case {case.case_id}: reference and both arms (axial)",
        )

    rep.heading("What this shows, and what it cannot")
    rep.text(
        "The demo runs every stage of the method end to end on a laptop-sized problem: data "
        "checks, invertible preprocessing, sparse MAE pretraining, transfer into a segmentation "
        "network, fine-tuning with schedules chosen on validation data, and evaluation on the "
        "original image grids, including a real MR template the network never saw. At this size "
        f"(a {num_params / 1e3:.0f} k-parameter network, minutes of CPU pretraining on a dozen "
        "synthetic brains, a few labelled subjects, a hundred-odd fine-tuning steps) it cannot "
        "reproduce the paper's effect (about +2 Dice from ~40k real MRIs, ResEnc-L and 250k "
        "steps on a GPU): whichever arm wins here, a margin of a few Dice points says little "
        "about the method at scale, and differences within the seed spread are noise."
    )
    rep.heading("Timing")
    rep.text(
        "Everything runs in one process, so its CPU time is what the demo costs; on a machine "
        "shared with other jobs the wall time is longer than the CPU time divided by the threads."
    )
    rep.table(
        "| stage | wall s | CPU s |\n|---|---:|---:|\n"
        + "\n".join(
            f"| {k} | {v:.0f} | {timer.cpu_seconds.get(k, float('nan')):.0f} |"
            for k, v in timer.seconds.items()
        )
        + f"\n| **total** (up to this report) | **{seconds:.0f}** | **{cpu_seconds:.0f}** |"
    )
    return rep.write()


def _verdict(difference: float, spread: float, ahead: str, behind: str) -> str:
    """``ahead``/``behind`` + " ahead" when ``|difference|`` exceeds the seed sd ``spread``."""
    import math

    if math.isnan(difference):
        return "not comparable (a run diverged)"
    if math.isnan(spread):
        return "one seed, so no spread to judge it by"
    if abs(difference) <= spread:
        return "within the seed spread"
    return f"{ahead} ahead" if difference > 0 else f"{behind} ahead"


def probe_finding(probe: pd.DataFrame) -> str | None:
    """One sentence on the frozen-encoder probe (MAE vs random encoder), or None without a probe.

    Args:
        probe: rows ``encoder`` ("mae" / "random"), ``seed``, ``val_dice``.

    Example:
        >>> import pandas as pd
        >>> rows = [("mae", 0, 0.6), ("mae", 1, 0.62), ("random", 0, 0.5), ("random", 1, 0.52)]
        >>> line = probe_finding(pd.DataFrame(rows, columns=["encoder", "seed", "val_dice"]))
        >>> line.split("(")[2]
        '+0.100; MAE encoder ahead): the MAE features help the decoder more than random ones.'
    """
    if probe.empty or not {"mae", "random"} <= set(probe["encoder"]):
        return None
    stats = probe.groupby("encoder")["val_dice"].agg(["mean", "std"])
    mae, rnd = stats.loc["mae"], stats.loc["random"]
    difference = float(mae["mean"] - rnd["mean"])
    spread = float(max(mae["std"], rnd["std"]))
    verdict = _verdict(difference, spread, "MAE encoder", "random encoder")
    meaning = (
        "the MAE features help the decoder more than random ones"
        if verdict == "MAE encoder ahead"
        else "at this size the MAE has not learnt features the segmentation can use better than "
        "random ones"
    )
    return (
        f"Encoder probe (frozen encoder, validation Dice): MAE encoder {mae['mean']:.3f} ± "
        f"{mae['std']:.3f} vs random encoder {rnd['mean']:.3f} ± {rnd['std']:.3f} "
        f"({difference:+.3f}; {verdict}): {meaning}."
    )


def _findings(
    table: pd.DataFrame, sweep: pd.DataFrame, probe: pd.DataFrame | None = None
) -> list[str]:
    """Sentences stating what the numbers say (written from them, not by hand)."""
    lines = []
    for row in table[table["label"] == "mean"].to_dict(orient="records"):
        if "difference" not in row:
            continue
        spread = max(row["pretrained_sd"], row["scratch_sd"])
        verdict = _verdict(row["difference"], spread, "pretrained", "scratch")
        lines.append(
            f"{row['dataset']}: mean Dice pretrained {row['pretrained']:.3f} vs scratch "
            f"{row['scratch']:.3f} ({row['difference']:+.3f}; {verdict}, largest seed sd "
            f"{spread:.3f})."
        )
    pivot = sweep.pivot_table(index=["schedule", "lr"], columns="arm", values="val_dice")
    if {"pretrained", "scratch"} <= set(pivot.columns):
        diffs = (pivot["pretrained"] - pivot["scratch"]).dropna()
        parts = [f"{sched} lr {lr:g}: {d:+.3f}" for (sched, lr), d in diffs.items()]
        lines.append(
            "Validation Dice in the sweep, pretrained - scratch, per setting: "
            + "; ".join(parts)
            + "."
        )
    line = probe_finding(probe) if probe is not None else None
    if line:
        lines.append(line)
    return lines


def settings_with(base: DemoSettings, **changes: Any) -> DemoSettings:
    """``base`` with some fields changed (for notebooks and tests)."""
    return replace(base, **changes)


__all__ = [
    "ARMS",
    "QUICK",
    "DemoResult",
    "DemoSettings",
    "demo_config",
    "dice_table",
    "format_dice_table",
    "probe_finding",
    "run_demo",
    "settings_with",
    "write_demo_report",
]
