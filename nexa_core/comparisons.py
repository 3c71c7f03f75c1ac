"""Stored comparisons (the Compare page and ``nexa bench``): one queued run per technique (the run
queue starts them one after the other on the device, nexa_core/run_queue.py) and a file naming
them, NEXA_HOME/comparisons/<id>.runs.json. Nothing runs in the background besides those runs:
the result, <id>.json, is put together from the run store once every technique run has ended, by
whoever asks first, so a closed tab or a restarted panel loses nothing."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import psutil

from nexa_core import paths, run_queue, runner, runs
from nexa_core.bench import SKIP_STEPS, BenchConfig, environment, measured, skip_reason, technique_spec
from nexa_core.errors import ConfigError
from nexa_core.runstore import TERMINAL, RunState, RunStore

RUNS = ".runs.json"  # the plan: config, environment, one row per technique with its run id
RESULT = ".json"  # the result, once every run has ended
LEGACY_PROGRESS = ".progress.json"  # written by the bench process of NEXA before the run queue
DEDUPE_S = 10.0  # the same comparison asked for again within this many seconds is the same one
# What a DeepSpeed op's JIT build runs (torch's cpp_extension starts ninja, ninja the compilers). It
# prints nothing to the run's log (DeepSpeed loads its ops with verbose=False), so the run's processes
# are what show it.
_BUILD_PROCESSES = {"ninja", "c++", "g++", "gcc", "cc", "cc1plus", "ld", "as", "nvcc", "cicc", "ptxas"}


def comparisons_dir() -> Path:
    return paths.home_folder("comparisons")


def _file(comparison_id: str, suffix: str) -> Path:
    paths.run_dir(comparison_id)  # the same id rules as runs: no path tricks
    return comparisons_dir() / f"{comparison_id}{suffix}"


def _read(comparison_id: str, suffix: str) -> dict[str, Any] | None:
    path = _file(comparison_id, suffix)
    return json.loads(path.read_text()) if path.exists() else None


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(f".tmp{time.monotonic_ns()}")
    tmp.write_text(text)
    tmp.replace(path)  # readers (the Compare page polls) never see half a file


def start_comparison(
    config: BenchConfig, comparison_id: str | None = None, dedupe_s: float = 0.0
) -> tuple[str, bool]:
    """Queue one run per technique that can run here (the others are recorded with why) and
    return (comparison id, whether it is new) at once. With ``dedupe_s``, the same comparison asked
    for again within that many seconds while it has not ended is returned instead of a second one
    (a double click)."""
    from nexa_core.hardware import list_gpus

    wanted = _config_dict(config)
    if dedupe_s:
        for other in list_comparisons():
            plan = _read(other["id"], RUNS) or {}
            recent = time.time() - plan.get("created_at", 0) < dedupe_s
            if recent and plan.get("config") == wanted and other["state"] == "running":
                return other["id"], False
    if comparison_id is not None and (
        _file(comparison_id, RUNS).exists() or _file(comparison_id, RESULT).exists()
    ):
        raise ConfigError(
            [f"save_as (--save-as): a comparison {comparison_id!r} already exists; pick another id"]
        )
    comparison_id = comparison_id or paths.new_run_id(f"compare {config.model.split('/')[-1]}")
    has_gpu = bool(list_gpus())
    rows = []
    for technique in config.techniques:
        reason = skip_reason(technique, has_gpu)
        run_id = None if reason else paths.new_run_id(f"bench {technique}")
        rows.append({"technique": technique, "run_id": run_id, "reason": reason})
    plan = {"config": wanted, "environment": environment(), "created_at": time.time(), "rows": rows}
    path = _file(comparison_id, RUNS)
    _write_atomic(path, json.dumps(plan))  # first, so the runs are never a comparison nobody lists
    store = RunStore()
    for row in rows:
        if row["run_id"] is None:
            continue
        spec = technique_spec(config, row["technique"])
        try:
            runner.launch(spec, run_id=row["run_id"], estimate=runs.estimate_for(spec) or {}, store=store,
                          queue=True)  # fmt: skip
        except ConfigError as exc:
            row.update(run_id=None, reason="could not be queued: " + "; ".join(exc.problems))
            _write_atomic(path, json.dumps(plan))
    return comparison_id, True


def _config_dict(config: BenchConfig) -> dict[str, Any]:
    return config.__dict__ | {"techniques": list(config.techniques)}


def comparison_state(comparison_id: str, refresh: bool = False) -> dict[str, Any]:
    """done (with the result) | failed (with why) | running (with progress: techniques done of
    total, the current one and its phase). ``refresh`` first lets runner.refresh mark crashed runs
    and move the queue (the page's live view, every few seconds)."""
    if refresh:
        runner.refresh()
    result = load_comparison(comparison_id)
    if result is not None:
        return _finished(comparison_id, result)
    plan = _read(comparison_id, RUNS)
    if plan is None:
        return _legacy_state(comparison_id)
    store = RunStore()
    technique_runs = {r["run_id"]: store.get_run(r["run_id"]) for r in plan["rows"] if r["run_id"]}
    if all(run is None or RunState(run["state"]) in TERMINAL for run in technique_runs.values()):
        result = _assemble(plan, store)
        try:
            save_comparison(comparison_id, result)
        except OSError:  # a read-only home: shown, not kept
            pass
        return _finished(comparison_id, result)
    return {"id": comparison_id, "state": "running", "progress": _progress(plan, technique_runs, store)}


def _finished(comparison_id: str, result: dict[str, Any]) -> dict[str, Any]:
    if any(r["status"] == "measured" for r in result["rows"]):
        return {"id": comparison_id, "state": "done", "result": result}
    why = "; ".join(f"{r['technique']}: {r.get('reason')}" for r in result["rows"])
    return {
        "id": comparison_id,
        "state": "failed",
        "reason": f"no technique was measured ({why})",
        "result": result,
    }


def _assemble(plan: dict[str, Any], store: RunStore) -> dict[str, Any]:
    """The result (the format `nexa bench --json` prints) from the ended technique runs."""
    rows = []
    batch = plan["config"]["batch_size"]
    for spec_row in plan["rows"]:
        row: dict[str, Any] = {"technique": spec_row["technique"], "status": "skipped",
                               "reason": spec_row["reason"], "run_id": spec_row["run_id"]}  # fmt: skip
        run = store.get_run(spec_row["run_id"]) if spec_row["run_id"] else None
        if spec_row["run_id"] and run is None:
            row.update(status="failed", reason="its run was deleted before it was measured")
        elif run is not None:
            estimate = run.get("estimate") or {}
            row["estimate"] = {
                k: estimate.get(k) for k in ("label", "per_gpu_total_bytes", "host_total_bytes")
            }
            if run["state"] != RunState.SUCCEEDED.value:
                row.update(status="failed", reason=f"run {run['state']}: {run.get('reason')}")
            else:
                row.update(status="measured", reason=None, measured=measured(store, run["id"], batch))
                est, peak = row["estimate"]["host_total_bytes"], row["measured"]["peak_host_rss_bytes"]
                row["host_estimate_error"] = (est / peak - 1) if est and peak else None
        rows.append(row)
    return {"config": plan["config"], "environment": plan["environment"], "rows": rows}


def _progress(plan: dict[str, Any], technique_runs: dict[str, Any], store: RunStore) -> dict[str, Any]:
    ended = [i for i, run in technique_runs.items() if run is None or RunState(run["state"]) in TERMINAL]
    active = [r for r in plan["rows"] if r["run_id"] and r["run_id"] not in ended]
    current = next((r for r in active if technique_runs[r["run_id"]]["state"] == "running"), active[0])
    run = technique_runs[current["run_id"]]
    return {
        "done": len(ended),
        "total": len(technique_runs),
        "current": current["technique"],
        "phase": run_phase(store, run, plan["config"]["steps"]),
        "run_id": run["id"],
    }


def run_phase(store: RunStore, run: dict[str, Any], steps: int) -> str:
    """What a technique run is doing, in words: waiting in the queue (behind which run), starting,
    compiling DeepSpeed's CPU ops (the first DeepSpeed run on a machine builds them: minutes),
    a warm-up step (not timed) or a timed step."""
    if run["state"] == RunState.QUEUED.value:
        where = run_queue.position(store, run["id"])
        if where is None:
            return "starting"
        blockers = run_queue.waiting_for(store.queue_entries(), runner.busy_devices(store)).get(run["id"])
        return f"waiting in the queue (position {where}" + (
            f", behind run {', '.join(blockers)})" if blockers else ")"
        )
    step = run.get("last_step") or 0
    if step == 0:
        if compiling(run):
            return ("compiling DeepSpeed's CPU ops (the first DeepSpeed run on this machine builds them: "
                    "minutes; later runs load them in seconds)")  # fmt: skip
        deepspeed = (run.get("spec") or {}).get("deepspeed") == "on"
        return "starting: loading the model and data" + (
            " (the first DeepSpeed run on a machine also builds its CPU ops: minutes)" if deepspeed else ""
        )
    if step <= SKIP_STEPS:
        return f"warm-up step {step} of {SKIP_STEPS} (not timed)"
    return f"timed step {step - SKIP_STEPS} of {steps - SKIP_STEPS}"


def compiling(run: dict[str, Any]) -> bool:
    """Whether a process of the run is a compiler or ninja: a DeepSpeed op being JIT-built."""
    for proc in runner.run_processes(run):
        try:
            if proc.name() in _BUILD_PROCESSES:
                return True
        except psutil.Error:
            continue
    return False


def wait_comparison(
    comparison_id: str, timeout_s: float = 24 * 3600, poll_s: float = 1.0, report=None
) -> dict[str, Any]:
    """Until the comparison has ended (``nexa bench``); ``report(state)`` sees each progress change."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        state = comparison_state(comparison_id, refresh=True)
        if state["state"] != "running":
            return state
        if report and state["progress"] != last:
            report(state)
            last = state["progress"]
        time.sleep(poll_s)
    raise TimeoutError(f"comparison {comparison_id} still running after {timeout_s:g} s")


def save_comparison(comparison_id: str, result: dict[str, Any]) -> None:
    _write_atomic(_file(comparison_id, RESULT), json.dumps(result, default=str))


def load_comparison(comparison_id: str) -> dict[str, Any] | None:
    return _read(comparison_id, RESULT)


def _legacy_state(comparison_id: str) -> dict[str, Any]:
    """A comparison started by an older NEXA (its own bench process) that never wrote a result."""
    progress = _read(comparison_id, LEGACY_PROGRESS) or {}
    current = progress.get("current", "")
    reason = current if current.startswith("failed") else (
        "failed: the bench process ended without a result (killed, or out of memory); see its log"
    )  # fmt: skip
    return {"id": comparison_id, "state": "failed", "reason": reason, "progress": progress}


def list_comparisons() -> list[dict[str, Any]]:
    """Newest first: id, state (running, done or failed), model and techniques."""
    ids = set()
    for path in comparisons_dir().glob("*.json"):  # <id>.runs.json, <id>.json, an older <id>.progress.json
        ids.add(
            next(path.name.removesuffix(s) for s in (RUNS, LEGACY_PROGRESS, RESULT) if path.name.endswith(s))
        )
    out = []
    for comparison_id in sorted(ids, reverse=True):  # ids start with their UTC start time
        state = comparison_state(comparison_id)
        config = (state.get("result") or _read(comparison_id, RUNS) or {}).get("config", {})
        out.append({"id": comparison_id, "state": state["state"], "model": config.get("model"),
                    "techniques": config.get("techniques")})  # fmt: skip
    return out


def default_comparison(listed: list[dict[str, Any]]) -> str | None:
    """The one to open: the newest running or finished comparison (a failed one only when nothing
    else exists)."""
    return next((c["id"] for c in listed if c["state"] != "failed"), listed[0]["id"] if listed else None)
