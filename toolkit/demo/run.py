"""The end-to-end demo behind ``make demo`` / ``mae3d demo``: from nothing to a report.

Stages (each timed; the whole run is sized for about 10 minutes of CPU on 2 cores):

1. **synth** — synthetic brains with exact tissue labels (:mod:`toolkit.data.synthetic`): unlabelled
   pretraining subjects and other, labelled subjects split train / test; plus the real MNI152
   template with tissue labels (:mod:`toolkit.data.mni`) as a second test set; then
   :func:`toolkit.data.validate.check_manifests` over all three manifests (files, grids, labels,
   subject leakage between pretraining and labelled sets) — :func:`toolkit.study.write_study_data`.
2. **preprocess** — the three caches (:func:`toolkit.data.preprocess.preprocess_manifest`).
3. **pretrain** — S3D MAE on the ``tiny`` ResEnc, 40^3 patches of 4^3 blocks (the paper's 10
   blocks per axis); every validation also scores the parameter-free in-fill
   (:mod:`toolkit.infill_gate`), and the summary opens with that margin.
4. **probe** — did pretraining learn features worth transferring?
   :func:`toolkit.probe.probe_run` trains voxel classifiers on the frozen MAE encoder's features
   and on random encoders' (paired seeds), scored on the validation subjects fine-tuning holds
   out; the summary's second line is the gap MAE - random.
5. **sweep** — both arms (pretrained, scratch) fine-tuned on the same few labelled subjects with
   the same grid of peak lr x schedule and the same number of steps; each arm keeps the setting
   with the best *validation* Dice (held-out training subjects, never the test set). The paper's
   long-run values (1e-3 with warm-up vs 1e-2) are not assumed to suit a run this short.
6. **final** — each arm's chosen setting trained for ``final_steps`` with ``final_seeds`` (the
   sweep run is reused when ``final_steps == sweep_steps``).
7. **evaluate** — sliding-window prediction of the synthetic test subjects and MNI152, Dice / HD95
   on the original grids, written into each run folder (``RUN/evaluation/<dataset>``), so
   ``mae3d view RUN`` shows them; the report lists that command for every run.
8. **report** — ``DIR/report.md`` (:mod:`toolkit.demo.report`) opening with the summary, then
   the evidence: in-fill curves, probe table, Dice table, chosen schedules, figures, timing.

The summary (printed at the end, top of ``report.md``, ``summary`` in ``demo_result.json``):
in-fill margin, probe gap, then the fine-tuning Dice table
(:func:`toolkit.demo.findings.summary_lines`).

Example:
    >>> result = run_demo("demo_out")  # doctest: +SKIP
    >>> print("\\n".join(result.summary))  # doctest: +SKIP
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from toolkit.demo.findings import infill_finding, probe_finding, summary_lines
from toolkit.demo.report import torch_threads, view_commands, write_demo_report
from toolkit.demo.settings import (
    DATASET_NAME,
    QUICK,
    DemoSettings,
    demo_config,
    finetune_config,
)
from toolkit.errors import DataError, TrainingError
from toolkit.study import (
    ARMS,
    StageTimer,
    claim_folder,
    dice_table,
    format_dice_table,
    preprocess_all,
    write_json,
    write_study_data,
)

if TYPE_CHECKING:
    import pandas as pd

    from toolkit.probe import ProbeResult

PathLike = str | os.PathLike[str]


@dataclass
class DemoResult:
    """What :func:`run_demo` produced.

    Attributes:
        summary: the summary lines (in-fill check, probe gap, Dice table, chosen schedules), as
            printed and as at the top of ``report.md``.
        table: the Dice table (Markdown).
        report: path of ``report.md``.
        seconds: wall time of the whole demo.
        cpu_seconds: CPU time of the whole demo (all of it runs in this process); on a shared
            machine this, not the wall time, tells what the demo costs.
        stage_seconds: wall time per stage.
        stage_cpu_seconds: CPU time per stage.
        chosen: arm -> chosen ``{"lr", "schedule", "val_dice"}``.
        metrics: the tidy evaluation table of both arms on both test sets.
        sweep: one row per sweep run.
        infill: :func:`toolkit.infill_gate.infill_verdict` of the pretraining run (None if it
            has no validation).
        probe: the feature probe (None with ``probe_seeds = 0``).
    """

    summary: list[str]
    table: str
    report: Path
    seconds: float
    cpu_seconds: float
    stage_seconds: dict[str, float]
    stage_cpu_seconds: dict[str, float]
    chosen: dict[str, dict[str, Any]]
    metrics: pd.DataFrame
    sweep: pd.DataFrame
    infill: dict[str, Any] | None
    probe: ProbeResult | None


def _best_val_dice(run: Path) -> float:
    from toolkit.engine.checkpoint import checkpoint_path, load_checkpoint

    best = load_checkpoint(checkpoint_path(run, "best")).get("best") or {}
    value = best.get("value")
    return float("nan") if value is None else float(value)


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
        A :class:`DemoResult`; its summary is also printed.

    Raises:
        DataError: the generated data fail the manifest check.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    from toolkit.engine.checkpoint import checkpoint_path
    from toolkit.evaluate import evaluate
    from toolkit.finetune import finetune_or_reuse
    from toolkit.infill_gate import infill_verdict
    from toolkit.pretrain import pretrain_or_reuse
    from toolkit.probe import probe_run

    say = echo or tqdm.write
    s = settings if settings is not None else (QUICK if quick else DemoSettings())
    out = Path(out_dir)
    data = out / "data"
    runs = out / "runs"
    claim_folder(out, s)
    timer = StageTimer(say)
    started, started_cpu = time.perf_counter(), time.process_time()
    cfg = demo_config(s, out)

    with timer.stage("synth"):
        manifests = write_study_data(
            data,
            num_pretrain_subjects=s.num_pretrain_subjects,
            num_labelled=s.num_labelled,
            data_seed=s.data_seed,
            spacing_mm=s.data_spacing_mm,
            test_fraction=s.test_fraction,
            name=DATASET_NAME,
        )

    with timer.stage("preprocess"):
        preprocess_all(manifests, out / "cache", cfg)

    mae_run = runs / "pretrain"
    with timer.stage("pretrain"):
        pretrain_or_reuse(cfg, mae_run, progress=False)
    ckpt = checkpoint_path(mae_run, "final")
    infill, infill_reason = None, ""
    try:
        infill = infill_verdict(mae_run)
    except DataError as exc:  # no held-out pretraining subject: say so rather than fail
        infill_reason = str(exc)
    infill_line = infill_finding(infill, infill_reason)
    say(f"   {infill_line}")

    probe: ProbeResult | None = None
    if s.probe_seeds:
        with timer.stage("probe"):
            # The checkpoint fine-tuning transfers; validation on the subjects fine-tuning
            # holds out (the labelled manifest has no val split), never the test split.
            probe = probe_run(
                mae_run,
                manifests["labelled"],
                seeds=s.probe_seeds,
                out_dir=out / "probe",
                checkpoint="final",
                val_fraction=s.val_fraction,
                device="cpu",
                progress=False,
            )
    probe_line = probe_finding(probe.gaps if probe is not None else None)
    if probe_line:
        say(f"   {probe_line}")

    def run_finetune(
        run: Path, arm: str, steps: int, lr: float, schedule: str, seed: int | None = None
    ) -> bool:
        """Train (or reuse) one run; False if it diverged (a non-finite loss)."""
        run_cfg = finetune_config(cfg, s, steps, lr, schedule, arm, seed)
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

    frames = []
    with timer.stage("evaluate"):
        for arm, seeds in final_runs.items():
            for seed, run in seeds.items():
                for key, split in (("labelled", "test"), ("mni152", None)):
                    # Into the run folder (RUN/evaluation/<dataset>), where `mae3d view RUN`
                    # finds the label maps.
                    df = evaluate(
                        run,
                        manifests[key],
                        split=split,
                        run_name=f"{arm}_seed{seed}",
                        progress=False,
                    )
                    frames.append(df.assign(arm=arm, seed=seed))
    metrics = pd.concat(frames, ignore_index=True)
    table_df = dice_table(metrics)
    table = format_dice_table(table_df)
    seconds = time.perf_counter() - started
    cpu_seconds = time.process_time() - started_cpu

    summary = summary_lines(infill_line, probe_line, table_df, len(s.final_seeds), chosen)
    with timer.stage("report"):
        report = write_demo_report(
            out,
            s,
            cfg,
            summary,
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
    write_json(
        out / "demo_result.json",
        {
            "summary": summary,
            "infill": infill,
            "probe_gaps": probe.gaps.to_dict(orient="records") if probe is not None else None,
            "table": table_df.to_dict(orient="records"),
            "chosen": chosen,
            "settings": asdict(s),
            "seconds": seconds,
            "cpu_seconds": cpu_seconds,
            "torch_threads": torch_threads(),
            "stage_seconds": timer.seconds,
            "stage_cpu_seconds": timer.cpu_seconds,
            "probe_dir": str(probe.out_dir) if probe is not None else None,
            "view_commands": view_commands(mae_run, final_runs, manifests),
        },
    )
    say("")
    for line in summary:
        say(line)
    say(
        f"wall time {seconds:.0f} s, CPU time {cpu_seconds:.0f} s ({torch_threads()} torch "
        f"thread(s)); report: {report}"
    )
    say(
        f"look at a run: {view_commands(mae_run, final_runs, manifests)[1]} "
        "(every run's command is in the report)"
    )
    return DemoResult(
        summary,
        table,
        report,
        seconds,
        cpu_seconds,
        dict(timer.seconds),
        dict(timer.cpu_seconds),
        chosen,
        metrics,
        sweep,
        infill,
        probe,
    )
