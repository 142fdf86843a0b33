"""Kill a command at seeded moments, rerun it until it finishes, and compare with a clean run.

A kill point is a progress count plus a delay: the drill polls ``progress()`` (for example the
lines of ``metrics.jsonl`` or the finished cases of a cache), and once it reaches the drawn count
waits the drawn delay (so the kill lands anywhere inside the next step or write) and sends SIGKILL.
Points are drawn from ``numpy.random.default_rng(seed)`` over the progress counts the clean run
went through, in increasing order; each later kill hits the rerun of the command.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tests.faults.launch import Launcher

#: Logged values that measure time or memory, not the computation.
TIMING_KEYS = frozenset({"time_s", "sec_per_step", "samples_per_s", "peak_mem_gb"})


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a running process (Linux ``/proc``; None elsewhere/gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class KillPoint:
    """Kill once ``progress() >= count``, ``delay_s`` later."""

    count: int
    delay_s: float


def draw_kill_points(seed: int, num: int, total: int, max_delay_s: float) -> list[KillPoint]:
    """``num`` kill points over progress counts ``0 .. total - 1``, in increasing order, each
    with a delay in ``[0, max_delay_s)`` (pass the time between two progress counts)."""
    rng = np.random.default_rng(seed)
    counts = np.sort(rng.integers(0, max(total, 1), size=num))
    delays = rng.uniform(0.0, max_delay_s, size=num)
    return [KillPoint(int(c), float(d)) for c, d in zip(counts, delays, strict=True)]


@dataclass
class Reference:
    """An uninterrupted run: its exit code, progress count at the end, mean seconds between two
    progress counts (the window a kill delay is drawn from) and wall seconds."""

    exit_code: int
    total: int
    gap_s: float
    seconds: float
    cpu_s: float = 0.0


def reference_run(
    launcher: Launcher,
    argv: Sequence[str],
    progress: Callable[[], int],
    log: Path,
    *,
    timeout: float = 300.0,
) -> Reference:
    """Run ``argv`` to the end, timing its progress counts."""
    start = time.perf_counter()
    handle = launcher.start(argv, log)
    seen, cpu = progress(), 0.0
    times: list[float] = []  # when the count changed
    while handle.poll() is None:
        if time.perf_counter() - start > timeout:
            handle.kill()
            raise TimeoutError(f"{' '.join(argv)} ran past {timeout} s; see {log}")
        cpu = cpu_seconds(handle.pid) or cpu
        now = progress()
        if now != seen:
            seen = now
            times.append(time.perf_counter())
        time.sleep(0.005)
    code = handle.wait(timeout)
    end = time.perf_counter()
    total = progress()
    # the mean time between two counts (not from the start: loading comes before the first)
    gap = (times[-1] - times[0]) / (len(times) - 1) if len(times) > 1 else end - start
    return Reference(code, total, gap, end - start, cpu)


@dataclass
class DrillLog:
    """What happened: per kill point, the progress count when the kill landed (None = the
    command finished first), the exit codes of every launch, wall seconds and the CPU seconds of
    the launches (sampled every 10 ms, so a little is missed before each kill and exit)."""

    kills: list[int | None] = field(default_factory=list)
    exit_codes: list[int] = field(default_factory=list)
    seconds: float = 0.0
    cpu_s: float = 0.0

    def __str__(self) -> str:
        return (
            f"kills at progress {self.kills}, exit codes {self.exit_codes}, "
            f"{self.seconds:.1f} s wall, {self.cpu_s:.1f} s CPU"
        )


def kill_and_rerun(
    launcher: Launcher,
    command: Callable[[], Sequence[str]],
    progress: Callable[[], int],
    points: Sequence[KillPoint],
    log: Path,
    *,
    timeout: float = 300.0,
) -> DrillLog:
    """Start ``command()`` and kill it at each point in turn; then rerun it to the end.

    ``command`` is called before every launch (it may add ``--resume`` once a run exists).

    Returns:
        The :class:`DrillLog`; the last exit code is that of the final, unkilled run.
    """
    record = DrillLog()
    start = time.perf_counter()
    for point in [*points, None]:  # None: the last launch, run to its end
        handle = launcher.start(command(), log)
        deadline = time.monotonic() + timeout
        cpu = 0.0
        kill_at: float | None = None
        while handle.poll() is None:
            now = time.monotonic()
            if now > deadline:
                handle.kill()
                raise TimeoutError(f"{' '.join(handle.argv)} ran past {timeout} s; see {log}")
            cpu = cpu_seconds(handle.pid) or cpu
            if point is not None:
                if kill_at is None and progress() >= point.count:
                    kill_at = now + point.delay_s
                if kill_at is not None and now >= kill_at:
                    break
            time.sleep(0.01)
        record.cpu_s += cpu
        if point is None:
            record.exit_codes.append(handle.wait(timeout))
        elif handle.poll() is None:
            reached = progress()
            handle.kill()
            record.kills.append(reached)
            record.exit_codes.append(-9)
        else:
            record.kills.append(None)
            record.exit_codes.append(int(handle.poll() or 0))
    record.seconds = time.perf_counter() - start
    return record


# --------------------------------------------------------------------------------------------------
# Progress counters


def count_lines(path: Path) -> int:
    """Complete lines of a text file (0 when missing)."""
    try:
        return path.read_bytes().count(b"\n")
    except OSError:
        return 0


def count_files(folder: Path, pattern: str) -> int:
    """Files under ``folder`` matching the glob ``pattern``."""
    return sum(1 for _ in folder.glob(pattern)) if folder.is_dir() else 0


# --------------------------------------------------------------------------------------------------
# Comparisons


def loss_curve(run_dir: Path) -> list[dict[str, Any]]:
    """``metrics.jsonl`` without timing and memory values (which differ between runs)."""
    records = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        if line.strip():
            records.append({k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS})
    return records


def _tensors(state: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    if isinstance(state, torch.Tensor):
        out[prefix] = state
    elif isinstance(state, dict):
        for k, v in state.items():
            out.update(_tensors(v, f"{prefix}/{k}"))
    elif isinstance(state, list | tuple):
        for i, v in enumerate(state):
            out.update(_tensors(v, f"{prefix}/{i}"))
    return out


#: Checkpoint entries compared bit for bit: the weights and the optimiser state.
WEIGHT_KEYS = ("model", "network_weights", "extra_weights", "optimizer", "scheduler")


def weight_differences(a: Path, b: Path) -> list[str]:
    """Names of tensors (weights, optimiser state) that are not bit-identical in two checkpoints."""
    sa = torch.load(a, map_location="cpu", weights_only=True)
    sb = torch.load(b, map_location="cpu", weights_only=True)
    diffs = []
    for key in WEIGHT_KEYS:
        if (key in sa) != (key in sb):
            diffs.append(f"{key}: in only one checkpoint")
            continue
        if key not in sa:
            continue
        ta, tb = _tensors(sa[key], key), _tensors(sb[key], key)
        if ta.keys() != tb.keys():
            diffs.append(f"{key}: different tensors")
            continue
        diffs += [k for k in ta if not torch.equal(ta[k], tb[k])]
    for key in ("step", "best"):
        if sa.get(key) != sb.get(key):
            diffs.append(f"{key}: {sa.get(key)!r} != {sb.get(key)!r}")
    return diffs


def tree_bytes(folder: Path, *, skip: Callable[[Path], bool] = lambda p: False) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> bytes), except those ``skip`` names."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not skip(p)
    }
