"""The run manager: start a RunSpec as a supervised subprocess, stop it (every process of it),
reattach after a restart, resume. The run store and the run folder are the truth; nothing here
depends on a browser session."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import yaml

from nexa_core import paths
from nexa_core.device_manager import DEFAULT_ACCELERATE_CONFIG
from nexa_core.errors import ConfigError
from nexa_core.exits import LOG_FILE, log_tail
from nexa_core.launch import ACCELERATE_FILE, DEEPSPEED_FILE, PROJECT_ROOT, RUN_CONFIG, RunSpec, build_launch
from nexa_core.runstore import TERMINAL, RunState, RunStore

ACTIVE = (RunState.QUEUED, RunState.RUNNING)
DEFAULT_GRACE_S = 15.0


def _same_process(pid: int | None, create_time: float | None) -> psutil.Process | None:
    """The process if it still runs and is the one we started (pid and start time both match,
    so a reused pid is never mistaken for the run)."""
    if not pid:
        return None
    try:
        proc = psutil.Process(pid)
        if create_time is not None and abs(proc.create_time() - create_time) > 1.0:
            return None
        return proc if proc.status() != psutil.STATUS_ZOMBIE else None
    except psutil.Error:
        return None


def refresh(store: RunStore | None = None) -> list[str]:
    """Reattach: runs recorded as active whose process is gone are marked failed with their last
    step. Returns the ids it changed. Safe to call from every app rerun and CLI start."""
    store = store or RunStore()
    changed = []
    for run in store.list_runs(limit=1000):
        if RunState(run["state"]) not in ACTIVE or run.get("kind") == "bench":
            continue
        if _same_process(run.get("pid"), run.get("pid_create_time")):
            continue
        if not run.get("pid") and time.time() - (run.get("created_at") or 0) < 30:
            continue  # being launched right now: the pid is recorded a moment after the row
        latest = store.get_run(run["id"]) or run  # it may have ended between the two reads
        if RunState(latest["state"]) in TERMINAL:
            continue
        store.set_state(
            run["id"],
            RunState.FAILED,
            reason=f"the run's process vanished (killed or machine restarted); last step {latest.get('last_step') or 0}",
        )
        changed.append(run["id"])
    return changed


def busy_devices(store: RunStore) -> dict[str, str]:
    """device -> run id, for runs that are still alive."""
    busy = {}
    for run in store.list_runs(limit=1000):
        if RunState(run["state"]) in ACTIVE and _same_process(run.get("pid"), run.get("pid_create_time")):
            for device in run.get("gpus") or ["cpu"]:
                busy[str(device)] = run["id"]
    return busy


def _write_run_files(spec: RunSpec, run_dir: Path) -> None:
    spec.train.write(run_dir / RUN_CONFIG)
    settings = spec.train.deepspeed_settings()
    (run_dir / DEEPSPEED_FILE).write_text(
        json.dumps(settings.deepspeed_config(settings.resolved_precision()), indent=2)
    )
    accelerate = yaml.safe_load(DEFAULT_ACCELERATE_CONFIG.read_text())
    accelerate["deepspeed_config"]["deepspeed_config_file"] = str(run_dir / DEEPSPEED_FILE)
    accelerate["num_processes"] = spec.nproc
    accelerate["use_cpu"] = not spec.gpus and not _has_gpu()
    if spec.gpus:
        accelerate["gpu_ids"] = ",".join(map(str, spec.gpus))
    (run_dir / ACCELERATE_FILE).write_text(yaml.safe_dump(accelerate, sort_keys=False))
    (run_dir / "spec.json").write_text(
        json.dumps(
            {"mode": str(spec.mode), "nproc": spec.nproc, "gpus": spec.gpus, "master_port": spec.master_port}
        )
    )


def _has_gpu() -> bool:
    from nexa_core.hardware import list_gpus

    return bool(list_gpus())


def launch(
    spec: RunSpec,
    run_id: str | None = None,
    estimate: dict[str, Any] | None = None,
    store: RunStore | None = None,
) -> str:
    """Start ``spec`` and return its run id at once. Refuses a device another live run holds."""
    store = store or RunStore()
    refresh(store)
    resuming = spec.resume
    if resuming:
        if not run_id or store.get_run(run_id) is None:
            raise ConfigError([f"run_id: no run {run_id!r} to resume"])
        if RunState(store.get_run(run_id)["state"]) in ACTIVE:
            raise ConfigError([f"run_id: {run_id} is still running; stop it before resuming"])
    taken = {d: r for d, r in busy_devices(store).items() if d in spec.devices}
    if taken:
        owners = ", ".join(f"{d} by run {r}" for d, r in sorted(taken.items()))
        raise ConfigError([f"gpus (--gpus): busy ({owners}); stop that run or pick another device"])
    if spec.master_port is None:
        from dataclasses import replace

        from nexa_core.device_manager import _free_port

        spec = replace(spec, master_port=_free_port())  # two runs on two GPUs must not share a port
    run_id = run_id or paths.new_run_id(spec.train.name)
    run_dir = paths.run_dir(run_id)
    run_dir.mkdir(parents=True, exist_ok=True)
    if not resuming:
        _write_run_files(spec, run_dir)
    argv, extra_env = build_launch(spec, run_id, run_dir)
    env = {**os.environ, **extra_env, "NEXA_HOME": str(paths.nexa_home())}
    supervised = [sys.executable, "-m", "nexa_core.supervise", run_id, "--", *argv]
    if resuming:
        store.update_run(run_id, command=argv, stopped_by=None, reason=None, exit_code=None)
        store.set_state(run_id, RunState.QUEUED)
    else:
        store.create_run(
            run_id,
            name=spec.train.name or run_id,
            spec={**spec.train.to_dict(), "launch_mode": str(spec.mode), "nproc": spec.nproc},
            run_dir=str(run_dir),
            estimate=estimate,
            command=argv,
            gpus=[f"gpu{g}" for g in spec.gpus] or ["cpu"],
        )
    with (run_dir / LOG_FILE).open("ab") as log:
        log.write(
            f"\n=== {'resume' if resuming else 'launch'} {time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(argv)}\n".encode()
        )
        log.flush()
        proc = subprocess.Popen(
            supervised,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=PROJECT_ROOT,
            start_new_session=True,  # its own process group: a stop reaches every process of the run
        )
    store.update_run(run_id, pid=proc.pid, pid_create_time=psutil.Process(proc.pid).create_time())
    if RunState((store.get_run(run_id) or {}).get("state", "queued")) is RunState.QUEUED:
        store.set_state(run_id, RunState.RUNNING)  # unless it already ended (a run that fails at once)
    return run_id


def resume(run_id: str, store: RunStore | None = None) -> str:
    """Continue a stopped or failed run from its latest complete checkpoint, as the same run."""
    store = store or RunStore()
    run = store.get_run(run_id)
    if run is None:
        raise ConfigError([f"run_id: no run {run_id!r}"])
    from nexa_core.train_config import TrainConfig

    run_dir = Path(run["run_dir"])
    saved = json.loads((run_dir / "spec.json").read_text())
    spec = RunSpec(
        TrainConfig.load(run_dir / RUN_CONFIG),
        saved["mode"],
        saved["nproc"],
        saved["gpus"],
        saved["master_port"],
        resume=True,
    )
    return launch(spec, run_id=run_id, store=store)


def run_processes(run: dict[str, Any]) -> list[psutil.Process]:
    """Every live process of a run: the supervisor's group and all its descendants."""
    root = _same_process(run.get("pid"), run.get("pid_create_time"))
    if root is None:
        return []
    procs = {root.pid: root}
    for child in root.children(recursive=True):
        procs[child.pid] = child
    for proc in psutil.process_iter(["pid"]):
        try:  # anything still in the run's process group (a child whose parent already died)
            if os.getpgid(proc.pid) == root.pid:
                procs.setdefault(proc.pid, proc)
        except (OSError, psutil.Error):
            continue
    return list(procs.values())


def stop(
    run_id: str, grace_s: float = DEFAULT_GRACE_S, by: str = "user", store: RunStore | None = None
) -> str:
    """SIGTERM to every process of the run (the trainer checkpoints and exits at the next step),
    SIGKILL to whatever is left after ``grace_s``. Returns the final state."""
    store = store or RunStore()
    run = store.get_run(run_id)
    if run is None:
        raise ConfigError([f"run_id: no run {run_id!r}"])
    if RunState(run["state"]) in TERMINAL:
        return run["state"]
    store.update_run(run_id, stopped_by=by)
    procs = run_processes(run)
    for proc in procs:
        _signal(proc, signal.SIGTERM)
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for proc in alive:
        _signal(proc, signal.SIGKILL)
    psutil.wait_procs(alive, timeout=5)
    latest = store.get_run(run_id) or run
    if RunState(latest["state"]) not in TERMINAL:
        forced = f" after {grace_s:g} s grace: {len(alive)} process(es) killed" if alive else ""
        store.set_state(run_id, RunState.STOPPED, reason=f"stopped by {by}{forced}", stopped_by=by)
    return (store.get_run(run_id) or latest)["state"]


def _signal(proc: psutil.Process, sig: int) -> None:
    try:
        proc.send_signal(sig)
    except psutil.Error:
        pass


def wait(run_id: str, timeout_s: float = 600, store: RunStore | None = None) -> dict[str, Any]:
    """Block until the run is in a terminal state and its processes are gone (for CLI and tests)."""
    store = store or RunStore()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        run = store.get_run(run_id) or {}
        if RunState(run.get("state", "failed")) in TERMINAL and not run_processes(run):
            return run
        time.sleep(0.25)
    raise TimeoutError(f"run {run_id} still active after {timeout_s} s")


def logs(run_id: str, max_bytes: int = 64 * 1024, store: RunStore | None = None) -> str:
    run = (store or RunStore()).get_run(run_id)
    if run is None:
        raise ConfigError([f"run_id: no run {run_id!r}"])
    return log_tail(run["run_dir"], max_bytes)
