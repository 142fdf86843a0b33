"""The config form: choose a pretraining setup, see its YAML and size, run it in the background.

Every control maps to one dotted config field; the form builds the config with
:func:`toolkit.config.load_config` (preset + overrides), so it accepts and rejects exactly what the
command line does, and shows the reason in one line when a combination does not fit (e.g. a block
size the S3D encoder cannot use).

Shown for every valid config: the YAML that ``config.yaml`` of the run will hold, the parameter
count of the MAE model (built on PyTorch's ``meta`` device: no memory, no time) and the forward
FLOPs per sample (:func:`toolkit.bench.count_pretrain_flops`). *Estimate* measures a few real
steps on this machine (:func:`toolkit.bench.estimate_run`: step time, peak memory, run length).

*Run* starts :func:`toolkit.pretrain.pretrain` in a background thread; a progress bar and the loss
plot follow ``RUN_DIR/metrics.csv``. *Stop* writes ``RUN_DIR/STOP`` (the engine finishes the step,
saves ``latest`` and returns); *Resume* continues the run exactly. On a run folder that already
holds a run, *Run* is disabled and the form says to press *Resume* (or pick another folder).

Example (in a notebook)::

    form = ConfigForm("tiny", {"data.pretrain_manifest": "data/pretrain.yaml"}, run_dir="runs/mae")
    form                  # displays; or drive it from code:
    form.ratio.value = 0.6
    form.start(); form.wait()
"""

from __future__ import annotations

import html
import os
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ipywidgets as W
import yaml

from toolkit.errors import ToolkitError, TrainingError
from widgets.config_size import fmt_count, model_size

if TYPE_CHECKING:
    import pandas as pd

    from toolkit.config import Config

__all__ = ["ConfigForm", "model_size", "read_metrics"]

PathLike = str | os.PathLike[str]
STOP_FILE = "STOP"  # the engine's stop file (toolkit.engine.loop.STOP_FILE)


def read_metrics(run_dir: PathLike) -> pd.DataFrame | None:
    """``RUN_DIR/metrics.csv`` (long form: step, metric, value) as one row per step, or None."""
    import pandas as pd

    path = Path(run_dir) / "metrics.csv"
    if not path.is_file():
        return None
    try:
        long = pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError):
        return None  # being written; the next poll reads it
    if long.empty or not {"step", "metric", "value"} <= set(long.columns):
        return None
    wide = long.pivot_table(index="step", columns="metric", values="value", aggfunc="last")
    return wide.reset_index()


class ConfigForm(W.VBox):
    """Pick a preset, architecture, masking and optimisation; run, stop and resume pretraining.

    Args:
        preset: ``tiny`` or ``paper`` to start from.
        overrides: dotted overrides applied on top (e.g. where the data is).
        run_dir: the run folder for *Run* / *Resume*.
        poll_s: seconds between reads of ``metrics.csv`` while a run is going.

    Attributes:
        preset, model, variant, patch, block, mode, ratio, ratio_range, optimizer, lr, schedule,
        warmup, steps, batch, cache_dir, manifest, extra, run_dir: the controls.
        yaml: ``HTML`` with the config as YAML; size: parameters and FLOPs; message: errors.
        run_button, stop_button, resume_button, estimate_button; progress (``IntProgress``);
        status (``HTML``); loss_plot (``Image`` of the loss curves).
    """

    def __init__(
        self,
        preset: str = "tiny",
        overrides: Mapping[str, Any] | Sequence[str] = (),
        *,
        run_dir: PathLike = "runs/pretrain",
        poll_s: float = 1.0,
    ) -> None:
        from toolkit.config import PRESETS, load_config
        from toolkit.models import list_models

        base = load_config(preset, overrides)
        self._fixed = _as_mapping(overrides)
        self._poll_s = float(poll_s)
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._quiet = False
        self._size_key: Any = None
        style = {"description_width": "110px"}
        self.preset = W.Dropdown(
            options=list(PRESETS), value=preset, description="preset", style=style
        )
        self.model = W.Dropdown(options=list_models(), description="architecture", style=style)
        self.variant = W.ToggleButtons(options=["dense", "s3d"], description="variant", style=style)
        self.patch = W.BoundedIntText(min=8, max=512, description="patch edge", style=style)
        self.block = W.BoundedIntText(min=1, max=512, description="block size", style=style)
        self.mode = W.ToggleButtons(options=["fixed", "range"], description="ratio", style=style)
        self.ratio = W.FloatSlider(
            min=0.0, max=1.0, step=0.05, description="mask ratio", style=style
        )
        self.ratio_range = W.FloatRangeSlider(
            value=(0.6, 0.9), min=0.0, max=1.0, step=0.05, description="U[low, high]", style=style
        )
        self.optimizer = W.Dropdown(options=["sgd", "adamw"], description="optimiser", style=style)
        self.lr = W.FloatLogSlider(min=-5, max=0, step=0.25, description="peak lr", style=style)
        self.schedule = W.Dropdown(
            options=["poly", "cosine", "constant"], description="schedule", style=style
        )
        self.warmup = W.BoundedIntText(min=0, max=10**9, description="warm-up steps", style=style)
        self.steps = W.BoundedIntText(min=1, max=10**9, description="steps", style=style)
        self.batch = W.BoundedIntText(min=1, max=4096, description="batch size", style=style)
        # Paths get the form's whole width: a manifest or run path cut after 20 characters
        # cannot be checked by eye.
        self.cache_dir = W.Text(
            description="data.cache_dir", style=style, layout=W.Layout(width="100%")
        )
        self.manifest = W.Text(description="manifest", style=style, layout=W.Layout(width="100%"))
        self.extra = W.Textarea(
            placeholder="more overrides, one per line: pretrain.val_every=10",
            description="overrides",
            style=style,
            layout=W.Layout(width="420px", height="60px"),
        )
        self.run_dir = W.Text(
            value=str(run_dir), description="run folder", style=style, layout=W.Layout(width="100%")
        )
        self.yaml = W.HTML()
        self.size = W.HTML()
        self.message = W.HTML()
        self.folder_note = W.HTML()
        self.run_button = W.Button(description="Run", button_style="success", icon="play")
        self.stop_button = W.Button(description="Stop", button_style="danger", icon="stop")
        self.resume_button = W.Button(description="Resume", icon="forward")
        self.estimate_button = W.Button(description="Estimate", icon="clock")
        self.progress = W.IntProgress(value=0, min=0, max=1, description="step")
        self.status = W.HTML()
        self.estimate = W.HTML()
        self.loss_plot = W.Image(format="png")
        self._set_controls(base)

        sections = W.VBox(
            [
                W.HTML("<b>architecture and masking</b>"),
                W.HBox([self.preset, self.model]),
                W.HBox([self.variant, self.patch, self.block]),
                W.HBox([self.mode, self.ratio, self.ratio_range]),
                W.HTML("<b>optimisation</b>"),
                W.HBox([self.optimizer, self.schedule, self.lr]),
                W.HBox([self.steps, self.batch, self.warmup]),
                W.HTML("<b>data and run</b>"),
                self.cache_dir,
                self.manifest,
                self.run_dir,
                self.extra,
            ]
        )
        buttons = W.HBox(
            [self.run_button, self.stop_button, self.resume_button, self.estimate_button]
        )
        summary = W.VBox(
            [
                self.message,
                self.size,
                self.estimate,
                self.folder_note,
                buttons,
                self.progress,
                self.status,
            ]
        )
        details = W.Accordion(children=[self.yaml], titles=("config.yaml",))
        super().__init__([sections, summary, self.loss_plot, details])

        self.preset.observe(self._on_preset, names="value")
        for w in (
            self.model, self.variant, self.patch, self.block, self.mode, self.ratio,
            self.ratio_range, self.optimizer, self.lr, self.schedule, self.warmup, self.steps,
            self.batch, self.cache_dir, self.manifest, self.extra, self.run_dir,
        ):  # fmt: skip
            w.observe(lambda _c: self.update(), names="value")
        self.run_button.on_click(lambda _b: self._click(resume=False))
        self.resume_button.on_click(lambda _b: self._click(resume=True))
        self.stop_button.on_click(lambda _b: self.stop())
        self.estimate_button.on_click(lambda _b: self.run_estimate())
        self.update()

    # ------------------------------------------------------------------------------- the config

    def _set_controls(self, cfg: Config) -> None:
        self._quiet = True
        try:
            self.model.value = cfg.model.name
            self.variant.value = cfg.mask.variant
            self.patch.value = int(cfg.data.patch_size[0])
            self.block.value = cfg.mask.block_size
            self.mode.value = "range" if cfg.mask.ratio_range else "fixed"
            self.ratio.value = cfg.mask.ratio
            if cfg.mask.ratio_range:
                self.ratio_range.value = tuple(cfg.mask.ratio_range)
            self.optimizer.value = cfg.pretrain.optim.optimizer
            self.lr.value = cfg.pretrain.optim.lr
            self.schedule.value = cfg.pretrain.optim.schedule
            self.warmup.value = cfg.pretrain.optim.warmup_steps
            self.steps.value = cfg.pretrain.steps
            self.batch.value = cfg.pretrain.batch_size
            self.cache_dir.value = cfg.data.cache_dir
            self.manifest.value = cfg.data.pretrain_manifest
        finally:
            self._quiet = False

    def _on_preset(self, _change: Any) -> None:
        from toolkit.config import load_config

        # Data locations are not part of a preset: keep what the user typed.
        keep = {
            "data.cache_dir": self.cache_dir.value,
            "data.pretrain_manifest": self.manifest.value,
        }
        self._set_controls(load_config(self.preset.value, {**self._fixed, **keep}))
        self.update()

    def overrides(self) -> dict[str, Any]:
        """The form as dotted overrides of its preset (extra lines last, so they win)."""
        from toolkit.config import parse_override

        size = int(self.patch.value)
        out: dict[str, Any] = {
            **self._fixed,
            "model.name": self.model.value,
            "mask.variant": self.variant.value,
            "data.patch_size": [size, size, size],
            "mask.block_size": int(self.block.value),
            "mask.ratio": float(self.ratio.value),
            "mask.ratio_range": list(self.ratio_range.value)
            if self.mode.value == "range"
            else None,
            "pretrain.optim.optimizer": self.optimizer.value,
            "pretrain.optim.lr": float(self.lr.value),
            "pretrain.optim.schedule": self.schedule.value,
            "pretrain.optim.warmup_steps": int(self.warmup.value),
            "pretrain.steps": int(self.steps.value),
            "pretrain.batch_size": int(self.batch.value),
            "data.cache_dir": self.cache_dir.value.strip(),
            "data.pretrain_manifest": self.manifest.value.strip(),
        }
        for line in self.extra.value.splitlines():
            if line.strip():
                key, value = parse_override(line.strip())
                out[key] = value
        return out

    def config(self) -> Config:
        """The config the form describes.

        Raises:
            ConfigError: a value or combination the toolkit rejects.
        """
        from toolkit.config import load_config

        return load_config(self.preset.value, self.overrides())

    def update(self) -> None:
        """Rebuild the config; show its YAML and size, or the reason it is not valid."""
        if self._quiet:
            return
        self.ratio.disabled = self.mode.value == "range"
        self.ratio_range.disabled = self.mode.value != "range"
        try:
            cfg = self.config()
            size = model_size(cfg)
        except ToolkitError as exc:
            self.message.value = f"<span style='color:#b00'>{html.escape(str(exc))}</span>"
            self.size.value = ""
            self._set_buttons(valid=False)
            return
        self.message.value = ""
        self.yaml.value = (
            "<pre>" + html.escape(yaml.safe_dump(cfg.to_dict(), sort_keys=False)) + "</pre>"
        )
        per_step = 3e9 * size["gflop"] * cfg.pretrain.batch_size  # backward = 2x forward
        self.size.value = (
            f"<b>{fmt_count(size['total'])} parameters</b> (network {fmt_count(size['network'])}"
            f", {cfg.mask.variant} extras {fmt_count(size['extras'])}); forward "
            f"{fmt_count(1e9 * size['gflop'])}FLOP per {cfg.data.patch_size[0]}<sup>3</sup> "
            f"sample, ~{fmt_count(per_step)}FLOP per training step "
            f"(batch {cfg.pretrain.batch_size})"
        )
        self._set_buttons(valid=True)

    def _set_buttons(self, *, valid: bool) -> None:
        running = self.running
        has_data = bool(self.cache_dir.value.strip() or self.manifest.value.strip())
        holds_run = self._latest().is_file()
        self.run_button.disabled = running or not valid or not has_data or holds_run
        self.resume_button.disabled = running or not valid or not holds_run
        self.estimate_button.disabled = running or not valid
        self.stop_button.disabled = not running
        note = "" if running or not holds_run else self._folder_problem(resume=False)
        self.folder_note.value = note and f"<span style='color:#b60'>{html.escape(note)}</span>"

    def _folder_problem(self, *, resume: bool) -> str:
        """Why *Run* (``resume=False``) or *Resume* cannot use the run folder, or ``""``.

        Worded for the form's own buttons, not the command line's ``--resume``.
        """
        holds_run = self._latest().is_file()
        if holds_run and not resume:
            return (
                f"{self.run_dir.value} already holds a run: press Resume to continue it (raise "
                "steps to train past its end), or change the run folder to start a new one."
            )
        if resume and not holds_run:
            return f"{self.run_dir.value} holds no run to resume: press Run to start one."
        return ""

    def _latest(self) -> Path:
        return Path(self.run_dir.value) / "checkpoints" / "latest.pt"

    # ---------------------------------------------------------------------------------- the run

    @property
    def running(self) -> bool:
        """Whether a background run is going."""
        return self._thread is not None and self._thread.is_alive()

    def start(self, *, resume: bool = False) -> None:
        """Start (or resume) pretraining in a background thread.

        Raises:
            ConfigError: the form's config is not valid.
            TrainingError: a new run into a folder that holds one, or a resume with nothing to
                resume (said in the form's words, also shown in ``status``).
            RuntimeError: a run is already going.
        """
        if self.running:
            raise RuntimeError("a run is already going; stop it first")
        cfg = self.config()
        run_dir = Path(self.run_dir.value)
        problem = self._folder_problem(resume=resume)
        if problem:
            self.status.value = f"<span style='color:#b00'>{html.escape(problem)}</span>"
            raise TrainingError(problem)
        self._error = None
        self.progress.max = cfg.pretrain.steps
        self.progress.value = 0
        self.status.value = f"{'resuming' if resume else 'starting'} {run_dir} ..."
        self._thread = threading.Thread(
            target=self._train, args=(cfg, run_dir, resume), name="mae3d-pretrain", daemon=True
        )
        self._thread.start()
        threading.Thread(
            target=self._follow, args=(run_dir,), name="mae3d-follow", daemon=True
        ).start()
        self._set_buttons(valid=True)

    def _click(self, *, resume: bool) -> None:
        try:
            self.start(resume=resume)
        except ToolkitError as exc:  # shown in the form; a traceback in the log helps nobody
            self.status.value = f"<span style='color:#b00'>{html.escape(str(exc))}</span>"

    def _train(self, cfg: Config, run_dir: Path, resume: bool) -> None:
        from toolkit.pretrain import pretrain

        try:
            pretrain(cfg, run_dir, resume=resume, progress=False)
        except BaseException as exc:  # shown in the form and re-raised by wait()
            self._error = exc

    def _follow(self, run_dir: Path) -> None:
        while self.running:
            self.refresh(run_dir)
            time.sleep(self._poll_s)
        self.refresh(run_dir)
        if self._error is not None:
            self.status.value = (
                f"<span style='color:#b00'>failed: {html.escape(str(self._error))}</span>"
            )
        else:
            done = self.progress.value >= self.progress.max
            what = "finished" if done else "stopped (Resume continues it)"
            status = f"{what} at step {self.progress.value}: {run_dir}"
            from widgets.inline import run_verdict

            verdict = run_verdict(run_dir)
            if verdict is not None:  # the in-fill gate, as the command line ends
                status += f"<br>{html.escape(verdict['message'])}"
            self.status.value = status
        self._set_buttons(valid=not self.message.value)

    def refresh(self, run_dir: PathLike | None = None) -> None:
        """Read ``metrics.csv`` of the run: progress, last loss, and the loss plot (with the
        in-fill baseline as a dashed line once a validation has logged it)."""
        from toolkit.visualize import plot_loss_curves
        from widgets.inline import figure_png

        run = Path(run_dir if run_dir is not None else self.run_dir.value)
        table = read_metrics(run)
        if table is None:
            return
        step = int(table["step"].max())
        self.progress.value = min(step, self.progress.max)
        last = table.dropna(subset=["loss"]).iloc[-1] if "loss" in table else None
        if last is not None and self.running:
            self.status.value = f"step {step} of {self.progress.max}: loss {last['loss']:.4g}"
        self.loss_plot.value = figure_png(plot_loss_curves(table, title=run.name))

    def stop(self) -> None:
        """Ask the run to stop after the current step (writes ``RUN_DIR/STOP``)."""
        run_dir = Path(self.run_dir.value)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / STOP_FILE).touch()
        self.status.value = "stopping after this step ..."

    def wait(self, timeout: float | None = None) -> Path:
        """Block until the background run ends; re-raise its error if it failed.

        Returns:
            The run folder.
        """
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise TimeoutError(f"the run is still going after {timeout} s")
        # The follower writes the final status right after the thread ends.
        deadline = time.monotonic() + 10 * self._poll_s + 5
        while self.status.value.startswith(("starting", "resuming", "step", "stopping")):
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        if self._error is not None:
            raise self._error
        return Path(self.run_dir.value)

    def wait_for_step(self, step: int, timeout: float | None = None) -> int:
        """Block until the run has logged ``step`` (or ended); returns the last logged step.

        With ``pretrain.log_every`` > 1 the run is seen at its logging steps only.
        """
        run_dir = Path(self.run_dir.value)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            table = read_metrics(run_dir)
            last = 0 if table is None else int(table["step"].max())
            if last >= step or not self.running:
                return last
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"step {step} not reached after {timeout} s (at {last})")
            time.sleep(min(self._poll_s, 0.2))

    def run_estimate(self, *, steps: int = 2, block: bool = False) -> None:
        """Measure ``steps`` steps of this config here and show memory and run length.

        Args:
            steps: measured steps (after one warm-up step).
            block: wait for the measurement instead of running it in a thread.
        """
        cfg = self.config()

        def measure() -> None:
            from toolkit.bench import estimate_run

            try:
                lines = estimate_run(cfg, steps=steps).lines()
                self.estimate.value = "<pre>" + html.escape("\n".join(lines)) + "</pre>"
            except ToolkitError as exc:
                self.estimate.value = f"<span style='color:#b00'>{html.escape(str(exc))}</span>"

        self.estimate.value = f"measuring {steps} steps of this config on this machine ..."
        if block:
            measure()
        else:
            threading.Thread(target=measure, name="mae3d-estimate", daemon=True).start()


def _as_mapping(overrides: Mapping[str, Any] | Sequence[str]) -> dict[str, Any]:
    from toolkit.config import parse_override

    if isinstance(overrides, Mapping):
        return dict(overrides)
    return dict(parse_override(o) for o in overrides)
