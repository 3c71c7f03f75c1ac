"""Run summaries for the CLI and the pages: the planner's estimate for a launch, measured peaks,
and one flat dict per run."""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nexa_core import paths
from nexa_core.errors import ConfigError
from nexa_core.launch import RunSpec
from nexa_core.memory import GIB
from nexa_core.runstore import RunState, RunStore

if TYPE_CHECKING:
    from nexa_core.hardware import Hardware


def estimate_for(
    spec: RunSpec, gpus_per_node: int | None = None, nodes: int | None = None
) -> dict[str, Any] | None:
    """The planner's figures for the layout this run will use (None when it cannot be planned).
    ``gpus_per_node`` / ``nodes`` describe a cluster job's nodes instead of this machine's GPUs."""
    from nexa_core import hardware
    from nexa_core.planner import PlanConfig, make_plan

    train = spec.train
    settings = train.deepspeed_settings()
    gpus = gpus_per_node if gpus_per_node is not None else len(spec.gpus) or len(hardware.list_gpus())
    stage, off_opt, off_param = train.layout(has_gpu=bool(gpus))
    try:
        plan = make_plan(
            PlanConfig(
                model=train.model,
                task=train.task,
                num_labels=train.num_labels or 7,
                precision=settings.resolved_precision(has_gpu=bool(gpus)).value,
                batch_size=train.batch_size,
                seq_len=train.seq_len,
                gradient_checkpointing=train.gradient_checkpointing,
                lora=train.lora,
                lora_rank=train.lora_rank,
                gpus=(gpus if gpus_per_node is not None else min(gpus, spec.nproc)) if gpus else 0,
                cpu_ranks=spec.nproc if not gpus else 1,
                nodes=nodes or spec.nodes,  # ZeRO shards over GPUs × nodes: per-GPU figures follow both
                attention=train.attention,
                random_init=train.random_init,
                zero3_init=train.zero3_init and settings.zero3_init,
            )
        )
    except ConfigError:
        return None
    for e in plan.estimates:
        lay = e.layout
        if (
            lay.zero_stage == stage
            and lay.offload_optimizer == (str(off_opt) == "cpu")
            and lay.offload_param == (str(off_param) == "cpu")
        ):
            return {
                "label": e.label,
                "per_gpu_total_bytes": e.per_gpu.total_bytes,
                "host_total_bytes": e.host.total_bytes,
                "per_gpu": e.per_gpu.to_dict(),
                "host": e.host.to_dict(),
            }
    return None


def fit_warnings(estimate: dict[str, Any] | None, hw: Hardware, gpus: list[int]) -> list[str]:
    """What this machine cannot hold of a run's estimate, one sentence each: host RAM beyond what is
    available now, per-GPU memory beyond the free memory of the chosen GPUs (all GPUs when none are
    chosen). Empty when it fits, or when there is no estimate."""
    if not estimate:
        return []
    out = []
    host = estimate.get("host_total_bytes") or 0
    if host > hw.host_available_bytes:
        out.append(
            f"The estimate needs {host / GIB:,.1f} GiB of host RAM; this machine has "
            f"{hw.host_available_bytes / GIB:,.1f} GiB available ({hw.host_total_bytes / GIB:,.1f} GiB in all), "
            "so the run will probably be killed for lack of memory. Lower the batch or sequence length, or "
            "plan another layout on the Plan page."
        )
    per_gpu = estimate.get("per_gpu_total_bytes") or 0
    chosen = [g for g in hw.gpus if g.index in gpus] or list(hw.gpus)
    if per_gpu and chosen and per_gpu > min(g.free_bytes for g in chosen):
        tightest = min(chosen, key=lambda g: g.free_bytes)
        out.append(
            f"The estimate needs {per_gpu / GIB:,.1f} GiB per GPU; GPU {tightest.index} has "
            f"{tightest.free_bytes / GIB:,.1f} GiB free, so the run will probably run out of GPU memory."
        )
    return out


def measured(store: RunStore, run_id: str) -> dict[str, Any]:
    """Peaks: host RSS summed over ranks (each rank's kernel high-water mark when the run recorded it,
    else the highest sample), GPU per device from the samples."""
    from nexa_core.telemetry import PEAK_RSS_METRIC

    kernel = store.metric_maxima(run_id, PEAK_RSS_METRIC)
    rows = store.memory(run_id)
    per_rank: dict[tuple[str, int], int] = {}
    per_gpu: dict[int, int] = {}
    for row in rows:
        key = (row.get("host") or "", row.get("rank") or 0)
        per_rank[key] = max(per_rank.get(key, 0), row.get("rss_bytes") or 0)
        if row.get("gpu_index") is not None:
            used = row.get("nvml_used_bytes") or row.get("gpu_reserved_bytes") or 0
            per_gpu[row["gpu_index"]] = max(per_gpu.get(row["gpu_index"], 0), used)
    host = int(sum(kernel.values())) if kernel else (sum(per_rank.values()) if per_rank else None)
    return {
        "peak_host_rss_bytes": host,
        "peak_host_rss_source": "kernel high-water mark per rank"
        if kernel
        else "sampled"
        if per_rank
        else None,
        "peak_rss_bytes_per_rank": {
            k.removeprefix(PEAK_RSS_METRIC): int(v) for k, v in sorted(kernel.items())
        },
        "peak_gpu_bytes": {str(k): v for k, v in sorted(per_gpu.items())},
    }


def summary(store: RunStore, run: dict[str, Any]) -> dict[str, Any]:
    """What `nexa runs show --json` prints and the Runs page tabulates."""
    spec = run.get("spec") or {}
    final = store.metrics(
        run["id"], ["loss", "eval_f1", "f1", "eval_accuracy", "accuracy", "eval_perplexity"]
    )
    last = {name: rows[-1][1] for name, rows in final.items() if rows}
    duration = None
    if run.get("started_at"):
        import time

        duration = (run.get("ended_at") or time.time()) - run["started_at"]
    total_steps = run.get("total_steps") or spec.get("max_steps")
    return {
        "run_id": run["id"],
        "name": run.get("name"),
        "kind": run.get("kind"),
        "state": run["state"],
        "tags": run.get("tags") or [],
        "note": run.get("note"),
        "exit_reason": run.get("reason"),
        "exit_code": run.get("exit_code"),
        "stopped_by": run.get("stopped_by"),
        "pid": run.get("pid"),
        "step": run.get("last_step") or 0,
        "total_steps": total_steps,
        "model": spec.get("model"),
        "task": spec.get("task"),
        "zero_stage": spec.get("zero_stage"),
        "offload_optimizer": spec.get("offload_optimizer"),
        "offload_param": spec.get("offload_param"),
        "launch_mode": spec.get("launch_mode"),
        "devices": run.get("gpus"),
        "created_at": run.get("created_at"),
        "duration_s": duration,
        "final_loss": _clean(last.get("loss")),
        "f1": _clean(last.get("eval_f1", last.get("f1"))),
        "accuracy": _clean(last.get("eval_accuracy", last.get("accuracy"))),
        "perplexity": _clean(last.get("eval_perplexity")),
        "estimate": run.get("estimate"),
        "measured": measured(store, run["id"]),
        "command": run.get("command"),
        "run_dir": run.get("run_dir"),
        "slurm": slurm_job(store, run["id"]) if run.get("kind") == "slurm" else None,
    }


def slurm_job(store: RunStore, run_id: str) -> dict[str, Any] | None:
    """A Slurm run's job: id, partition, nodes (count and list), the scheduler's state and reason."""
    job = store.job(run_id)
    if job is None:
        return None
    return {"job_id": job.get("job_id"), "partition": job.get("partition"), "nodes": job.get("nodes"),
            "node_list": job.get("node_list"), "state": job.get("sched_state"), "reason": job.get("sched_reason"),
            "request": job.get("request")}  # fmt: skip


def job_label(job: dict[str, Any] | None) -> str | None:
    """The "Slurm 123 · gpu · 2 node(s) (node[01-02])" label of a Slurm job (``slurm_job``); None for
    a local run."""
    if not job:
        return None
    nodes = f"{job.get('nodes')} node(s)" + (f" ({job['node_list']})" if job.get("node_list") else "")
    return f"Slurm {job.get('job_id') or '(submitting)'} · {job.get('partition')} · {nodes}"


def _clean(value: Any) -> float | None:
    return value if isinstance(value, (int, float)) and math.isfinite(value) else None


def run_label(run_id: str, name: str | None, state: str) -> str:
    """How a run is named in pickers: "name · state · id", without repeating the id when it is the name."""
    return " · ".join(dict.fromkeys([name or run_id, state, run_id]))


def remove_run(store: RunStore, run_id: str) -> Path | None:
    """Delete a finished run from the store, and its folder only when that folder is exactly
    ``runs_root()/<run_id>`` once symlinks are resolved: a tampered or stale ``run_dir`` can never
    point the delete at another folder. Returns the folder removed, or None when none was."""
    run = store.get_run(run_id)
    if run is None:
        raise ConfigError([f"run_id: no run {run_id!r}"])
    if run["state"] in (RunState.QUEUED.value, RunState.RUNNING.value):
        raise ConfigError([f"run_id: {run_id} is still {run['state']}; stop it before deleting"])
    store.delete_run(run_id)
    if not run.get("run_dir"):
        return None
    folder = Path(os.path.realpath(run["run_dir"]))
    own = folder.parent == paths.runs_root().resolve() and folder.name == run_id  # never the root itself
    if not own or not folder.is_dir():
        return None
    shutil.rmtree(folder)
    return folder
