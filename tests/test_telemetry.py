import subprocess
import sys
import time

from nexa_core import telemetry
from nexa_core.runstore import RunStore


def test_process_tree_rss_includes_children():
    own = telemetry.process_tree_rss_bytes()
    child = subprocess.Popen([sys.executable, "-c", "x = bytearray(80_000_000); import time; time.sleep(20)"])
    try:
        deadline = time.time() + 15
        while time.time() < deadline and telemetry.process_tree_rss_bytes() - own < 60_000_000:
            time.sleep(0.1)
        assert telemetry.process_tree_rss_bytes() - own > 60_000_000
    finally:
        child.kill()
        child.wait()


def test_no_gpu_samples_without_cuda():
    assert telemetry.gpu_samples() == []


def test_physical_gpu_ids_follow_cuda_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,1")
    assert [telemetry.physical_gpu_index(i) for i in (0, 1)] == [3, 1]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert telemetry.physical_gpu_index(1) == 1


def test_sampler_writes_to_the_store(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    with telemetry.MemorySampler(store, "run", rank=0, interval_s=0.05) as sampler:
        sampler.set_step(3)
        time.sleep(0.4)
    rows = store.memory("run")
    assert len(rows) >= 3 and rows[-1]["step"] == 3 and rows[-1]["rss_bytes"] > 0
    assert sampler.peak_rss_bytes >= max(r["rss_bytes"] for r in rows) * 0.5


def test_sampler_survives_a_broken_store(tmp_path):
    sampler = telemetry.MemorySampler(RunStore(tmp_path), "run", interval_s=0.05)  # a folder, not a file
    sampler.start()
    time.sleep(0.2)
    sampler.stop()
    assert sampler.last_error is not None
