"""The run manager: start a RunSpec as a supervised subprocess, stop it (every process of it),
reattach after a restart, resume. The run store and the run folder are the truth; nothing here
depends on a browser session."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil

from nexa_core import paths
from nexa_core.errors import ConfigError, raise_if
from nexa_core.exits import LOG_FILE, log_tail
from nexa_core.launch import PROJECT_ROOT, RunSpec, build_launch
from nexa_core.runstore import TERMINAL, RunState, RunStore
from nexa_core.scaling import write_run_files

ACTIVE = (RunState.QUEUED, RunState.RUNNING)
DEFAULT_GRACE_S = 15.0
LAUNCH_LOCK = "launch.lock"
LAUNCH_GRACE_S = 30.0  # a row younger than this without a pid is a run being started right now
# What a run's own variables (build_launch's env) replaced, as JSON, so that a run started by the
# supervisor of another (the queue) gets the launching process's environment, not that run's.
ENV_BEFORE_RUN = "NEXA_ENV_BEFORE_RUN"


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


@contextmanager
def launch_lock(timeout_s: float = 60.0) -> Iterator[None]:
    """One launch (busy check, run row, process start) at a time among every process sharing
    NEXA_HOME: app sessions, CLIs, tests. The kernel drops a flock when its holder dies, so a
    launcher killed mid-launch never leaves the lock behind; the file is opened close-on-exec and
    Popen closes fds, so a started run never inherits it."""
    path = paths.nexa_home() / LAUNCH_LOCK
    try:
        handle = open(path, "a+")  # noqa: SIM115 (closed by the with below)
    except IsADirectoryError:
        raise ConfigError(
            [f"launch lock ({path}): is a folder, not a file; remove it (rmdir {path})"]
        ) from None
    except OSError as exc:
        raise ConfigError(
            [f"launch lock ({path}): cannot open it ({exc.strerror}); launching, stopping or changing runs "
             f"needs NEXA_HOME ({path.parent}) writable"]
        ) from None  # fmt: skip
    with handle:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ConfigError(
                        [f"launch: another launch has held {path} for over {timeout_s:g} s; try again"]
                    ) from None
                time.sleep(0.02)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def refresh(store: RunStore | None = None, poll_scheduler: bool = False) -> list[str]:
    """Reattach: runs recorded as active whose process is gone (kill -9, a reboot) are marked
    failed with their last step; Slurm runs take the scheduler's state and their ranks' relayed
    metrics (slurm_jobs.refresh; ``poll_scheduler`` asks squeue now rather than at most every few
    seconds). Returns the ids it changed. Safe to call from every app rerun and CLI start; it waits
    for a launch in progress, so it never judges a half-started run."""
    from nexa_core import slurm_jobs

    store = store or RunStore()
    if store.read_only:  # nothing can be marked here; the runs are shown as recorded
        return []
    with launch_lock():
        changed = _refresh(store)
        changed += _dispatch(store)  # after the marking: a crashed run never blocks the queue
        return changed + slurm_jobs.refresh(store, force=poll_scheduler)


def dispatch(store: RunStore | None = None) -> list[str]:
    """Start the queued runs whose devices are free, in order (after marking crashed runs failed);
    returns the ids started. The supervisor of every run calls it when its run ends."""
    store = store or RunStore()
    with launch_lock():
        _refresh(store)
        return _dispatch(store)


def open_store() -> RunStore:
    """The run store, refreshed, once NEXA_HOME's layout is checked: one ConfigError naming every
    part that cannot be used (the home, the runs folder, the store, the launch lock), for `nexa runs`
    and the panel's pages, so a damaged home is a message before anything else is read."""
    paths.nexa_home()  # a home that is a file, or cannot be made, says so alone
    problems: list[str] = []
    try:
        paths.home_folder("runs", create=False)
    except ConfigError as exc:
        problems += exc.problems
    store = RunStore()
    try:
        refresh(store)
        store.list_runs(limit=1)  # a read-only store is not refreshed: read it once all the same
    except ConfigError as exc:
        problems += exc.problems
    raise_if(problems)
    return store


def _refresh(store: RunStore) -> list[str]:
    changed = []
    queued = {e.run_id for e in store.queue_entries()}
    for run in store.list_runs(limit=1000):
        if RunState(run["state"]) not in ACTIVE or run.get("kind") in ("bench", "slurm"):
            continue  # a Slurm run has no local process: the scheduler reports its state
        if run["id"] in queued:
            continue  # waiting in the queue: no process yet
        if _same_process(run.get("pid"), run.get("pid_create_time")):
            continue
        if not run.get("pid") and time.time() - (run.get("created_at") or 0) < LAUNCH_GRACE_S:
            continue  # `nexa train` by hand records its pid a moment after the row
        if run.get("pid") and run_processes(run):
            continue  # the supervisor died but ranks of the run still train (and report their end)
        step = run.get("last_step") or 0
        # one conditional update: a run that ended between the read and here keeps its outcome
        if store.set_state(
            run["id"],
            RunState.FAILED,
            reason=f"the run's process vanished (killed or machine restarted); last step {step}",
            only_from=ACTIVE,
        ):
            changed.append(run["id"])
    return changed


def busy_devices(store: RunStore) -> dict[str, str]:
    """device -> run id, for runs that are still alive or being started right now."""
    busy = {}
    now = time.time()
    queued = {e.run_id for e in store.queue_entries()}  # waiting: they hold nothing yet
    for run in store.list_runs(limit=1000):
        if RunState(run["state"]) not in ACTIVE or run.get("kind") == "slurm" or run["id"] in queued:
            continue  # (a Slurm run is on the cluster's nodes)
        starting = not run.get("pid") and now - (run.get("created_at") or 0) < LAUNCH_GRACE_S
        if starting or _same_process(run.get("pid"), run.get("pid_create_time")):
            for device in run.get("gpus") or ["cpu"]:
                busy[str(device)] = run["id"]
    return busy


def foreground_devices() -> list[str]:
    """What a run started by hand occupies: the GPUs this process can see (NVML's physical ids,
    through CUDA_VISIBLE_DEVICES), or the CPU on a machine without one."""
    from nexa_core.hardware import list_gpus

    gpus = list_gpus()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if not gpus or (visible is not None and not visible.strip()):
        return ["cpu"]
    if visible is None:
        return [f"gpu{g.index}" for g in gpus]
    from nexa_core.telemetry import physical_gpu_index

    ids = [physical_gpu_index(i) for i in range(len([v for v in visible.split(",") if v.strip()]))]
    return [f"gpu{i}" for i in ids if i is not None] or ["cpu"]


def register_foreground(
    store: RunStore, run_id: str, *, name: str, spec: dict[str, Any], run_dir: Path
) -> None:
    """A run started or resumed by hand (`nexa train` in a terminal) keeps the one-run-per-device
    rule too: under the launch lock it is refused while its devices are busy, else recorded (a new
    row, or the resumed one) with this process as its pid, so that a launch from the panel on the
    same device is refused in turn."""
    devices = foreground_devices()
    with launch_lock():
        _refresh(store)
        _dispatch(store)  # a queued run goes first
        taken = {d: r for d, r in busy_devices(store).items() if d in devices}
        if taken:
            owners = ", ".join(f"{d} by run {r}" for d, r in sorted(taken.items()))
            raise ConfigError(
                [f"devices: busy ({owners}); stop that run (nexa runs stop RUN_ID) or wait for it to end"]
            )
        if store.get_run(run_id) is None:
            store.create_run(run_id, name=name, spec=spec, run_dir=str(run_dir), gpus=devices)
        store.update_run(run_id, pid=os.getpid(), pid_create_time=psutil.Process().create_time())


def launch(
    spec: RunSpec,
    run_id: str | None = None,
    estimate: dict[str, Any] | None = None,
    store: RunStore | None = None,
    queue: bool = False,
) -> str:
    """Start ``spec`` and return its run id at once. A device another live run holds (or a queued
    run waits for) refuses the launch, or with ``queue`` puts it in the run queue, where it starts
    when its turn comes (nexa_core/run_queue.py; ``run_queue.position`` says where it waits).

    The busy check, the run row and the process start happen under one lock (NEXA_HOME/launch.lock),
    so of several launches racing for one device exactly one starts and the others are refused
    (or queued, in the order they took the lock)."""
    store = store or RunStore()
    with launch_lock():
        return _launch_locked(spec, run_id, estimate, store, queue)


def _launch_locked(
    spec: RunSpec, run_id: str | None, estimate: dict[str, Any] | None, store: RunStore, queue: bool
) -> str:
    _refresh(store)
    _dispatch(store)  # the line first: a new launch never overtakes a queued run
    resuming = spec.resume
    if resuming:
        if not run_id or store.get_run(run_id) is None:
            raise ConfigError([f"run_id: no run {run_id!r} to resume"])
        if RunState(store.get_run(run_id)["state"]) in ACTIVE:
            raise ConfigError([f"run_id: {run_id} is still queued or running; stop it before resuming"])
    elif run_id and store.get_run(run_id) is not None:
        raise ConfigError(
            [f"run_id (--run-id): a run {run_id!r} already exists; pick another id or resume it"]
        )
    taken = {d: r for d, r in busy_devices(store).items() if d in spec.devices}
    for entry in store.queue_entries():  # devices free now but promised to a run ahead in line
        taken.update({d: entry.run_id for d in entry.devices if d in spec.devices and d not in taken})
    if taken and not queue:
        owners = ", ".join(f"{d} by run {r}" for d, r in sorted(taken.items()))
        raise ConfigError([f"gpus (--gpus): busy ({owners}); stop that run or pick another device"])
    run_id = run_id or paths.new_run_id(spec.train.name)
    run_dir = paths.run_dir(run_id)
    run_dir.mkdir(parents=True, exist_ok=True)
    if not resuming:
        write_run_files(spec, run_dir)
    with store.batch():  # the row and its place in line land together
        if resuming:
            store.update_run(run_id, stopped_by=None, reason=None, exit_code=None)
            store.set_state(run_id, RunState.QUEUED)
        else:
            store.create_run(
                run_id,
                name=spec.train.name or run_id,
                spec={**spec.train.to_dict(), "launch_mode": str(spec.mode), "nproc": spec.nproc},
                run_dir=str(run_dir),
                estimate=estimate,
                command=build_launch(spec, run_id, run_dir)[0],  # the port is chosen at the start
                gpus=spec.devices,
            )
        if taken:
            store.queue_add(run_id, spec.devices, resume=resuming)
    if not taken:
        _start(spec, run_id, store)
    return run_id


def _start(spec: RunSpec, run_id: str, store: RunStore) -> None:
    """Start the run's supervisor (its own session) and record its pid: the run is running."""
    if spec.master_port is None:
        from dataclasses import replace

        from nexa_core.device_manager import _free_port

        spec = replace(spec, master_port=_free_port())  # two runs on two GPUs must not share a port
    run_dir = paths.run_dir(run_id)
    argv, extra_env = build_launch(spec, run_id, run_dir)
    supervised = [sys.executable, "-m", "nexa_core.supervise", run_id, "--", *argv]
    store.update_run(run_id, command=argv)
    with (run_dir / LOG_FILE).open("ab") as log:
        log.write(
            f"\n=== {'resume' if spec.resume else 'launch'} {time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(argv)}\n".encode()
        )
        log.flush()
        proc = subprocess.Popen(
            supervised,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=_run_environment(extra_env),
            cwd=PROJECT_ROOT,
            start_new_session=True,  # its own process group: a stop reaches every process of the run
        )
    # Reaped when it ends, so a long-lived panel keeps no zombie; a daemon thread never holds up exit.
    threading.Thread(target=proc.wait, name=f"reap {run_id}", daemon=True).start()
    store.update_run(run_id, pid=proc.pid, pid_create_time=psutil.Process(proc.pid).create_time())
    # unless it already ended (a run that fails at once): checked in the same statement
    store.set_state(run_id, RunState.RUNNING, only_from=(RunState.QUEUED,))


def _run_environment(extra_env: dict[str, str]) -> dict[str, str]:
    """This process's environment with the run's own variables on top. In a run's supervisor
    (which starts the next queued run) the variables its own run set are first put back as they
    were, so GPU pinning or USE_DEEPSPEED never leak from one run into the next."""
    base = dict(os.environ)
    for key, value in json.loads(base.pop(ENV_BEFORE_RUN, None) or "{}").items():
        if value is None:
            base.pop(key, None)
        else:
            base[key] = value
    env = {**base, **extra_env, "NEXA_HOME": str(paths.nexa_home())}
    env[ENV_BEFORE_RUN] = json.dumps({key: base.get(key) for key in env if base.get(key) != env[key]})
    return env


def _dispatch(store: RunStore) -> list[str]:
    """Under the launch lock: start every queued run whose turn has come (nexa_core/run_queue.py)."""
    from nexa_core import run_queue

    return run_queue.start_due(
        store, busy=lambda: busy_devices(store), start=lambda spec, run_id: _start(spec, run_id, store)
    )


def resume(run_id: str, store: RunStore | None = None, queue: bool = False) -> str:
    """Continue a stopped or failed run from its latest complete checkpoint, as the same run
    (queued behind the device's current run with ``queue``)."""
    store = store or RunStore()
    run = store.get_run(run_id)
    if run is None:
        raise ConfigError([f"run_id: no run {run_id!r}"])
    if run.get("kind") == "slurm":
        from nexa_core import slurm_jobs

        return slurm_jobs.resume(run_id, store)
    from nexa_core import presets

    spec = presets.of_run(Path(run["run_dir"]), run_id, resume=True)
    return launch(spec, run_id=run_id, store=store, queue=queue)


def run_processes(run: dict[str, Any]) -> list[psutil.Process]:
    """Every live process of a run: the supervisor, all its descendants, and anything left in the
    run's process group (a launcher's child whose parent died). Once the supervisor itself is gone,
    a process of that group counts only if it carries the run's NEXA_RUN_ID, so a reused pid never
    makes a stranger's process look like a rank."""
    pgid = run.get("pid")
    if not pgid:
        return []
    root = _same_process(pgid, run.get("pid_create_time"))
    procs: dict[int, psutil.Process] = {}
    children: list[psutil.Process] = []
    if root is not None:
        try:
            children = root.children(recursive=True)
        except psutil.Error:  # the supervisor ended since _same_process saw it (seen in the suite)
            root = None
        else:
            procs[root.pid] = root
    for child in children:
        if _carries_other_run(child, run.get("id")):
            continue  # the next queued run, started by this run's supervisor as it ends
        procs[child.pid] = child
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.pid in procs or os.getpgid(proc.pid) != pgid or proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if root is None and proc.environ().get("NEXA_RUN_ID") != run.get("id"):
                continue
            procs[proc.pid] = proc
        except (OSError, psutil.Error):
            continue
    return list(procs.values())


def _carries_other_run(proc: psutil.Process, run_id: str | None) -> bool:
    try:
        other = proc.environ().get("NEXA_RUN_ID")
    except psutil.Error:
        return False
    return bool(other) and other != run_id


def stop(
    run_id: str, grace_s: float = DEFAULT_GRACE_S, by: str = "user", store: RunStore | None = None
) -> str:
    """SIGTERM to every process of the run (the trainer checkpoints and exits at the next step),
    SIGKILL to whatever is left after ``grace_s``. A run waiting in the queue leaves it, stopped
    ("cancelled"). Returns the final state."""
    store = store or RunStore()
    run = store.get_run(run_id)
    if run is None:
        raise ConfigError([f"run_id: no run {run_id!r}"])
    if RunState(run["state"]) in TERMINAL:
        return run["state"]
    if run["state"] == RunState.QUEUED.value and cancel_queued(run_id, by, store):
        return RunState.STOPPED.value
    if run.get("kind") == "slurm":
        from nexa_core import slurm_jobs

        return slurm_jobs.stop(run_id, grace_s, by, store)
    store.update_run(run_id, stopped_by=by)
    procs = run_processes(run)
    for proc in procs:
        _signal(proc, signal.SIGTERM)
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    # a launcher may have started (or restarted) a rank after the first listing: sweep once more
    alive = list({p.pid: p for p in [*alive, *run_processes(run)]}.values())
    for proc in alive:
        _signal(proc, signal.SIGKILL)
    psutil.wait_procs(alive, timeout=5)
    latest = store.get_run(run_id) or run
    if RunState(latest["state"]) not in TERMINAL:
        forced = f" after {grace_s:g} s grace: {len(alive)} process(es) killed" if alive else ""
        store.set_state(run_id, RunState.STOPPED, reason=f"stopped by {by}{forced}", stopped_by=by)
    return (store.get_run(run_id) or latest)["state"]


def cancel_queued(run_id: str, by: str = "user", store: RunStore | None = None) -> bool:
    """Take a run out of the queue before it starts (stopped, "cancelled"); False when it is not
    queued (it may have started meanwhile: then stop it like any run)."""
    from nexa_core import run_queue

    store = store or RunStore()
    with launch_lock():  # never while the dispatcher is starting it
        return run_queue.cancel(store, run_id, by)


def _signal(proc: psutil.Process, sig: int) -> None:
    try:
        proc.send_signal(sig)
    except psutil.Error:
        pass


def wait(run_id: str, timeout_s: float = 600, store: RunStore | None = None) -> dict[str, Any]:
    """Block until the run is in a terminal state and its processes are gone (for CLI and tests)."""
    store = store or RunStore()
    if (store.get_run(run_id) or {}).get("kind") == "slurm":
        from nexa_core import slurm_jobs

        return slurm_jobs.wait(run_id, timeout_s, store)
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
