"""Start ``mae3d`` commands as separate processes that a test can ``kill -9``.

Two ways, same entry point (:func:`toolkit.cli.main`, what the ``mae3d`` console script calls):

* ``fork`` — a child of a ``multiprocessing`` fork server that imported the toolkit once. Importing
  torch, MONAI and the toolkit takes 5-15 s on a busy 2-core machine, longer than a tiny run; a
  forked child starts at once, yet is its own process with its own memory, files and exit code,
  killed by a real SIGKILL. The default drills use it.
* ``exec`` — the real console script (``mae3d`` next to the interpreter, else
  ``python -m toolkit.cli``) in a fresh interpreter. The slow drills use it.

Children get one thread (``OMP_NUM_THREADS=1``), ``OMP_WAIT_POLICY=PASSIVE`` as the CLI sets it,
and write stdout and stderr into one log file.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: What the fork server imports once (the CLI registers every command on import).
PRELOAD = (
    "toolkit.cli",
    "toolkit.pretrain",
    "toolkit.finetune",
    "toolkit.evaluate",
    "toolkit.sweep",
    "toolkit.data.preprocess",
    "toolkit.models",
    "toolkit.visualize",
    "torch.utils.tensorboard",
    "tests.faults.launch",
)
CHILD_ENV = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OMP_WAIT_POLICY": "PASSIVE",
    "MPLBACKEND": "Agg",
    "PYTHONHASHSEED": "0",
}


def _run_cli(argv: list[str], log: str, cwd: str) -> None:
    """A forked child: output to ``log``, then the CLI (which exits through SystemExit)."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    os.chdir(cwd)
    os.environ.update(CHILD_ENV)
    from toolkit.cli import main

    main(argv)


@dataclass
class Handle:
    """A started command."""

    argv: list[str]
    log: Path
    proc: Any

    @property
    def pid(self) -> int:
        return int(self.proc.pid)

    def poll(self) -> int | None:
        """The exit code, or None while it runs (killed: ``-9``)."""
        if isinstance(self.proc, subprocess.Popen):
            return self.proc.poll()
        return None if self.proc.is_alive() else self.proc.exitcode

    def wait(self, timeout: float) -> int:
        if isinstance(self.proc, subprocess.Popen):
            return int(self.proc.wait(timeout))
        self.proc.join(timeout)
        if self.proc.exitcode is None:
            self.kill()
            raise TimeoutError(f"{' '.join(self.argv)} ran past {timeout} s")
        return int(self.proc.exitcode)

    def kill(self) -> None:
        """SIGKILL, then reap it."""
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if isinstance(self.proc, subprocess.Popen):
            self.proc.wait()
        else:
            self.proc.join()


@dataclass
class Launcher:
    """Starts ``mae3d`` commands in ``cwd`` (see the module docstring for ``kind``)."""

    kind: str = "fork"
    cwd: Path = field(default_factory=Path.cwd)
    _ctx: Any = None

    def __post_init__(self) -> None:
        if self.kind not in ("fork", "exec"):
            raise ValueError(f"kind must be fork or exec, got {self.kind!r}")
        if self.kind == "fork":
            from multiprocessing import forkserver

            self._ctx = multiprocessing.get_context("forkserver")
            self._ctx.set_forkserver_preload(list(PRELOAD))
            # The server keeps the environment it starts with; this process gets its own back.
            saved = dict(os.environ)
            os.environ.update(CHILD_ENV)
            try:
                forkserver.ensure_running()
            finally:
                os.environ.clear()
                os.environ.update(saved)

    def start(self, argv: Sequence[str], log: Path) -> Handle:
        argv = [str(a) for a in argv]
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a") as fh:
            fh.write(f"$ mae3d {' '.join(argv)}\n")
        if self.kind == "fork":
            proc = self._ctx.Process(target=_run_cli, args=(argv, str(log), str(self.cwd)))
            proc.start()
            return Handle(argv, log, proc)
        script = Path(sys.executable).with_name("mae3d")
        cmd = [str(script)] if script.is_file() else [sys.executable, "-m", "toolkit.cli"]
        with open(log, "a") as fh:
            popen = subprocess.Popen(
                [*cmd, *argv],
                stdout=fh,
                stderr=subprocess.STDOUT,
                cwd=self.cwd,
                env={**os.environ, **CHILD_ENV},
            )
        return Handle(argv, log, popen)

    def run(self, argv: Sequence[str], log: Path, timeout: float = 300.0) -> int:
        """Start a command and wait for it; returns its exit code."""
        return self.start(argv, log).wait(timeout)
