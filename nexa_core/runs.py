"""Run summaries for the CLI and the pages: the planner's estimate for a launch, measured peaks,
and one flat dict per run."""

from __future__ import annotations

import math
from typing import Any

from nexa_core.errors import ConfigError
from nexa_core.launch import RunSpec
from nexa_core.runstore import RunStore


def estimate_for(spec: RunSpec) -> dict[str, Any] | None:
    """The planner's figures for the layout this run will use (None when it cannot be planned)."""
    from nexa_core import hardware
    from nexa_core.planner import PlanConfig, make_plan

    train = spec.train
    settings = train.deepspeed_settings()
    gpus = len(spec.gpus) or len(hardware.list_gpus())
    use_ds = settings.deepspeed_enabled(has_gpu=bool(gpus))
    stage, off_opt, off_param = settings.layout() if use_ds else (0, None, None)
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
                gpus=min(gpus, spec.nproc) if gpus else 0,
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


def measured(store: RunStore, run_id: str) -> dict[str, Any]:
    """Peaks from the memory samples: host RSS summed over ranks, GPU per device."""
    rows = store.memory(run_id)
    per_rank: dict[tuple[str, int], int] = {}
    per_gpu: dict[int, int] = {}
    for row in rows:
        key = (row.get("host") or "", row.get("rank") or 0)
        per_rank[key] = max(per_rank.get(key, 0), row.get("rss_bytes") or 0)
        if row.get("gpu_index") is not None:
            used = row.get("nvml_used_bytes") or row.get("gpu_reserved_bytes") or 0
            per_gpu[row["gpu_index"]] = max(per_gpu.get(row["gpu_index"], 0), used)
    return {
        "peak_host_rss_bytes": sum(per_rank.values()) if per_rank else None,
        "peak_gpu_bytes": {str(k): v for k, v in sorted(per_gpu.items())},
    }


def summary(store: RunStore, run: dict[str, Any]) -> dict[str, Any]:
    """What `nexa runs show --json` prints and the Runs page tabulates."""
    spec = run.get("spec") or {}
    final = store.metrics(run["id"], ["loss", "eval_f1", "f1", "eval_accuracy", "accuracy"])
    last = {name: rows[-1][1] for name, rows in final.items() if rows}
    duration = None
    if run.get("started_at"):
        import time

        duration = (run.get("ended_at") or time.time()) - run["started_at"]
    total_steps = spec.get("max_steps")
    return {
        "run_id": run["id"],
        "name": run.get("name"),
        "state": run["state"],
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
        "estimate": run.get("estimate"),
        "measured": measured(store, run["id"]),
        "command": run.get("command"),
        "run_dir": run.get("run_dir"),
    }


def _clean(value: Any) -> float | None:
    return value if isinstance(value, (int, float)) and math.isfinite(value) else None
