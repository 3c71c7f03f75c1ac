"""Helpers shared by the tests that start real runs and servers: wait for progress, find a run's
processes, end a server, make a tiny model folder."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import psutil

from nexa_core import runner
from nexa_core.runstore import RunStore


def wait_for_step(run_id: str, step: int, timeout: float = 300) -> dict:
    """Until the run has logged ``step``; fails at once (with the log's tail) if the run ends first."""
    store = RunStore()
    deadline = time.time() + timeout
    while time.time() < deadline:
        run = store.get_run(run_id) or {}
        if (run.get("last_step") or 0) >= step:
            return run
        assert run.get("state") in ("queued", "running"), (run.get("reason"), runner.logs(run_id)[-3000:])
        time.sleep(0.2)
    raise TimeoutError(f"run {run_id} did not reach step {step} in {timeout} s")


def processes_carrying(run_id: str) -> list[psutil.Process]:
    """Every live process on the machine whose environment names the run (the launcher sets
    NEXA_RUN_ID for the run's whole tree, every rank included)."""
    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.status() != psutil.STATUS_ZOMBIE and proc.environ().get("NEXA_RUN_ID") == run_id:
                found.append(proc)
        except psutil.Error:
            continue
    return found


def end_process(proc: subprocess.Popen, grace_s: float = 20) -> None:
    """SIGTERM, then SIGKILL after ``grace_s``; reaped either way (a server a test started)."""
    proc.terminate()
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def tiny_bert(folder: Path, vocab_size: int = 30522) -> Path:
    """A one-layer BERT config in ``folder`` (no weights): a local model trained or built at random."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({
        "model_type": "bert", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
        "intermediate_size": 64, "vocab_size": vocab_size, "max_position_embeddings": 64,
    }))  # fmt: skip
    return folder
