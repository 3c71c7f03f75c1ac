"""Probes in the background. A probe (or a find-batch-size search of several) takes minutes to an
hour, so the Plan page must not run it in its script: ``start`` writes the job under
NEXA_HOME/probes/<id>.json and starts ``python -m nexa_core.probe_jobs <id>`` in its own process
session, which runs probe.probe / probe.find_batch_size and writes each probe's result to the same
file as it lands. ``state`` reads it back (a closed tab or a restarted panel loses nothing). Each
probe is itself a run of the run manager, so it also appears on the Runs page."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil

from nexa_core import paths
from nexa_core.train_config import TrainConfig

FOLDER = "probes"


def _file(job_id: str) -> Path:
    if not isinstance(job_id, str) or not paths.is_run_id(job_id):  # never a path out of the folder
        raise ValueError(f"probe job id: {job_id!r} is not one")
    return paths.home_folder(FOLDER) / f"{job_id}.json"


def _write(job_id: str, data: dict[str, Any]) -> None:
    path = _file(job_id)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)  # readers never see half a file


def start(config: TrainConfig, budget_bytes: int, on_gpu: bool, find: bool, max_batch: int = 64) -> str:
    """Start the job and return its id at once."""
    job_id = paths.new_run_id("probe")
    job = {"id": job_id, "config": config.to_dict(), "budget_bytes": budget_bytes, "on_gpu": on_gpu,
           "find": find, "max_batch": max_batch, "state": "running", "probes": [], "result": None,
           "error": None, "started_at": time.time(), "pid": None}  # fmt: skip
    _write(job_id, job)
    log = (paths.home_folder(FOLDER) / f"{job_id}.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "nexa_core.probe_jobs", job_id],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=os.environ.copy(),
    )  # fmt: skip
    log.close()
    # reaped when it ends, so the panel keeps no zombie child
    threading.Thread(target=proc.wait, name=f"reap-{job_id}", daemon=True).start()
    _write(job_id, {**job, "pid": proc.pid, "pid_create_time": psutil.Process(proc.pid).create_time()})
    return job_id


def state(job_id: str) -> dict[str, Any] | None:
    """The job as its process last wrote it; a running job whose process is gone is reported failed."""
    try:
        job = json.loads(_file(job_id).read_text())
    except (OSError, ValueError):
        return None
    if job["state"] == "running" and job.get("pid") and not _alive(job["pid"], job.get("pid_create_time")):
        time.sleep(0.2)  # it may have written its result just now
        job = json.loads(_file(job_id).read_text())
        if job["state"] == "running":
            job = {
                **job,
                "state": "failed",
                "error": "the probe process ended without a result (see its log)",
            }
    return job


def _alive(pid: int, create_time: float | None) -> bool:
    try:
        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE and (
            create_time is None or proc.create_time() == create_time
        )
    except psutil.Error:
        return False


def run(job_id: str) -> None:
    """The job process: the probes, each result written as it lands, then the answer."""
    from nexa_core.probe import find_batch_size, probe

    job = json.loads(_file(job_id).read_text())
    config = TrainConfig.from_dict(job["config"])

    def landed(result) -> None:
        job["probes"].append(result.__dict__)
        _write(job_id, job)

    try:
        if job["find"]:
            found = find_batch_size(
                config, job["budget_bytes"], job["max_batch"], job["on_gpu"], progress=landed
            )
            job.update(
                result={"batch_size": found["batch_size"]}, probes=found["probes"], error=found["error"]
            )
        else:
            landed(probe(replace(config), job["budget_bytes"], on_gpu=job["on_gpu"]))
            job["result"] = {"batch_size": config.batch_size, "fits": job["probes"][-1]["fits"]}
        job["state"] = "failed" if job["error"] else "done"
    except Exception as exc:  # recorded for the page; the traceback is in the job's log
        job.update(state="failed", error=f"{type(exc).__name__}: {exc}")
        _write(job_id, job)
        raise
    _write(job_id, job)


if __name__ == "__main__":
    run(sys.argv[1])
