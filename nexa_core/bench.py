"""Measured comparison of memory-saving techniques: each technique is a short run of the same
model and data through the run manager (queued one after the other, each its own process so peaks
never mix), with the planner's estimate beside the measurement. nexa_core/comparisons.py keeps
them as stored comparisons."""

from __future__ import annotations

import platform
import statistics
import time
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
MIN_TIMED_STEPS = 3  # a median of fewer timed steps is noise: ratios built on it are labelled so
DEFAULT_STEPS = 6  # 4 timed steps after the 2 warm-up ones


@dataclass
class BenchConfig:
    model: str
    task: str = "ner"
    techniques: tuple[str, ...] = ("baseline", "zero2", "zero3", "zero3-offload", "lora")
    steps: int = DEFAULT_STEPS
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


def measured(store: RunStore, run_id: str, batch_size: int) -> dict[str, Any]:
    """A finished technique run's peaks and the median of its timed steps (after SKIP_STEPS), with
    how many steps were timed: fewer than MIN_TIMED_STEPS make its step-time ratio noise."""
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
        "timed_steps": len(times),
        "samples_per_s": batch_size / step_time if step_time else None,
    }


def technique_spec(config: BenchConfig, technique: str) -> RunSpec:
    """The run one technique of a comparison is."""
    return RunSpec(_train_config(config, technique))


def measured_on() -> str:
    """The device the technique runs use: "cpu", or the name of the first GPU this process sees
    (a comparison's runs are single-process runs on the default device)."""
    from nexa_core.hardware import list_gpus

    first = runner.foreground_devices()[0]
    if first == "cpu":
        return "cpu"
    return next((g.name for g in list_gpus() if f"gpu{g.index}" == first), first)


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
        "measured_on": measured_on(),
        "versions": versions,
    }
