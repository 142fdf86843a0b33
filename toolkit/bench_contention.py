"""Does a busy CPU collapse training? The tiny pretraining step alone and beside CPU burners.

On a 2-core machine the demo's step took ~0.12 s quiet and 3-8 s whenever one other process used a
core: two intra-op OpenMP threads spin-waited for a core that was taken. The runtime now picks its
threads from the idle cores (:func:`toolkit.engine.runtime.choose_cpu_budget`) and the CLI makes
OpenMP wait passively; this measures the result as ``busy / quiet`` seconds per step
(target <= 2.5).

Example:
    >>> from toolkit.config import load_config
    >>> report = measure_contention(load_config("tiny"), steps=5)  # doctest: +SKIP
    >>> print("\\n".join(report.lines()))  # doctest: +SKIP
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

from toolkit.bench import bench_pretrain
from toolkit.config import Config
from toolkit.engine.runtime import available_cores, busy_cores

#: A process that keeps one core busy until it is terminated.
BURNER = "while True: pass"


@dataclass
class ContentionReport:
    """Seconds per tiny pretraining step with and without other processes burning CPU."""

    quiet_sec_per_step: float
    busy_sec_per_step: float
    ratio: float
    burners: int
    threads_quiet: int
    threads_busy: int
    cores: float
    load_before: float
    omp_wait_policy: str

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (for JSON)."""
        return asdict(self)

    def lines(self) -> list[str]:
        """Human-readable report lines."""
        return [
            f"cores        {self.cores:g} usable, 1-min load {self.load_before:.2f} before, "
            f"OMP_WAIT_POLICY={self.omp_wait_policy or 'unset'}",
            f"quiet        {self.quiet_sec_per_step:.3f} s/step ({self.threads_quiet} thread(s))",
            f"busy         {self.busy_sec_per_step:.3f} s/step beside {self.burners} CPU burner(s) "
            f"({self.threads_busy} thread(s))",
            f"ratio        {self.ratio:.2f}x (target <= 2.5x)",
        ]


def measure_contention(
    cfg: Config, *, steps: int = 10, warmup: int = 2, burners: int = 1
) -> ContentionReport:
    """Time ``steps`` pretraining steps of ``cfg`` alone, then beside ``burners`` busy processes.

    Args:
        cfg: the config to time (the demo uses ``tiny``); its ``runtime`` decides the threads.
        steps: timed steps per measurement.
        warmup: untimed steps first.
        burners: processes that each keep one core busy during the second measurement.

    Returns:
        A :class:`ContentionReport`; the burners are terminated before it returns.
    """
    import torch

    load = busy_cores()
    quiet = bench_pretrain(cfg, steps=steps, warmup=warmup, measure_data=False)
    threads_quiet = torch.get_num_threads()
    procs = [
        subprocess.Popen([sys.executable, "-c", BURNER], stdin=subprocess.DEVNULL)
        for _ in range(burners)
    ]
    try:
        time.sleep(0.5)  # let the burners reach their loop
        busy = bench_pretrain(cfg, steps=steps, warmup=warmup, measure_data=False)
        threads_busy = torch.get_num_threads()
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=10)
    return ContentionReport(
        quiet_sec_per_step=quiet.sec_per_step,
        busy_sec_per_step=busy.sec_per_step,
        ratio=busy.sec_per_step / quiet.sec_per_step,
        burners=burners,
        threads_quiet=threads_quiet,
        threads_busy=threads_busy,
        cores=available_cores(),
        load_before=load,
        omp_wait_policy=os.environ.get("OMP_WAIT_POLICY", ""),
    )


__all__ = ["ContentionReport", "measure_contention"]
