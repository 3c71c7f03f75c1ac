"""The Slurm backend's thin runner: submit a run with sbatch, follow it through squeue / scontrol /
sacct, stop it with scancel, resubmit it to resume. The pure parts (script, argv, parsers, state
mapping) are in ``slurm.py``; the run store and the run folder stay the truth, as for local runs.

Every Slurm command runs as an argv list (never a shell) with a timeout, on the machine of the panel
or CLI (a login node: the Slurm client commands and ``SLURM_CONF`` as the cluster sets them up).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from nexa_core import paths, relay
from nexa_core.errors import ConfigError, raise_if
from nexa_core.exits import LOG_FILE, log_tail
from nexa_core.launch import RunSpec
from nexa_core.runstore import TERMINAL, RunState, RunStore
from nexa_core.slurm import (
    SBATCH_FILE,
    JobInfo,
    SlurmRequest,
    build_sbatch,
    memory_request_mb,
    outcome,
    parse_sacct,
    parse_sbatch,
    parse_scontrol,
    parse_squeue,
    ranks_per_node,
    request_problems,
    sacct_argv,
    sbatch_argv,
    scancel_argv,
    scontrol_argv,
    squeue_argv,
)

KIND = "slurm"  # runs.kind of a run submitted to Slurm
ACTIVE = (RunState.QUEUED, RunState.RUNNING)
POLL_S = 5.0  # at most one scheduler query per job this often from page renders (squeue is not free)
RELAY_TAIL_S = 120.0  # keep folding relay files this long after a job ended (NFS attribute caching)
SUBMIT_GRACE_S = 60.0  # a row without a job id older than this is a submission that died half-way
DEFAULT_GRACE_S = 15.0
_TIMEOUT_S = 30


def _run(argv: list[str]) -> subprocess.CompletedProcess[str] | None:
    """A Slurm client command; None when it is missing or hangs (the caller decides what that means)."""
    try:
        return subprocess.run(
            argv, capture_output=True, text=True, timeout=_TIMEOUT_S, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired):
        return None


def prepare(
    spec: RunSpec, request: SlurmRequest, estimate: dict[str, Any] | None
) -> tuple[SlurmRequest, int | None]:
    """The request with its memory filled from the planner's estimate when none was given, and that
    figure (None when the user gave one or there is no estimate). Raises ConfigError on a bad mix."""
    raise_if(request_problems(spec, request))
    if request.mem_mb is not None:
        return request, None
    mem = memory_request_mb(estimate, request, ranks_per_node(spec, request))
    return SlurmRequest.from_dict({**request.to_dict(), "mem_mb": mem}), mem


def preview(spec: RunSpec, request: SlurmRequest, estimate: dict[str, Any] | None) -> str:
    """The batch script the Launch page shows before submitting (run id ``preview``)."""
    request, _ = prepare(spec, request, estimate)
    return build_sbatch(spec, request, "preview", paths.run_dir("preview"), paths.nexa_home(), sys.executable)


def submit(
    spec: RunSpec,
    request: SlurmRequest,
    estimate: dict[str, Any] | None = None,
    run_id: str | None = None,
    store: RunStore | None = None,
) -> str:
    """Write the run's files and batch script into its folder, ``sbatch --parsable`` it, and record
    the run (kind ``slurm``) with its job. Returns the run id at once; the job may wait in the queue."""
    from nexa_core.scaling import write_run_files

    store = store or RunStore()
    request, _ = prepare(spec, request, estimate)
    if run_id and store.get_run(run_id) is not None:
        raise ConfigError(
            [f"run_id (--run-id): a run {run_id!r} already exists; pick another id or resume it"]
        )
    run_id = run_id or paths.new_run_id(spec.train.name)
    run_dir = paths.run_dir(run_id)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_run_files(spec, run_dir)
    script = run_dir / SBATCH_FILE
    script.write_text(build_sbatch(spec, request, run_id, run_dir, paths.nexa_home(), sys.executable))
    ranks = ranks_per_node(spec, request) * request.nodes
    store.create_run(
        run_id, name=spec.train.name or run_id, kind=KIND, run_dir=str(run_dir), estimate=estimate,
        spec={**spec.train.to_dict(), "launch_mode": "slurm", "nproc": ranks}, command=sbatch_argv(script),
    )  # fmt: skip
    store.record_job(run_id, scheduler=KIND, partition=request.partition, nodes=request.nodes,
                     request=request.to_dict())  # fmt: skip
    try:
        job_id = _sbatch(run_id, script, store)
    except ConfigError:
        store.delete_run(run_id)  # nothing was queued: leave no row and no folder behind
        shutil.rmtree(run_dir, ignore_errors=True)
        raise
    store.add_event(run_id, f"submitted to Slurm as job {job_id} (partition {request.partition}, "
                            f"{request.nodes} node(s), {ranks} rank(s), --mem {request.mem_mb}M, --time {request.time})")  # fmt: skip
    return run_id


def _sbatch(run_id: str, script: Path, store: RunStore) -> str:
    argv = sbatch_argv(script)
    with (script.parent / LOG_FILE).open("a") as log:
        log.write(f"\n=== sbatch {time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(argv)}\n")
    done = _run(argv)
    if done is None:
        raise ConfigError(["backend (--backend slurm): sbatch is not installed here or did not answer in "
                           f"{_TIMEOUT_S} s; run NEXA on a machine with the Slurm client commands (a login node)"])  # fmt: skip
    job_id = parse_sbatch(done.stdout)
    if done.returncode != 0 or job_id is None:
        error = (done.stderr or done.stdout).strip().splitlines()
        raise ConfigError(
            [f"slurm: sbatch refused the job: {error[-1] if error else f'exit {done.returncode}'}"]
        )
    store.record_job(run_id, job_id=job_id, submitted_at=time.time(), sched_state="PENDING",
                     sched_reason=None, node_list=None, polled_at=None)  # fmt: skip
    return job_id


def resume(run_id: str, store: RunStore | None = None) -> str:
    """Resubmit an ended run as a new job of the same run: it continues from its latest complete
    checkpoint (``nexa train --resume``), with the same request."""
    from nexa_core import presets

    store = store or RunStore()
    run, job = store.get_run(run_id), store.job(run_id)
    if run is None or job is None or not job.get("request"):
        raise ConfigError([f"run_id: no Slurm run {run_id!r} to resume"])
    if RunState(run["state"]) in ACTIVE:
        raise ConfigError([f"run_id: {run_id} is still {run['state']}; stop it before resuming"])
    run_dir = Path(run["run_dir"])
    spec = presets.of_run(run_dir, run_id, resume=True)
    request = SlurmRequest.from_dict(job["request"])
    script = run_dir / SBATCH_FILE
    script.write_text(build_sbatch(spec, request, run_id, run_dir, paths.nexa_home(), sys.executable))
    store.update_run(run_id, command=sbatch_argv(script), stopped_by=None, reason=None, exit_code=None)
    store.set_state(run_id, RunState.QUEUED)
    try:
        job_id = _sbatch(run_id, script, store)
    except ConfigError as exc:
        store.set_state(run_id, RunState.FAILED, reason="; ".join(exc.problems))
        raise
    store.add_event(run_id, f"resubmitted to Slurm as job {job_id} (was {job['job_id']}): resumes from "
                            "the latest complete checkpoint")  # fmt: skip
    return run_id


# --------------------------------------------------------------------------------- following
def query(job_ids: list[str]) -> dict[str, JobInfo]:
    """What the scheduler says about each job: squeue for everything the controller holds; for a job
    that ended or left it, the fullest record that reports it ended: the accounting database (sacct:
    exit codes and every step's state), the job completion log (sacct --completion, for clusters
    without slurmdbd), the controller's own record (scontrol: kept MinJobAge seconds, no
    DerivedExitCode without accounting). A job no source knows is left out."""
    out: dict[str, JobInfo] = {}
    if not job_ids:
        return out
    # squeue refuses the whole list when one id is unknown to the controller: then ask one by one
    for batch in [job_ids] if len(job_ids) == 1 else [job_ids, *([j] for j in job_ids)]:
        done = _run(squeue_argv(batch))
        if done is not None and done.returncode == 0:
            out.update({j: i for j, i in parse_squeue(done.stdout).items() if j in job_ids})
            if batch is job_ids:
                break
    for job in job_ids:
        if job in out and out[job].active:
            continue
        for argv, parse in (
            (sacct_argv(job), parse_sacct),
            (sacct_argv(job, completion=True), lambda text: parse_sacct(text, "sacct --completion")),
            (scontrol_argv(job), parse_scontrol),
        ):
            done = _run(argv)
            found = parse(done.stdout).get(job) if done is not None and done.returncode == 0 else None
            if found is not None and (not found.active or job not in out):
                out[job] = found
                if not found.active:  # accounting can lag the controller: an active record may be stale
                    break
    return out


def refresh(store: RunStore, force: bool = False) -> list[str]:
    """Fold the relay files of running and just-ended Slurm runs into the store, and move their runs
    to the state the scheduler reports (at most every POLL_S per job unless ``force``). Called by
    runner.refresh under the launch lock, so two panels never fold the same lines. Returns the ids
    whose state changed."""
    now, changed = time.time(), []
    slurm_runs = [r for r in store.list_runs(limit=1000) if r.get("kind") == KIND]
    active = [r for r in slurm_runs if RunState(r["state"]) in ACTIVE]
    for run in slurm_runs:
        if RunState(run["state"]) in ACTIVE or now - (run.get("ended_at") or 0) < RELAY_TAIL_S:
            relay.ingest(store, run["id"], Path(run["run_dir"]) / relay.RELAY_DIR)
    jobs = {r["id"]: store.job(r["id"]) or {} for r in active}
    due = [
        r
        for r in active
        if jobs[r["id"]].get("job_id") and (force or now - (jobs[r["id"]].get("polled_at") or 0) >= POLL_S)
    ]
    for run in active:
        if not jobs[run["id"]].get("job_id") and now - (run.get("created_at") or 0) > SUBMIT_GRACE_S:
            if store.set_state(run["id"], RunState.FAILED, reason="slurm: the submission never got a job id "
                               "(the submitting process died)", only_from=ACTIVE):  # fmt: skip
                changed.append(run["id"])
    infos = query([jobs[r["id"]]["job_id"] for r in due])
    for run in due:
        job = jobs[run["id"]]
        info = infos.get(job["job_id"])
        if info is None:
            store.record_job(run["id"], polled_at=now)
            continue
        if _apply(store, run, job, info):
            changed.append(run["id"])
    return changed


def _apply(store: RunStore, run: dict[str, Any], job: dict[str, Any], info: JobInfo) -> bool:
    """Record what the scheduler said and move the run to the matching state; True if it moved."""
    store.record_job(run["id"], sched_state=info.state, sched_reason=info.reason, polled_at=time.time(),
                     **({"node_list": info.node_list} if info.node_list else {}))  # fmt: skip
    request = SlurmRequest.from_dict(job.get("request") or {"partition": job.get("partition") or "default"})
    state, reason, exit_code = outcome(
        info, request, stop_requested=bool(run.get("stopped_by")), log=log_tail(run.get("run_dir"))
    )
    if state is RunState.QUEUED:
        if run.get("reason") != reason:
            store.update_run(run["id"], reason=reason)
        return False
    if state is RunState.RUNNING:
        return store.set_state(run["id"], RunState.RUNNING, only_from=(RunState.QUEUED,))
    relay.ingest(store, run["id"], Path(run["run_dir"]) / relay.RELAY_DIR)  # the ranks' last words first
    moved = store.set_state(run["id"], state, reason=reason, exit_code=exit_code, only_from=ACTIVE)
    if moved:
        store.add_event(run["id"], f"Slurm job {info.job_id} ended {info.state} (from {info.source})")
    return moved


def _poll(store: RunStore) -> None:
    refresh(store, force=True)  # this run is a Slurm job: the scheduler's view is all it needs


def stop(
    run_id: str, grace_s: float = DEFAULT_GRACE_S, by: str = "user", store: RunStore | None = None
) -> str:
    """Stop a Slurm run as runner.stop stops a local one: SIGTERM to every rank (``scancel
    --signal=TERM``: the trainer checkpoints at the next step and exits), then after ``grace_s``
    SIGKILL and ``scancel`` of the job. A job still in the queue is simply cancelled. Returns the
    final state."""
    store = store or RunStore()
    run, job = store.get_run(run_id), store.job(run_id) or {}
    if run is None:
        raise ConfigError([f"run_id: no run {run_id!r}"])
    if RunState(run["state"]) in TERMINAL:
        return run["state"]
    store.update_run(run_id, stopped_by=by)
    job_id = job.get("job_id")
    forced = ""
    if job_id:
        info = query([job_id]).get(job_id)
        started = info is not None and info.state not in {
            "PENDING",
            "CONFIGURING",
            "REQUEUED",
            "REQUEUE_HOLD",
        }
        _run(scancel_argv(job_id, "TERM") if started else scancel_argv(job_id))
        if not _ended(job_id, grace_s):
            _run(scancel_argv(job_id, "KILL"))
            _run(scancel_argv(job_id))
            forced = f" after {grace_s:g} s grace: scancel --signal=KILL"
            _ended(job_id, 30.0)
    _poll(store)
    latest = store.get_run(run_id) or run
    if RunState(latest["state"]) in ACTIVE:  # the scheduler could not be reached, or still has it
        store.set_state(run_id, RunState.STOPPED, reason=f"stopped by {by}; Slurm job {job_id} may still be "
                        "ending (check squeue)", stopped_by=by, only_from=ACTIVE)  # fmt: skip
    elif latest["state"] == RunState.STOPPED.value:
        store.update_run(run_id, reason=f"stopped by {by} (scancel of Slurm job {job_id}){forced}")
    return (store.get_run(run_id) or latest)["state"]


def _ended(job_id: str, timeout_s: float) -> bool:
    """Wait until the scheduler reports the job ended (or forgets it)."""
    deadline = time.monotonic() + timeout_s
    while True:
        info = query([job_id]).get(job_id)
        if info is None or not info.active:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(1.0)


def wait(run_id: str, timeout_s: float = 600, store: RunStore | None = None) -> dict[str, Any]:
    """Block until the Slurm run has ended (for the CLI and tests); polls the scheduler every 2 s."""
    store = store or RunStore()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        _poll(store)
        run = store.get_run(run_id) or {}
        if RunState(run.get("state", "failed")) in TERMINAL:
            return run
        time.sleep(2.0)
    raise TimeoutError(f"run {run_id} still active after {timeout_s} s")
