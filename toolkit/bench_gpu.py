"""``mae3d bench gpu``: the GPU check, prepared on CPU and run in one go when a GPU is lent.

GPU time is scarce (minutes), so everything the CUDA path needs measured runs from one entry point
under one time budget (default 8 minutes); a stage that would start after the budget is spent is
skipped with a line saying so. On a CPU the same stages run at tiny size (``tiny`` preset, 16^3
patches) — the default test suite runs them, so the script cannot rot before a GPU shows up.

Stages (each writes its part of ``DIR/report.json`` and ``DIR/report.md``):

``device``
    name, and the achieved TFLOP/s of a large matmul in the autocast dtype (bf16 on a GPU): the
    peak that step FLOP/s are compared with.
``steps``
    seconds per MAE pretraining step (median of the timed steps after warm-up) for dense and S3D,
    two batch sizes, channels-last-3d off/on and ``torch.compile`` off/on (combinations that fail
    record their error in one line; CUDA-only switches are skipped on CPU), counted TFLOP per step
    (:func:`toolkit.bench.count_pretrain_flops`), achieved TFLOP/s and share of the matmul peak,
    peak memory, device-side augmentation as a share of the step.
``short_run``
    the real commands end to end (:mod:`toolkit.bench_gpu_run`): synthetic 1 mm brains cached,
    ~2 minutes of pretraining with the preset (the loss must fall), the checkpoint reloaded, 100
    fine-tuning steps from it, and MNI152 segmented at 1 mm with and without mirror TTA.
``max_batch``
    the largest batch that fits, per variant (GPU only; doubling then bisecting, stopped by the
    budget).
``loader``
    crops/s of the input pipeline with 0, 2, 4, 8 workers (CPU: 0 and 2) from the short run's
    cache of synthetic brains (in-memory volumes if that stage did not run) vs the crops/s the
    fastest measured step consumes.
``syncs``
    host-device synchronisations per step (``torch.cuda.set_sync_debug_mode("warn")``).
``estimate``
    :func:`toolkit.bench.estimate_run` for the same configuration vs the measured step.

Example:
    >>> report = run_gpu_bench("bench_out", budget_s=60)  # doctest: +SKIP
    >>> print((Path("bench_out") / "report.md").read_text())  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toolkit.bench import (
    bench_pretrain,
    count_pretrain_flops,
    estimate_run,
    measure_loader,
    synthetic_source,
)
from toolkit.bench_gpu_run import ShortRunSizes, run_short
from toolkit.config import Config, load_config
from toolkit.engine.runtime import (
    Runtime,
    accelerator_available,
    count_host_syncs,
    device_name,
    is_out_of_memory,
    matmul_tflops,
    release_memory,
    setup_runtime,
)

PathLike = str | os.PathLike[str]

#: Default wall-clock budget of the whole check (the GPU is lent for minutes).
DEFAULT_BUDGET_S = 480.0


@dataclass(frozen=True)
class BenchSizes:
    """How big the check is: the GPU sizes of the issue, or tiny ones for a CPU."""

    preset: str
    model: str
    patch: int
    batches: tuple[int, ...]
    steps: int
    warmup: int
    matmul_size: int
    loader_workers: tuple[int, ...]
    loader_batches: int
    cuda: bool

    @classmethod
    def for_device(cls, cuda: bool) -> BenchSizes:
        """ResEnc-L at 160^3, batch 2 and 6 on a GPU; the tiny network at 16^3 on a CPU."""
        if cuda:
            return cls("paper", "resenc_l", 160, (2, 6), 10, 3, 8192, (0, 2, 4, 8), 6, True)
        return cls("tiny", "resenc_tiny", 16, (1, 2), 2, 1, 128, (0, 2), 2, False)


@dataclass
class Budget:
    """Wall-clock budget shared by the stages."""

    total_s: float
    start: float = field(default_factory=time.perf_counter)

    def left(self) -> float:
        """Seconds left."""
        return self.total_s - (time.perf_counter() - self.start)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def _config(sizes: BenchSizes, variant: str, batch: int, **runtime: Any) -> Config:
    pairs: dict[str, Any] = {
        "model.name": sizes.model,
        "mask.variant": variant,
        "data.patch_size": [sizes.patch] * 3,
        "pretrain.batch_size": batch,
        "runtime.device": "cuda" if sizes.cuda else "cpu",
        "runtime.precision": "bf16",
    }
    pairs.update({f"runtime.{k}": v for k, v in runtime.items()})
    return load_config(sizes.preset, pairs)


def _step_case(
    sizes: BenchSizes, variant: str, batch: int, channels_last: bool, compile: bool, peak: float
) -> dict[str, Any]:
    cfg = _config(sizes, variant, batch, channels_last=channels_last, compile=compile)
    report = bench_pretrain(cfg, steps=sizes.steps, warmup=sizes.warmup, measure_data=False)
    return {
        "sec_per_step": report.sec_per_step,
        "tflop_per_step": report.train_flops_per_step / 1e12,
        "tflops": report.tflops_per_s,
        "peak_share": report.tflops_per_s / peak if peak > 0 else None,
        "peak_memory_gb": report.peak_memory_bytes / 1e9,
        "memory_kind": report.memory_kind,
        "augment_share": report.augment_fraction,
        "crops_per_s": batch / report.sec_per_step,
    }


def _fits(sizes: BenchSizes, variant: str, batch: int) -> bool:
    cfg = _config(sizes, variant, batch)
    try:
        bench_pretrain(cfg, steps=1, warmup=1, measure_data=False)
        return True
    except Exception as exc:
        if is_out_of_memory(exc):
            return False
        raise
    finally:
        release_memory(setup_runtime(cfg.runtime, init_distributed=False))


def run_gpu_bench(
    out_dir: PathLike,
    *,
    budget_s: float = DEFAULT_BUDGET_S,
    cuda: bool | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run every stage within ``budget_s`` seconds; write ``report.json`` and ``report.md``.

    Args:
        out_dir: folder for the report (created).
        budget_s: wall-clock budget; stages that would start after it are skipped with a line.
        cuda: GPU sizes (default: whether a GPU is visible).
        log: where progress lines go.

    Returns:
        The report as written to ``report.json``.
    """
    cuda = accelerator_available() if cuda is None else cuda
    sizes = BenchSizes.for_device(cuda)
    budget = Budget(budget_s)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"sizes": sizes.__dict__, "budget_s": budget_s, "skipped": []}

    def skip(stage: str, why: str) -> None:
        report["skipped"].append(f"{stage}: {why}")
        log(f"skip {stage}: {why}")

    def save() -> None:
        report["elapsed_s"] = budget.total_s - budget.left()
        (out / "report.json").write_text(json.dumps(report, indent=1, default=str))
        (out / "report.md").write_text(render_markdown(report))

    # device ---------------------------------------------------------------------------------------
    rt: Runtime = setup_runtime(_config(sizes, "dense", 1).runtime, init_distributed=False)
    peak = matmul_tflops(rt, sizes.matmul_size)
    report["device"] = {
        "name": device_name(rt),
        "precision": rt.precision,
        "matmul_tflops": peak,
        "matmul_size": sizes.matmul_size,
    }
    log(f"device {device_name(rt)}: {peak:.2f} TFLOP/s {rt.precision} matmul")
    save()

    # steps ----------------------------------------------------------------------------------------
    cases = []
    for compile in (False, True):  # cheap cases first: compiled ones take minutes to warm up
        for variant in ("dense", "s3d"):
            for batch in sizes.batches:
                for channels_last in (False, True):
                    cases.append((variant, batch, channels_last, compile))
    steps: list[dict[str, Any]] = []
    report["steps"] = steps
    short_sizes = ShortRunSizes.for_device(cuda)
    for variant, batch, channels_last, compile in cases:
        row: dict[str, Any] = {
            "variant": variant,
            "batch": batch,
            "channels_last": channels_last,
            "compile": compile,
        }
        name = f"{variant} b{batch} cl={int(channels_last)} compile={int(compile)}"
        if not cuda and (channels_last or compile):
            row["skipped"] = "CUDA only"
        # Compiled cases only while the short run's share of the budget stays free.
        elif budget.left() < (90 if compile else 20) * (1 if cuda else 0.05) + (
            short_sizes.reserve_s if compile else 0
        ):
            row["skipped"] = "out of budget"
        else:
            try:
                row.update(_step_case(sizes, variant, batch, channels_last, compile, peak))
                log(f"step {name}: {row['sec_per_step']:.3f} s, {row['tflops']:.2f} TFLOP/s")
            except Exception as exc:  # a combination that fails is a result, not a crash
                row["error"] = _one_line(exc)
                log(f"step {name}: {row['error']}")
            release_memory(rt)
        steps.append(row)
        save()
    measured = [r for r in steps if "sec_per_step" in r]

    # short_run ------------------------------------------------------------------------------------
    short_cache: list[Path] = []

    def stage_short_run() -> None:
        if budget.left() < short_sizes.reserve_s:
            skip("short_run", "out of budget")
            return
        batch = _config(sizes, "dense", 1).pretrain.batch_size
        plain = [
            r
            for r in measured
            if r["variant"] == "dense" and not r["channels_last"] and not r["compile"]
        ]
        same = [r for r in plain if r["batch"] == batch] or plain
        sec = min((r["sec_per_step"] for r in same), default=None)
        if sec is not None and same[0]["batch"] != batch:
            sec *= batch / same[0]["batch"]
        overrides = {
            "model.name": sizes.model,
            "data.patch_size": [sizes.patch] * 3,
            "runtime.device": "cuda" if cuda else "cpu",
            # bf16 without a grad scaler gave NaN gradients on CPU (see the README).
            "runtime.precision": "bf16" if cuda else "fp32",
        }
        work = out / "short_run"
        report["short_run"] = run_short(
            work, overrides, preset=sizes.preset, cuda=cuda, sec_per_step=sec, log=log
        )
        short_cache.extend(p for p in (work / "cache").iterdir() if (p / "plan.json").is_file())
        save()

    # max_batch ------------------------------------------------------------------------------------
    def stage_max_batch() -> None:
        report["max_batch"] = {}
        if not cuda:
            skip("max_batch", "CPU: no device memory limit to find")
        else:
            for variant in ("dense", "s3d"):
                lo, hi = 0, sizes.batches[0]
                while budget.left() > 60 and _fits(sizes, variant, hi):
                    lo, hi = hi, hi * 2
                while budget.left() > 60 and hi - lo > 1:
                    mid = (lo + hi) // 2
                    lo, hi = (mid, hi) if _fits(sizes, variant, mid) else (lo, mid)
                exact = hi - lo <= 1
                report["max_batch"][variant] = {"fits": lo, "exact": exact}
                if not exact:
                    skip(f"max_batch {variant}", f"out of budget between {lo} and {hi}")
                save()

    # loader ---------------------------------------------------------------------------------------
    def stage_loader() -> None:
        fastest = max((r["crops_per_s"] for r in measured), default=None)
        loader: dict[str, Any] = {"consumed_crops_per_s": fastest, "workers": {}}
        report["loader"] = loader
        if short_cache:
            from toolkit.data.cache import open_cache

            source: Any = open_cache(short_cache[0])
            loader["source"] = f"the short run's cache of synthetic brains ({short_cache[0]})"
        else:
            source = synthetic_source([sizes.patch] * 3, num_cases=2)
            loader["source"] = "in-memory synthetic volumes (1.25x the patch)"
        for workers in sizes.loader_workers:
            if budget.left() < (20 if cuda else 1):
                skip(f"loader {workers} workers", "out of budget")
                continue
            rate, startup = measure_loader(
                source,
                [sizes.patch] * 3,
                batch_size=max(sizes.batches),
                num_batches=sizes.loader_batches,
                num_workers=workers,
                pin_memory=cuda,
            )
            loader["workers"][str(workers)] = {"crops_per_s": rate, "startup_s": startup}
            log(f"loader {workers} workers: {rate:.1f} crops/s")
        save()

    # syncs ----------------------------------------------------------------------------------------
    def stage_syncs() -> None:
        if not cuda:
            skip("syncs", "CPU: no host-device synchronisation")
        elif budget.left() < 30:
            skip("syncs", "out of budget")
        else:
            cfg = _config(sizes, "dense", sizes.batches[0])
            n = 3
            syncs = count_host_syncs(
                rt, lambda: bench_pretrain(cfg, steps=n, warmup=1, measure_data=False)
            )
            report["syncs"] = {
                "steps": n + 1,
                "total": syncs,
                "per_step": None if syncs is None else syncs / (n + 1),
                "note": "includes model set-up and the benchmark's own timing reads",
            }
            save()

    # estimate -------------------------------------------------------------------------------------
    def stage_estimate() -> None:
        plain = [r for r in measured if not r["channels_last"] and not r["compile"]]
        if not plain:
            skip("estimate", "no plain step measured")
        elif budget.left() < (40 if cuda else 1):
            skip("estimate", "out of budget")
        else:
            ref = max(plain, key=lambda r: (r["variant"] == "dense", r["batch"]))
            cfg = _config(sizes, ref["variant"], ref["batch"])
            est = estimate_run(cfg, steps=2)
            report["estimate"] = {
                "variant": ref["variant"],
                "batch": ref["batch"],
                "estimated_sec_per_step": est.sec_per_step,
                "measured_sec_per_step": ref["sec_per_step"],
                "estimated_memory_gb": est.peak_memory_bytes / 1e9,
                "measured_memory_gb": ref["peak_memory_gb"],
                "run_hours": est.total_hours,
            }
            save()

    for stage_name, stage in (
        ("short_run", stage_short_run),
        ("max_batch", stage_max_batch),
        ("loader", stage_loader),
        ("syncs", stage_syncs),
        ("estimate", stage_estimate),
    ):
        try:
            stage()
        except Exception as exc:  # one failing stage must not lose the others on a lent GPU
            skip(stage_name, f"failed: {_one_line(exc)}")
            release_memory(rt)
        save()

    report["flop_per_sample_forward"] = count_pretrain_flops(_config(sizes, "dense", 1))
    save()
    return report


def _fmt(value: Any, spec: str = ".3f") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "-" if math.isnan(value) else format(value, spec)
    return str(value)


def render_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown tables (what ``report.md`` holds)."""
    lines = ["# GPU check", ""]
    dev = report.get("device")
    if dev:
        lines += [
            f"Device: {dev['name']} ({dev['precision']}); measured matmul peak "
            f"{_fmt(dev['matmul_tflops'], '.2f')} TFLOP/s ({dev['matmul_size']}^2).",
            "",
        ]
    sizes = report["sizes"]
    lines += [
        f"Network {sizes['model']} at {sizes['patch']}^3, {sizes['steps']} timed steps after "
        f"{sizes['warmup']} warm-up (median). Budget {report['budget_s']:.0f} s, used "
        f"{_fmt(report.get('elapsed_s'), '.0f')} s.",
        "",
        "## Step speed",
        "",
        "| variant | batch | channels-last | compile | s/step | TFLOP/step | TFLOP/s | "
        "share of peak | peak memory GB | augment share | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report.get("steps", []):
        share = r.get("peak_share")
        lines.append(
            f"| {r['variant']} | {r['batch']} | {int(r['channels_last'])} | {int(r['compile'])} "
            f"| {_fmt(r.get('sec_per_step'))} | {_fmt(r.get('tflop_per_step'), '.4f')} "
            f"| {_fmt(r.get('tflops'), '.3f')} "
            f"| {'-' if share is None else f'{100 * share:.1f} %'} "
            f"| {_fmt(r.get('peak_memory_gb'), '.2f')} "
            f"| {_fmt(r.get('augment_share'), '.2f')} "
            f"| {r.get('error') or r.get('skipped') or ''} |"
        )
    short = report.get("short_run")
    if short:
        pre, ft, seg, rel = (
            short["pretrain"],
            short["finetune"],
            short["mni152_segment_s"],
            short["reload"],
        )
        lines += [
            "",
            "## A real short run",
            "",
            f"- data: {short['sizes']['subjects']} + {short['sizes']['labelled']} synthetic "
            f"subjects at {short['sizes']['spacing_mm']} mm in {short['data_s']:.1f} s, "
            f"preprocessed in {short['preprocess_s']:.1f} s",
            f"- pretraining: {pre['steps']} steps in {pre['seconds']:.1f} s "
            f"({pre['sec_per_step']:.3f} s/step with logging, validation and checkpoints); loss "
            f"{pre['first_loss']:.4f} -> {pre['last_loss']:.4f} "
            f"({'fell' if pre['loss_fell'] else 'DID NOT FALL'})",
            f"- checkpoint: {rel['checkpoint_mb']:.1f} MB, step {rel['step']}, {rel['tensors']} "
            f"tensors read back ({'ok' if rel['ok'] else 'NOT OK'})",
            f"- fine-tuning: {ft['steps']} steps in {ft['seconds']:.1f} s from it "
            f"({_fmt(ft['transferred'], 'd')} tensors transferred)",
            f"- MNI152 on the {'x'.join(map(str, seg['grid']))} grid: {seg['plain']:.2f} s, "
            f"{seg['tta']:.2f} s with mirror TTA",
        ]
    if report.get("max_batch"):
        lines += ["", "## Largest batch that fits", ""]
        for variant, mb in report["max_batch"].items():
            lines.append(f"- {variant}: {mb['fits']}{'' if mb['exact'] else ' (at least)'}")
    loader = report.get("loader")
    if loader:
        lines += [
            "",
            "## Input pipeline",
            "",
            f"Source: {loader.get('source')}. The fastest step consumes "
            f"{_fmt(loader.get('consumed_crops_per_s'), '.1f')} crops/s.",
            "",
            "| workers | crops/s | first batch s |",
            "|---|---|---|",
        ]
        for w, v in loader["workers"].items():
            lines.append(f"| {w} | {v['crops_per_s']:.1f} | {v['startup_s']:.2f} |")
    syncs = report.get("syncs")
    if syncs and syncs["total"] is not None:
        lines += [
            "",
            "## Host-device synchronisations",
            "",
            f"{_fmt(syncs['total'])} over {syncs['steps']} steps "
            f"({_fmt(syncs['per_step'], '.1f')} per step; {syncs['note']}).",
        ]
    est = report.get("estimate")
    if est:
        lines += [
            "",
            "## Estimate check",
            "",
            f"`mae3d estimate` ({est['variant']}, batch {est['batch']}): "
            f"{est['estimated_sec_per_step']:.3f} s/step, "
            f"{est['estimated_memory_gb']:.2f} GB; measured {est['measured_sec_per_step']:.3f} "
            f"s/step, {est['measured_memory_gb']:.2f} GB; whole run {est['run_hours']:.1f} h.",
        ]
    if report.get("skipped"):
        lines += ["", "## Skipped", ""] + [f"- {s}" for s in report["skipped"]]
    return "\n".join(lines) + "\n"


__all__ = ["DEFAULT_BUDGET_S", "BenchSizes", "Budget", "render_markdown", "run_gpu_bench"]
