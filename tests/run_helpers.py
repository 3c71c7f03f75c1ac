"""Helpers shared by the tests that start real runs: wait for progress, find a run's processes."""

from __future__ import annotations

import time

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
