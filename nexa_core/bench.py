"""Measured comparison of memory-saving techniques: each technique is a short run of the same
model and data through the run manager (one at a time, each its own process so peaks never mix),
with the planner's estimate beside the measurement."""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nexa_core import runner, runs
from nexa_core.errors import ConfigError
from nexa_core.launch import RunSpec
from nexa_core.runstore import RunStore
from nexa_core.train_config import TrainConfig

# technique -> TrainConfig overrides. "baseline" is plain Accelerate without DeepSpeed.
TECHNIQUES: dict[str, dict[str, Any]] = {
    "baseline": {"deepspeed": "off"},
    "zero1": {"deepspeed": "on", "zero_stage": 1, "offload_optimizer": "none", "offload_param": "none"},
    "zero2": {"deepspeed": "on", "zero_stage": 2, "offload_optimizer": "none", "offload_param": "none"},
    "zero2-offload": {
        "deepspeed": "on",
        "zero_stage": 2,
        "offload_optimizer": "cpu",
        "offload_param": "none",
    },
    "zero3": {"deepspeed": "on", "zero_stage": 3, "offload_optimizer": "none", "offload_param": "none"},
    "zero3-offload": {"deepspeed": "on", "zero_stage": 3, "offload_optimizer": "cpu", "offload_param": "cpu"},
    "lora": {"deepspeed": "off", "lora": True},
    "checkpointing": {"deepspeed": "off", "gradient_checkpointing": True},
    "fp16": {"deepspeed": "off", "precision": "fp16"},
    "bf16": {"deepspeed": "off", "precision": "bf16"},
}
SKIP_STEPS = 2  # step 1 allocates optimizer state, step 2 still warms up: timing starts at step 3


@dataclass
class BenchConfig:
    model: str
    task: str = "ner"
    techniques: tuple[str, ...] = ("baseline", "zero2", "zero3", "zero3-offload", "lora")
    steps: int = 6
    batch_size: int = 8
    seq_len: int = 128

    def __post_init__(self) -> None:
        problems = [
            f"techniques (--techniques): {t!r} is not allowed; choose from {', '.join(TECHNIQUES)}"
            for t in self.techniques
            if t not in TECHNIQUES
        ]
        if not self.techniques:
            problems.append(f"techniques (--techniques): choose at least one of {', '.join(TECHNIQUES)}")
        from nexa_core.models import validate_model_name
        from nexa_core.paths import text_problems

        # The model is a positional argument of `nexa bench`: one starting with '-' would be an option.
        problems += text_problems("model", self.model, 1024) or validate_model_name(self.model)
        if not isinstance(self.steps, int) or not SKIP_STEPS + 1 <= self.steps <= 10_000:
            problems.append(
                f"steps (--steps): must be a whole number from {SKIP_STEPS + 1} to 10000 (the first {SKIP_STEPS} are not timed)"
            )
        if problems:
            raise ConfigError(problems)


def skip_reason(technique: str, has_gpu: bool) -> str | None:
    """Why a technique cannot run on this hardware, or None."""
    if technique == "fp16" and not has_gpu:
        return "fp16 mixed precision needs a GPU (CPU autocast supports bf16 only)"
    return None


def _train_config(config: BenchConfig, technique: str) -> TrainConfig:
    return TrainConfig(
        model=config.model,
        task=config.task,
        max_steps=config.steps,
        batch_size=config.batch_size,
        seq_len=config.seq_len,
        pad_to_seq_len=True,  # every step at the longest sequence: the worst case is what we compare
        save=False,
        eval=False,
        random_init=not _has_weights(config.model),
        name=f"bench {technique}",
        **TECHNIQUES[technique],
    )


def _has_weights(model: str) -> bool:
    from nexa_core.models import resolve_model

    return resolve_model(model).weights_dir is not None


def run_bench(config: BenchConfig, progress: Callable[[int, int, str], None] | None = None) -> dict[str, Any]:
    """One row per technique: measured (peaks, median step time, samples/s) or skipped with a reason."""
    from nexa_core.hardware import list_gpus

    has_gpu = bool(list_gpus())
    store = RunStore()
    rows = []
    for i, technique in enumerate(config.techniques):
        if progress:
            progress(i, len(config.techniques), technique)
        reason = skip_reason(technique, has_gpu)
        row: dict[str, Any] = {"technique": technique, "status": "skipped", "reason": reason, "run_id": None}
        if reason is None:
            spec = RunSpec(_train_config(config, technique))
            estimate = runs.estimate_for(spec) or {}
            run_id = runner.launch(spec, estimate=estimate, store=store)
            run = runner.wait(run_id, timeout_s=3600, store=store)
            row["run_id"] = run_id
            row["estimate"] = {
                "label": estimate.get("label"),
                "per_gpu_total_bytes": estimate.get("per_gpu_total_bytes"),
                "host_total_bytes": estimate.get("host_total_bytes"),
            }
            if run["state"] != "succeeded":
                row["reason"] = f"run {run['state']}: {run.get('reason')}"
            else:
                row.update(
                    status="measured", reason=None, measured=_measured(store, run_id, config.batch_size)
                )
                est, peak = row["estimate"]["host_total_bytes"], row["measured"]["peak_host_rss_bytes"]
                row["host_estimate_error"] = (est / peak - 1) if est and peak else None
        rows.append(row)
    if progress:
        progress(len(config.techniques), len(config.techniques), "done")
    return {
        "config": config.__dict__ | {"techniques": list(config.techniques)},
        "environment": environment(),
        "rows": rows,
    }


def _measured(store: RunStore, run_id: str, batch_size: int) -> dict[str, Any]:
    peaks = runs.measured(store, run_id)
    times = [
        v
        for step, v, _ in store.metrics(run_id, ["step_time_s"]).get("step_time_s", [])
        if step > SKIP_STEPS and v
    ]
    step_time = statistics.median(times) if times else None
    return {
        "peak_gpu_bytes": max(peaks["peak_gpu_bytes"].values(), default=None),
        "peak_gpu_bytes_per_device": peaks["peak_gpu_bytes"],
        "peak_host_rss_bytes": peaks["peak_host_rss_bytes"],
        "step_time_s": step_time,
        "samples_per_s": batch_size / step_time if step_time else None,
    }


def environment() -> dict[str, Any]:
    import psutil

    from nexa_core.hardware import list_gpus

    versions = {}
    for name in ("torch", "deepspeed", "accelerate", "transformers", "peft"):
        try:
            versions[name] = __import__(name).__version__
        except Exception:  # a missing optional package is reported, not fatal
            versions[name] = None
    return {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": platform.platform(),
        "cpu_cores": psutil.cpu_count(),
        "host_ram_bytes": psutil.virtual_memory().total,
        "gpus": [g.name for g in list_gpus()],
        "versions": versions,
    }


# ------------------------------------------------------------------ stored comparisons
# A comparison runs for minutes, so the Compare page starts it in the background (its own process
# session, like a training run) and polls files under NEXA_HOME/comparisons/: <id>.progress.json
# while it runs, <id>.json once done. Past comparisons stay there and can be reopened.


def comparisons_dir():
    from nexa_core import paths

    return paths.home_folder("comparisons")


def _comparison_file(comparison_id: str, suffix: str = ".json"):
    from nexa_core import paths

    paths.run_dir(comparison_id)  # the same id rules as runs: no path tricks
    return comparisons_dir() / f"{comparison_id}{suffix}"


def bench_argv(config: BenchConfig, comparison_id: str) -> list[str]:
    import sys

    return [
        sys.executable, "-m", "nexa_core", "bench", config.model, "--task", config.task,
        "--techniques", ",".join(config.techniques), "--steps", str(config.steps),
        "--batch-size", str(config.batch_size), "--seq-len", str(config.seq_len), "--save-as", comparison_id,
    ]  # fmt: skip


def start_comparison(config: BenchConfig) -> str:
    """Start ``nexa bench`` in the background; returns the comparison id at once."""
    import os
    import subprocess

    from nexa_core import paths

    comparison_id = paths.new_run_id(f"compare {config.model.split('/')[-1]}")
    log = _comparison_file(comparison_id, ".log").open("ab")
    child = subprocess.Popen(
        bench_argv(config, comparison_id),
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "NEXA_HOME": str(paths.nexa_home())},
    )  # fmt: skip
    save_progress(comparison_id, 0, len(config.techniques), "starting", pid=child.pid)
    return comparison_id


def save_progress(comparison_id: str, done: int, total: int, current: str, pid: int | None = None) -> None:
    """Records the bench process's pid and start time (this process unless ``pid`` is given), so
    that readers tell a bench that died (OOM kill, reboot) from one still running."""
    import json
    import os

    import psutil

    me = psutil.Process(pid or os.getpid())
    _write_atomic(
        _comparison_file(comparison_id, ".progress.json"),
        json.dumps(
            {
                "done": done,
                "total": total,
                "current": current,
                "t": time.time(),
                "pid": me.pid,
                "pid_started": me.create_time(),
            }
        ),  # fmt: skip
    )


def _write_atomic(path, text: str) -> None:
    tmp = path.with_suffix(f".tmp{time.monotonic_ns()}")
    tmp.write_text(text)
    tmp.replace(path)  # readers (the Compare page polls) never see half a file


def save_comparison(comparison_id: str, result: dict[str, Any]) -> None:
    import json

    _write_atomic(_comparison_file(comparison_id), json.dumps(result, default=str))


def load_comparison(comparison_id: str) -> dict[str, Any] | None:
    import json

    path = _comparison_file(comparison_id)
    return json.loads(path.read_text()) if path.exists() else None


def comparison_progress(comparison_id: str) -> dict[str, Any] | None:
    import json

    path = _comparison_file(comparison_id, ".progress.json")
    return json.loads(path.read_text()) if path.exists() else None


def _alive(progress: dict[str, Any]) -> bool:
    import psutil

    try:
        proc = psutil.Process(progress["pid"])
        return abs(proc.create_time() - progress["pid_started"]) < 1.0  # a reused pid is not our bench
    except (KeyError, psutil.Error):
        return False


def comparison_state(comparison_id: str) -> dict[str, Any]:
    """done | failed (with why) | running (with progress): one comparison, cheap enough to poll."""
    result = load_comparison(comparison_id)
    progress = comparison_progress(comparison_id) or {}
    if result:
        return {"id": comparison_id, "state": "done", "result": result, "progress": progress}
    current = progress.get("current", "")
    if current.startswith("failed"):
        return {"id": comparison_id, "state": "failed", "reason": current, "progress": progress}
    if not _alive(progress):
        reason = "failed: the bench process ended without a result (killed, or out of memory); see its log"
        return {"id": comparison_id, "state": "failed", "reason": reason, "progress": progress}
    return {"id": comparison_id, "state": "running", "progress": progress}


def list_comparisons() -> list[dict[str, Any]]:
    """Newest first: id, state (running, done or failed), model and techniques when done."""
    out = []
    for progress in sorted(comparisons_dir().glob("*.progress.json"), reverse=True):
        state = comparison_state(progress.name.removesuffix(".progress.json"))
        config = (state.get("result") or {}).get("config", {})
        out.append(
            {"id": state["id"], "state": state["state"], "model": config.get("model"),
             "techniques": config.get("techniques")}
        )  # fmt: skip
    return out
