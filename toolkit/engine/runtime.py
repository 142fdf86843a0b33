"""Where and how computation runs: the only module of the toolkit that knows about CUDA.

Everything device-specific lives here — device choice, autocast, the fp16 grad scaler, seeding, the
RNG states a checkpoint needs, DDP initialisation and teardown, channels-last, ``torch.compile`` and
peak-memory readings — so the training loop, the tasks and the data path run one code path on a
laptop CPU and on a GPU cluster.

Distributed runs are launched by ``torchrun`` (or anything that sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``): :func:`setup_runtime` reads those variables
and starts a process group with NCCL on CUDA and gloo on CPU.

Example:
    >>> from toolkit.config import load_config
    >>> rt = setup_runtime(load_config("tiny").runtime)
    >>> rt.device.type, rt.precision, rt.world_size
    ('cpu', 'fp32', 1)
"""

from __future__ import annotations

import contextlib
import os
import random
import resource
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from toolkit.config import RuntimeConfig
from toolkit.errors import ConfigError

_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Runtime:
    """The resolved execution settings of one process.

    Attributes:
        device: the device this process computes on.
        precision: the precision in use (``fp32``, ``bf16`` or ``fp16``); always ``fp32`` on CPU.
        compile: whether models are wrapped with ``torch.compile``.
        channels_last: whether 5D tensors and models use the channels-last-3d memory format.
        seed: the base seed of the run.
        rank: global rank of this process (0 without DDP).
        world_size: number of processes (1 without DDP).
        local_rank: rank on this machine (selects the GPU).
        notes: human-readable remarks on settings that were changed (e.g. "CPU runs fp32").
        owns_process_group: whether :func:`teardown` must destroy the process group.
        threads: intra-op CPU threads of this process (see :func:`choose_cpu_budget`).
        max_workers: most data-loader workers this process should start.
        requested_threads: ``runtime.threads``, else ``OMP_NUM_THREADS`` (0 = chosen).
        cpu_share: cores of this machine for this process (affinity, quota, processes).
        busy_share: of those, cores busy with other work when the run started.
    """

    device: torch.device
    precision: str = "fp32"
    compile: bool = False
    channels_last: bool = False
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    notes: list[str] = field(default_factory=list)
    owns_process_group: bool = False
    threads: int = 1
    max_workers: int = 0
    requested_threads: int = 0
    cpu_share: float = 1.0
    busy_share: float = 0.0

    @property
    def is_main(self) -> bool:
        """True on the process that writes logs, checkpoints and figures (rank 0)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when a process group with more than one process is active."""
        return self.world_size > 1

    @property
    def is_accelerator(self) -> bool:
        """True on a GPU (pinned host memory and non-blocking copies pay off there)."""
        return self.device.type == "cuda"

    @property
    def pin_memory(self) -> bool:
        """Whether data loaders should pin host memory."""
        return self.is_accelerator

    @property
    def amp_dtype(self) -> torch.dtype | None:
        """The autocast dtype, or None for fp32."""
        return _AMP_DTYPES.get(self.precision)

    def describe(self) -> str:
        """One line such as ``cuda:0 bf16 world=2 (rank 0)``."""
        extra = f" world={self.world_size} (rank {self.rank})" if self.distributed else ""
        flags = "".join(
            [" compile" if self.compile else "", " channels-last" if self.channels_last else ""]
        )
        return f"{self.device} {self.precision}{flags}{extra}"

    def loader_workers(self, requested: int) -> int:
        """Loader workers to start for ``requested`` (``data.num_workers``), within the budget.

        With chosen threads (``runtime.threads=0``) the intra-op threads shrink by the workers
        started, so threads and workers together fit the idle cores.
        """
        threads, workers = choose_cpu_budget(
            self.requested_threads, requested, cores=self.cpu_share, busy=self.busy_share
        )
        if threads != self.threads:
            self.threads = threads
            torch.set_num_threads(threads)
        return workers

    def to_device(self, x: torch.Tensor) -> torch.Tensor:
        """Move a tensor to the device (non-blocking from pinned memory; channels-last for 5D)."""
        x = x.to(self.device, non_blocking=self.is_accelerator)
        if self.channels_last and x.dim() == 5:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        return x

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Autocast context for forward passes (a no-op in fp32)."""
        return autocast(self)

    def make_scaler(self) -> torch.amp.GradScaler:
        """A gradient scaler, enabled only for fp16 (bf16 and fp32 need none)."""
        return torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(
            f"environment variable {name}: expected an integer, got {raw!r}"
        ) from None


def _resolve_device(requested: str, local_rank: int, distributed: bool) -> torch.device:
    req = requested.strip().lower()
    if req == "auto":
        req = "cuda" if torch.cuda.is_available() else "cpu"
    if req == "cpu":
        return torch.device("cpu")
    if req.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"runtime.device: {requested!r} requested but no CUDA device is available"
            )
        if req == "cuda":
            index = local_rank if distributed else torch.cuda.current_device()
        else:
            try:
                index = int(req.split(":", 1)[1])
            except (IndexError, ValueError):
                raise ConfigError(
                    f"runtime.device: cannot parse {requested!r} (use cuda:N)"
                ) from None
        if index >= torch.cuda.device_count():
            raise ConfigError(
                f"runtime.device: {requested!r} but only {torch.cuda.device_count()} CUDA devices"
            )
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    raise ConfigError(f"runtime.device: must be auto, cpu, cuda or cuda:N; got {requested!r}")


# --------------------------------------------------------------------------------------------------
# CPU budget: how many threads and loader workers this process can use without spinning against
# other work. On a 2-core machine two intra-op threads next to one busy process made a tiny
# pretraining step 25-70x slower (OpenMP threads spin-wait for a core that is taken); one thread
# stayed within 2x. The CLI sets OMP_WAIT_POLICY=PASSIVE before torch loads (see toolkit.cli);
# library users who import torch themselves should export it in the shell.


def cgroup_cpu_limit(path: str = "/sys/fs/cgroup/cpu.max") -> float | None:
    """Cores allowed by a cgroup v2 CPU quota (``cpu.max``), or None when unlimited or unknown."""
    try:
        with open(path) as f:
            quota, period = f.read().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    try:
        return max(float(quota) / float(period), 0.0)
    except (ValueError, ZeroDivisionError):
        return None


def available_cores() -> float:
    """Cores this process may run on: its CPU affinity, capped by a cgroup quota."""
    try:
        cores = float(len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS / Windows
        cores = float(os.cpu_count() or 1)
    limit = cgroup_cpu_limit()
    return min(cores, limit) if limit is not None else cores


def busy_cores() -> float:
    """Cores other work keeps busy: the 1-minute load average (0 where it is unknown)."""
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):
        return 0.0


def choose_cpu_budget(
    threads: int,
    requested_workers: int,
    *,
    cores: float | None = None,
    busy: float | None = None,
) -> tuple[int, int]:
    """Intra-op threads and the most loader workers for one process.

    Threads are the idle cores of this process's share of the machine, less the cores its loader
    workers will take, never below 1; workers leave at least one core to the step. Oversubscribing
    is what makes a step collapse on a busy CPU, so in doubt this picks fewer threads.

    Args:
        threads: ``runtime.threads`` (> 0 is used as given; 0 = choose).
        requested_workers: ``data.num_workers``.
        cores: cores for this process (default: :func:`available_cores`; under torchrun pass
            them divided by ``LOCAL_WORLD_SIZE``).
        busy: of those, cores busy with other work (default: :func:`busy_cores`).

    Returns:
        ``(threads, max_workers)``.

    Example:
        >>> choose_cpu_budget(0, 2, cores=2, busy=1)
        (1, 1)
        >>> choose_cpu_budget(0, 4, cores=16, busy=0)
        (12, 4)
    """
    cores = available_cores() if cores is None else float(cores)
    busy = busy_cores() if busy is None else float(busy)
    max_workers = max(0, min(int(requested_workers), int(cores) - 1))
    if threads > 0:
        return int(threads), max_workers
    return max(1, int(cores - busy) - max_workers), max_workers


def accelerator_available() -> bool:
    """Whether a GPU is visible (lets front doors pick GPU-sized defaults)."""
    return bool(torch.cuda.is_available())


def setup_runtime(cfg: RuntimeConfig, *, init_distributed: bool = True) -> Runtime:
    """Resolve ``cfg`` into a :class:`Runtime`, starting DDP when launched by torchrun.

    Args:
        cfg: the ``runtime`` section of the config.
        init_distributed: start a process group when ``WORLD_SIZE`` > 1 (set False for tools that
            only measure one process).

    Returns:
        The runtime of this process. Call :func:`teardown` when done.

    Raises:
        ConfigError: an unavailable or malformed device, or inconsistent torchrun variables.
    """
    world_size = _env_int("WORLD_SIZE", 1) if init_distributed else 1
    rank = _env_int("RANK", 0) if world_size > 1 else 0
    local_rank = _env_int("LOCAL_RANK", rank) if world_size > 1 else 0
    if world_size > 1 and not 0 <= rank < world_size:
        raise ConfigError(f"environment: RANK={rank} is outside WORLD_SIZE={world_size}")
    device = _resolve_device(cfg.device, local_rank, world_size > 1)
    notes: list[str] = []

    precision = cfg.precision
    if device.type == "cpu" and precision != "fp32":
        notes.append(f"runtime.precision={precision} ignored: CPU runs fp32")
        precision = "fp32"
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        notes.append("this GPU has no bf16 support: using fp16 with a gradient scaler")
        precision = "fp16"
    channels_last = cfg.channels_last
    if channels_last and device.type != "cuda":
        notes.append("runtime.channels_last ignored on CPU")
        channels_last = False
    if device.type == "cuda":
        # TF32 matmuls/convolutions: the accuracy of bf16 autocast is lower still, and fp32 runs
        # gain 2-3x on Ampere and later.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True

    owns_group = False
    if world_size > 1 and not dist.is_initialized():
        for var in ("MASTER_ADDR", "MASTER_PORT"):
            if not os.environ.get(var):
                raise ConfigError(f"environment: WORLD_SIZE={world_size} but {var} is not set")
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs: dict[str, Any] = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size, **kwargs)
        owns_group = True
    # An explicit OMP_NUM_THREADS (the user's, or torchrun's default of 1) counts as a request.
    requested = cfg.threads or _env_int("OMP_NUM_THREADS", 0)
    per_machine = max(_env_int("LOCAL_WORLD_SIZE", 1), 1)
    share = available_cores() / per_machine
    busy = busy_cores() / per_machine
    max_workers = choose_cpu_budget(requested, 10**6, cores=share, busy=busy)[1]
    threads = choose_cpu_budget(requested, 0, cores=share, busy=busy)[0]
    torch.set_num_threads(threads)
    return Runtime(
        threads=threads,
        max_workers=max_workers,
        requested_threads=requested,
        cpu_share=share,
        busy_share=busy,
        device=device,
        precision=precision,
        compile=cfg.compile,
        channels_last=channels_last,
        seed=cfg.seed,
        rank=rank,
        world_size=world_size,
        local_rank=local_rank,
        notes=notes,
        owns_process_group=owns_group,
    )


def teardown(rt: Runtime) -> None:
    """Destroy the process group this runtime started (no-op otherwise)."""
    if rt.owns_process_group and dist.is_initialized():
        dist.destroy_process_group()
        rt.owns_process_group = False


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (every device) from one integer."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 (the legacy global state third-party code uses)
    torch.manual_seed(seed)


@contextlib.contextmanager
def _null() -> Iterator[None]:
    yield


def autocast(rt: Runtime) -> contextlib.AbstractContextManager[Any]:
    """Mixed-precision context for ``rt`` (bf16/fp16 on CUDA; nothing in fp32)."""
    dtype = rt.amp_dtype
    if dtype is None:
        return _null()
    return torch.autocast(device_type=rt.device.type, dtype=dtype)


# --------------------------------------------------------------------------------------------------
# Models: placement, compile, DDP


def prepare_model(
    model: nn.Module, rt: Runtime, *, ddp: bool = True, unused: Sequence[str] = ()
) -> nn.Module:
    """Move ``model`` to the device; apply channels-last, DDP and ``torch.compile`` as configured.

    The returned module is what the training step calls; :func:`unwrap_model` gives back the plain
    module (for state dicts, validation and snapshots).

    Args:
        model: the plain module (on the CPU).
        rt: the runtime.
        ddp: wrap in ``DistributedDataParallel`` when the run is distributed.
        unused: names (as in ``model.named_parameters()``) of parameters the forward pass never
            uses. DDP leaves them out of its gradient reduction; otherwise it waits for their
            gradients and fails at the second step. Naming them costs nothing per step, unlike
            ``find_unused_parameters=True``, which walks the autograd graph at every step.
    """
    model = model.to(rt.device)
    if rt.channels_last:
        model = model.to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]
    if ddp and rt.distributed:
        names = set(dict(model.named_parameters()))
        missing = sorted(set(unused) - names)
        if missing:
            raise ValueError(f"unused parameters not in the model: {missing[:3]}")
        if unused:
            nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
                model, list(unused)
            )
        device_ids = [rt.device.index] if rt.device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    if rt.compile:
        model = torch.compile(model)  # type: ignore[assignment]
    return model


def prefetch_to_device(batches: Iterator[Any], rt: Runtime) -> Iterator[Any]:
    """Yield ``batches`` with their volumes already on the device, one batch ahead (GPU only).

    The copy of batch ``s + 1`` is queued (non-blocking, from the loader's pinned memory) before
    step ``s`` runs, so the host never waits for it. Only tensors of 4 or more dimensions (images,
    labels) move; small index tensors stay on the host, where tasks use them for CPU-side sampling
    without a synchronisation. On a CPU the batches pass through untouched.
    """
    if not rt.is_accelerator:
        yield from batches
        return

    def move(batch: Any) -> Any:
        if not isinstance(batch, dict):
            return batch
        return {
            k: rt.to_device(v) if isinstance(v, torch.Tensor) and v.dim() >= 4 else v
            for k, v in batch.items()
        }

    try:
        ahead = move(next(batches))
    except StopIteration:
        return
    for batch in batches:
        current, ahead = ahead, move(batch)
        yield current
    yield ahead


def unwrap_model(model: nn.Module) -> nn.Module:
    """Strip ``torch.compile`` and DDP wrappers (their ``_orig_mod.``/``module.`` key prefixes)."""
    while True:
        inner = getattr(model, "_orig_mod", None)
        if isinstance(inner, nn.Module):
            model = inner
            continue
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
            continue
        return model


# --------------------------------------------------------------------------------------------------
# Collectives that degrade to no-ops in a single process


def all_reduce_sum(t: torch.Tensor, rt: Runtime) -> torch.Tensor:
    """Sum ``t`` over processes in place and return it (identity without DDP)."""
    if rt.distributed:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier(rt: Runtime) -> None:
    """Wait for every process (no-op without DDP)."""
    if rt.distributed:
        dist.barrier()


# --------------------------------------------------------------------------------------------------
# Timing and memory


def synchronize(rt: Runtime) -> None:
    """Wait for queued device work to finish (for honest timings)."""
    if rt.device.type == "cuda":
        torch.cuda.synchronize(rt.device)


def reset_peak_memory(rt: Runtime) -> None:
    """Start a new peak-memory window (GPU only; the CPU figure is the process's peak RSS)."""
    if rt.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(rt.device)


def peak_memory_bytes(rt: Runtime) -> int:
    """Peak device memory: CUDA ``max_memory_allocated`` or, on CPU, the process's peak RSS."""
    if rt.device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(rt.device))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)  # bytes on macOS, KiB on Linux


def memory_kind(rt: Runtime) -> str:
    """What :func:`peak_memory_bytes` measures, for reports."""
    return "GPU max allocated" if rt.device.type == "cuda" else "process peak RSS"


def device_name(rt: Runtime) -> str:
    """Human-readable name of the compute device."""
    if rt.device.type == "cuda":
        return str(torch.cuda.get_device_name(rt.device))
    return f"CPU ({torch.get_num_threads()} threads)"


def matmul_tflops(rt: Runtime, size: int, *, repeats: int = 10) -> float:
    """Achieved TFLOP/s of a ``size`` x ``size`` matmul in the autocast dtype (bf16 on a GPU).

    A large bf16 matmul runs at close to the device's peak, so this is the reference that step
    FLOP/s are compared with (measured on the same device in the same run, not a datasheet).
    """
    dtype = rt.amp_dtype or torch.float32
    a = torch.randn(size, size, device=rt.device, dtype=dtype)
    b = torch.randn(size, size, device=rt.device, dtype=dtype)
    torch.matmul(a, b)  # warm-up (cuBLAS heuristics)
    synchronize(rt)
    import time

    start = time.perf_counter()
    for _ in range(repeats):
        torch.matmul(a, b)
    synchronize(rt)
    elapsed = time.perf_counter() - start
    return 2.0 * size**3 * repeats / elapsed / 1e12


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is the device (or host) running out of memory."""
    if isinstance(exc, torch.cuda.OutOfMemoryError | MemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def release_memory(rt: Runtime) -> None:
    """Return cached device memory after a model is dropped (between benchmark cases)."""
    import gc

    gc.collect()
    if rt.device.type == "cuda":
        torch.cuda.empty_cache()


def count_host_syncs(rt: Runtime, fn: Any) -> int | None:
    """Host-device synchronisations while ``fn()`` runs (None on CPU, where there are none).

    Uses ``torch.cuda.set_sync_debug_mode("warn")``, which warns at every synchronising call
    (``.item()``, ``.cpu()``, ``float(tensor)``, a non-pinned copy, ...).
    """
    if rt.device.type != "cuda":
        fn()
        return None
    import warnings

    previous = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode(previous)
    return sum("synchroniz" in str(w.message).lower() for w in caught)


# --------------------------------------------------------------------------------------------------
# RNG states, stored in checkpoints as plain tensors/lists (loadable with weights_only=True)


def get_rng_state(rt: Runtime) -> dict[str, Any]:
    """Capture the Python, NumPy and torch (CPU and device) RNG states as plain data."""
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state(legacy=True)  # noqa: NPY002 (see seed_everything)
    assert isinstance(np_state, tuple)
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": {
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if rt.device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(rt.device)
    return state


def set_rng_state(state: dict[str, Any], rt: Runtime) -> None:
    """Restore states captured by :func:`get_rng_state` (a missing device state is left alone)."""
    version, internal, gauss = state["python"]
    random.setstate((int(version), tuple(int(v) for v in internal), gauss))
    np_state = state["numpy"]
    np.random.set_state(  # noqa: NPY002 (see seed_everything)
        (
            "MT19937",
            np_state["keys"].numpy().astype(np.uint32),
            int(np_state["pos"]),
            int(np_state["has_gauss"]),
            float(np_state["cached_gaussian"]),
        )
    )
    torch.set_rng_state(state["torch"].cpu())
    if rt.device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), rt.device)


__all__ = [
    "Runtime",
    "accelerator_available",
    "all_reduce_sum",
    "autocast",
    "available_cores",
    "barrier",
    "busy_cores",
    "cgroup_cpu_limit",
    "choose_cpu_budget",
    "count_host_syncs",
    "device_name",
    "get_rng_state",
    "is_out_of_memory",
    "matmul_tflops",
    "memory_kind",
    "peak_memory_bytes",
    "prefetch_to_device",
    "prepare_model",
    "release_memory",
    "reset_peak_memory",
    "seed_everything",
    "set_rng_state",
    "setup_runtime",
    "synchronize",
    "teardown",
    "unwrap_model",
]
