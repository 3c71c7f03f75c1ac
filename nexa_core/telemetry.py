"""Memory telemetry: process-tree RSS (psutil), CUDA allocator figures (torch) and NVML used memory,
sampled every second by a daemon thread and on every training step, written to the run store."""

from __future__ import annotations

import logging
import os
import socket
import sqlite3
import sys
import threading
import time
from typing import Any

import psutil

from nexa_core.errors import ConfigError

log = logging.getLogger("nexa.telemetry")
_nvml_lock = threading.Lock()
_nvml_ready: bool | None = None
MIN_SAMPLE_GAP_S = 0.2  # sample_now() more often than this only updates the in-memory peak


def process_tree_rss_bytes(pid: int | None = None) -> int:
    """RSS of a process and all its descendants (launchers, ranks, compile jobs)."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except psutil.Error:  # ended or not ours between listing and reading
            continue
    return total


def _nvml():
    """pynvml, initialised once per process; None without a driver."""
    global _nvml_ready
    with _nvml_lock:
        if _nvml_ready is None:
            try:
                import pynvml

                pynvml.nvmlInit()
                _nvml_ready = True
            except Exception:  # no library, no driver: a CPU-only machine
                _nvml_ready = False
        if not _nvml_ready:
            return None
        import pynvml

        return pynvml


def physical_gpu_index(torch_index: int) -> int | None:
    """Map torch's device number to the NVML (physical) index through CUDA_VISIBLE_DEVICES; NEXA
    launches with CUDA_DEVICE_ORDER=PCI_BUS_ID so both count in the same order. A GPU UUID entry is
    looked up in NVML; None when it cannot be resolved (e.g. a MIG instance)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        ids = [v.strip() for v in visible.split(",") if v.strip()]
        if torch_index < len(ids):
            entry = ids[torch_index]
            if entry.isdigit():
                return int(entry)
            nvml = _nvml()
            if nvml is None:
                return None
            try:
                return int(nvml.nvmlDeviceGetIndex(nvml.nvmlDeviceGetHandleByUUID(entry)))
            except Exception:
                return None
    return torch_index


def gpu_samples() -> list[dict[str, Any]]:
    """Per visible CUDA device: allocator figures and NVML used memory. [] without CUDA. Does not
    import torch itself: a process that has not imported it has no CUDA memory to report."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return []
    nvml = _nvml()
    out = []
    for i in range(torch.cuda.device_count()):
        physical = physical_gpu_index(i)
        used = None
        if nvml is not None and physical is not None:
            try:
                used = int(nvml.nvmlDeviceGetMemoryInfo(nvml.nvmlDeviceGetHandleByIndex(physical)).used)
            except Exception:
                used = None
        out.append(
            {
                "gpu_index": physical,
                "gpu_allocated_bytes": int(torch.cuda.memory_allocated(i)),
                "gpu_reserved_bytes": int(torch.cuda.memory_reserved(i)),
                "nvml_used_bytes": used,
            }
        )
    return out


PEAK_RSS_METRIC = "peak_rss_bytes/rank"


def kernel_peak_rss_bytes() -> int:
    """This process's peak resident set size (Linux ru_maxrss, in KiB: VmHWM). Children are not
    included: each rank is its own process and records its own."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def process_gpu_used_bytes(torch_index: int = 0, pid: int | None = None) -> int | None:
    """GPU memory NVML attributes to one process on one device (context included, as nvidia-smi's
    process list shows it). None without a driver, or when NVML does not list the process (a
    container's PID namespace hides it from the host driver)."""
    nvml = _nvml()
    physical = physical_gpu_index(torch_index)
    if nvml is None or physical is None:
        return None
    pid = os.getpid() if pid is None else pid
    try:
        procs = nvml.nvmlDeviceGetComputeRunningProcesses(nvml.nvmlDeviceGetHandleByIndex(physical))
    except Exception:  # an old driver without this call, or a lost device
        return None
    for proc in procs:
        if proc.pid == pid and proc.usedGpuMemory is not None:
            return int(proc.usedGpuMemory)
    return None


class MemorySampler:
    """Samples this process every ``interval_s`` in a daemon thread and on ``sample_now()``.
    Store errors never stop training: the last one is kept in ``last_error``."""

    def __init__(self, store: Any, run_id: str, rank: int = 0, interval_s: float = 1.0) -> None:
        self.store = store
        self.run_id = run_id
        self.rank = rank
        self.interval_s = interval_s
        self.host = socket.gethostname()
        self.last_error: Exception | None = None
        self._step: int | None = None
        self._pending: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_sample = 0.0

    def set_step(self, step: int) -> None:
        """The training step recorded with the following samples."""
        self._step = step

    def sample_now(self) -> None:
        """Called each step; nothing is queued within 0.2 s of the last sample (the exact peak comes
        from the kernel at the end: ``peak_metric``). Samples are written by the thread's next flush
        (or ``stop()``)."""
        if time.monotonic() - self._last_sample >= MIN_SAMPLE_GAP_S:
            self._take()

    def _take(self) -> None:
        """Queue one row per GPU (one row without a GPU)."""
        try:
            rss = process_tree_rss_bytes()
            base = {
                "t": time.time(),
                "rank": self.rank,
                "host": self.host,
                "step": self._step,
                "rss_bytes": rss,
            }
            rows = [{**base, **gpu} for gpu in gpu_samples()] or [{**base, "gpu_index": None}]
            with self._lock:
                self._pending.extend(rows)
            self._last_sample = time.monotonic()
        except Exception as exc:  # telemetry must never stop a training step (psutil, CUDA hiccups)
            self._error(exc)

    def _error(self, exc: Exception) -> None:
        if self.last_error is None or str(exc) != str(self.last_error):
            log.warning("memory telemetry: %s", exc)  # once per distinct error, not every second
        self.last_error = exc

    def flush(self) -> None:
        """Write queued samples in one transaction; a store error is kept in ``last_error``."""
        with self._lock:
            rows, self._pending = self._pending, []
        if not rows:
            return
        try:
            self.store.log_memory(self.run_id, rows)
        except (
            sqlite3.Error,
            OSError,
            ConfigError,
        ) as exc:  # a busy or broken store: these samples are dropped
            self._error(exc)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._take()
            self.flush()

    def start(self) -> MemorySampler:
        """Take a first sample and start the daemon thread."""
        self._stop.clear()
        self._take()
        self._thread = threading.Thread(target=self._loop, name="nexa-memory-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread (joined), take a last sample and flush everything queued."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._take()
        self.flush()

    def peak_metric(self) -> dict[str, float]:
        """This rank's peak RSS as the kernel counted it (every page ever resident at once, no
        sampling gaps), named per rank for the metrics table: ``peak_rss_bytes/rank<N>``."""
        return {f"{PEAK_RSS_METRIC}{self.rank}": float(kernel_peak_rss_bytes())}

    def __enter__(self) -> MemorySampler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
