import sqlite3
import subprocess
import sys
import time
import types

import psutil
import pytest

from nexa_core import telemetry
from nexa_core.errors import ConfigError
from nexa_core.runstore import RunStore


@pytest.fixture
def no_torch(monkeypatch):
    """As in a process that never imported torch (the suite may have imported it elsewhere)."""
    monkeypatch.delitem(sys.modules, "torch", raising=False)


CHILD = "import time; x = bytearray(50_000_000); print('ready', flush=True); time.sleep(5)"


def test_process_tree_rss_includes_children():
    own = psutil.Process().memory_info().rss
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"  # the 50 MB are allocated (and touched)
        assert telemetry.process_tree_rss_bytes() - own > 40_000_000
        assert telemetry.process_tree_rss_bytes(child.pid) > 40_000_000
    finally:
        child.kill()
        child.wait()
    assert telemetry.process_tree_rss_bytes(child.pid) == 0  # gone: no error


def test_no_gpu_samples_without_cuda(no_torch):
    assert telemetry.gpu_samples() == []
    assert "torch" not in sys.modules  # never imported just to sample


def test_no_gpu_samples_when_cuda_is_unavailable(monkeypatch):
    cuda = types.SimpleNamespace(is_available=lambda: False)
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=cuda))
    assert telemetry.gpu_samples() == []


def test_physical_gpu_ids_follow_cuda_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,1")
    assert [telemetry.physical_gpu_index(i) for i in (0, 1)] == [3, 1]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert telemetry.physical_gpu_index(1) == 1


def test_gpu_samples_map_torch_devices_to_nvml(monkeypatch):
    cuda = types.SimpleNamespace(
        is_available=lambda: True,
        device_count=lambda: 2,
        memory_allocated=lambda i: 100 + i,
        memory_reserved=lambda i: 200 + i,
    )
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=cuda))
    used = {3: 3000, 1: 1000}
    nvml = types.SimpleNamespace(
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetMemoryInfo=lambda h: types.SimpleNamespace(used=used[h]),
    )
    monkeypatch.setattr(telemetry, "_nvml", lambda: nvml)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,1")
    assert telemetry.gpu_samples() == [
        {"gpu_index": 3, "gpu_allocated_bytes": 100, "gpu_reserved_bytes": 200, "nvml_used_bytes": 3000},
        {"gpu_index": 1, "gpu_allocated_bytes": 101, "gpu_reserved_bytes": 201, "nvml_used_bytes": 1000},
    ]
    monkeypatch.setattr(telemetry, "_nvml", lambda: None)  # no driver: no NVML figure, rows kept
    assert [s["nvml_used_bytes"] for s in telemetry.gpu_samples()] == [None, None]


def test_process_gpu_used_is_this_processs_row_of_nvml(monkeypatch):
    row = types.SimpleNamespace
    procs = {2: [row(pid=11, usedGpuMemory=5), row(pid=12, usedGpuMemory=700)]}
    nvml = types.SimpleNamespace(
        nvmlDeviceGetHandleByIndex=lambda i: i, nvmlDeviceGetComputeRunningProcesses=lambda h: procs[h]
    )
    monkeypatch.setattr(telemetry, "_nvml", lambda: nvml)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2")
    assert telemetry.process_gpu_used_bytes(0, pid=12) == 700
    assert telemetry.process_gpu_used_bytes(0, pid=99) is None  # not listed (e.g. another PID namespace)
    monkeypatch.setattr(telemetry, "_nvml", lambda: None)
    assert telemetry.process_gpu_used_bytes(0, pid=12) is None  # no driver


def test_sampler_writes_to_the_store_while_running(tmp_path, no_torch):
    store = RunStore(tmp_path / "runs.sqlite")
    with telemetry.MemorySampler(store, "run", rank=2, interval_s=0.05) as sampler:
        sampler.set_step(3)
        deadline = time.monotonic() + 0.5
        while not store.memory("run") and time.monotonic() < deadline:
            time.sleep(0.02)
        assert store.memory("run"), "no rows within 0.5 s"
    rows = store.memory("run")
    assert rows[-1]["step"] == 3 and rows[-1]["rank"] == 2 and rows[-1]["host"]
    assert all(r["rss_bytes"] > 0 and r["gpu_index"] is None for r in rows)
    # the kernel's high-water mark of this process is at least any RSS sampled from it (less the
    # few pages the kernel's per-thread RSS counters may not have folded in yet)
    ((name, peak),) = sampler.peak_metric().items()
    assert name == "peak_rss_bytes/rank2" and peak >= max(r["rss_bytes"] for r in rows) - 2**20 > 0
    assert sampler.last_error is None


def test_sample_now_is_rate_limited_and_stop_flushes(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    sampler = telemetry.MemorySampler(store, "run", interval_s=60).start()  # the thread never flushes
    sampler.set_step(1)
    sampler.sample_now()  # within 0.2 s of start's sample: nothing queued
    time.sleep(telemetry.MIN_SAMPLE_GAP_S + 0.05)
    sampler.set_step(2)
    sampler.sample_now()
    assert store.memory("run") == []  # queued, not written yet
    sampler.stop()
    assert [r["step"] for r in store.memory("run")] == [None, 2, 2]


def test_sampler_survives_a_broken_store(tmp_path):
    sampler = telemetry.MemorySampler(RunStore(tmp_path), "run", interval_s=0.05)  # a folder, not a file
    with sampler:
        sampler.sample_now()
        time.sleep(0.15)
    # a folder where the store should be: its error is kept, training goes on
    assert isinstance(sampler.last_error, (sqlite3.Error, ConfigError))


def test_sampler_survives_a_locked_store_and_sampling_errors(monkeypatch):
    class Locked:
        def log_memory(self, run_id, rows):
            raise sqlite3.OperationalError("database is locked")

    def broken():
        raise RuntimeError("CUDA error: unspecified launch failure")

    sampler = telemetry.MemorySampler(Locked(), "run", interval_s=0.05)
    sampler.start()
    time.sleep(0.1)
    assert isinstance(sampler.last_error, sqlite3.OperationalError)
    monkeypatch.setattr(telemetry, "gpu_samples", broken)
    time.sleep(0.25)
    sampler.sample_now()
    sampler.stop()
    assert isinstance(sampler.last_error, RuntimeError)


@pytest.mark.parametrize("visible", ["GPU-0000-not-a-real-uuid", "MIG-xyz"])
def test_unresolvable_device_entries_have_no_index(monkeypatch, visible):
    monkeypatch.setattr(telemetry, "_nvml", lambda: None)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert telemetry.physical_gpu_index(0) is None
