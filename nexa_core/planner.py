"""The memory planner: a validated PlanConfig in, estimates for every ZeRO layout and a
fit-based recommendation out. Used by `nexa plan` and the Plan page alike."""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass, field
from typing import Any

from nexa_core import hardware
from nexa_core.enums import Precision, Task
from nexa_core.errors import int_problems, raise_if
from nexa_core.memory import (
    DEFAULT_CALIBRATION,
    GIB,
    Breakdown,
    Calibration,
    Layout,
    layouts,
    per_rank_estimate,
)
from nexa_core.models import DEFAULT_MODEL, ModelSize, hypothetical_size, size_model, validate_model_name

SAFETY_MARGIN = 0.10  # keep 10 % of the memory free: estimates are not exact and allocators fragment
MAX_GPUS_PER_NODE = 64
MAX_NODES = 1024


@dataclass
class PlanConfig:
    """What the user asks to plan. Field names match the `nexa plan` flags."""

    model: str | None = DEFAULT_MODEL
    params: int | None = None  # a hypothetical model of this many parameters (no architecture)
    task: Task | str = Task.NER
    num_labels: int = 7
    precision: Precision | str | None = None  # None: bf16 with GPUs, fp32 on CPU
    batch_size: int = 8
    seq_len: int = 128
    gradient_checkpointing: bool = False
    lora: bool = False
    lora_rank: int = 8
    gpus: int | None = None  # per node; None: as detected; 0: CPU-only training
    nodes: int = 1
    gpu_memory_gb: float | None = None  # None: the detected GPUs' free memory
    host_memory_gb: float | None = None  # None: the detected available host RAM

    def __post_init__(self) -> None:
        problems: list[str] = []
        if self.params is not None:
            if not isinstance(self.params, int) or isinstance(self.params, bool) or self.params <= 0:
                problems.append(f"params (--params): must be a positive whole number, got {self.params!r}")
            self.model = None
            if self.lora:
                problems.append("lora (--lora): needs a real model to wrap; not available with --params")
        elif self.model is None:
            problems.append("model: give a model (catalogue entry, local folder or hub id) or --params")
        else:
            self.model = str(self.model).strip()
            problems += validate_model_name(self.model)
        for name, enum in (("task", Task), ("precision", Precision)):
            value = getattr(self, name)
            if value is None and name == "precision":
                continue
            try:
                setattr(self, name, enum.parse(value, f"{name} (--{name})"))
            except ValueError as exc:
                problems.append(str(exc))
        for name, low, high in (
            ("num_labels", 1, 10_000),
            ("batch_size", 1, 65_536),
            ("seq_len", 1, 1_048_576),
            ("lora_rank", 1, 4096),
            ("nodes", 1, MAX_NODES),
        ):
            problems += int_problems(name, getattr(self, name), low, high)
        if self.gpus is not None:
            problems += int_problems("gpus", self.gpus, 0, MAX_GPUS_PER_NODE)
        for name in ("gpu_memory_gb", "host_memory_gb"):
            value = getattr(self, name)
            if value is not None and (
                not isinstance(value, (int, float))
                or isinstance(value, bool)
                or not math.isfinite(value)  # float() takes "nan" and "inf"; nan is not <= 0 either
                or value <= 0
            ):
                problems.append(
                    f"{name} (--{name.replace('_', '-')}): must be a positive, finite number of GiB, got {value!r}"
                )
        raise_if(problems)


@dataclass(frozen=True)
class Estimate:
    layout: Layout
    per_gpu: Breakdown
    host: Breakdown
    fits: bool
    fit_notes: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return layout_label(self.layout)

    def to_dict(self) -> dict[str, Any]:
        return {
            "zero_stage": self.layout.zero_stage,
            "offload_optimizer": "cpu" if self.layout.offload_optimizer else "none",
            "offload_param": "cpu" if self.layout.offload_param else "none",
            "label": self.label,
            "per_gpu": self.per_gpu.to_dict(),
            "host": self.host.to_dict(),
            "fits": self.fits,
            "fit_notes": list(self.fit_notes),
        }


@dataclass(frozen=True)
class Recommendation:
    layout: Layout | None
    reason: str

    @property
    def label(self) -> str | None:
        return layout_label(self.layout) if self.layout else None

    def to_dict(self) -> dict[str, Any]:
        lay = self.layout
        return {
            "zero_stage": lay.zero_stage if lay else None,
            "offload_optimizer": ("cpu" if lay.offload_optimizer else "none") if lay else None,
            "offload_param": ("cpu" if lay.offload_param else "none") if lay else None,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class Plan:
    config: PlanConfig
    size: ModelSize
    precision: Precision
    gpus_per_node: int
    gpu_budget_bytes: int  # per GPU, before the safety margin
    host_budget_bytes: int  # per node
    estimates: tuple[Estimate, ...]
    recommendation: Recommendation
    notes: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        arch = self.size.architecture
        return {
            "model": {
                "name": self.config.model,
                "params": self.size.params,
                "trainable_params": self.size.trainable_params,
                "largest_layer_params": self.size.largest_layer_params,
                "architecture": None if arch is None else arch.__dict__,
            },
            "inputs": {
                "task": str(self.config.task),
                "num_labels": self.config.num_labels,
                "precision": str(self.precision),
                "batch_size": self.config.batch_size,
                "seq_len": self.config.seq_len,
                "gradient_checkpointing": self.config.gradient_checkpointing,
                "lora": self.config.lora,
                "lora_rank": self.config.lora_rank if self.config.lora else None,
                "gpus_per_node": self.gpus_per_node,
                "nodes": self.config.nodes,
                "gpu_budget_bytes": self.gpu_budget_bytes,
                "host_budget_bytes": self.host_budget_bytes,
                "safety_margin": SAFETY_MARGIN,
            },
            "recommendation": self.recommendation.to_dict(),
            "estimates": [e.to_dict() for e in self.estimates],
            "notes": list(self.notes),
            "command": plan_command(self.config),
        }


def layout_label(layout: Layout) -> str:
    parts = [f"ZeRO-{layout.zero_stage}"]
    if layout.offload_optimizer:
        parts.append("optimizer→CPU")
    if layout.offload_param:
        parts.append("params→CPU")
    return " + ".join(parts)


def speed_rank(layout: Layout) -> tuple[int, int]:
    """Fastest first: offloading costs more than sharding (PCIe traffic and CPU Adam every step),
    and each stage adds communication (ZeRO paper section 7: stage 3 moves 1.5× stage 2's volume)."""
    offload = int(layout.offload_optimizer) + int(layout.offload_param)
    return (offload, layout.zero_stage)


def make_plan(
    config: PlanConfig, hw: hardware.Hardware | None = None, calibration: Calibration | None = None
) -> Plan:
    """Estimate every layout and recommend the fastest that fits. Raises ConfigError on bad input."""
    calibration = calibration or DEFAULT_CALIBRATION
    needs_hw = config.gpus is None or config.host_memory_gb is None or config.gpu_memory_gb is None
    hw = hw or (hardware.detect() if needs_hw else hardware.Hardware((), 0, 0))
    gpus = hw.gpu_count if config.gpus is None else config.gpus
    precision = config.precision or (Precision.BF16 if gpus else Precision.FP32)
    notes: list[str] = []

    if config.params is not None:
        size = hypothetical_size(config.params)
        notes.append(
            "hypothetical model (--params): model states only; activations omitted (no architecture)"
        )
    else:
        assert config.model is not None  # validated in PlanConfig
        size = size_model(
            config.model, config.task, config.num_labels, config.lora_rank if config.lora else None
        )

    if config.gpu_memory_gb is not None:
        gpu_budget = int(config.gpu_memory_gb * GIB)
    else:
        gpu_budget = hw.min_gpu_free_bytes
    host_budget = (
        int(config.host_memory_gb * GIB) if config.host_memory_gb is not None else hw.host_available_bytes
    )
    if gpus and not gpu_budget:
        notes.append("no GPU detected to measure free memory: pass --gpu-memory-gb to check the fit")
    if not gpus:
        notes.append("CPU-only training plan: every term sits in host RAM; per-GPU totals are 0")

    estimates = []
    for layout in layouts(gpus, config.nodes):
        gpu_b, host_b = per_rank_estimate(
            size.params,
            size.trainable_params,
            size.largest_layer_params,
            size.architecture,
            precision,
            layout,
            config.batch_size,
            config.seq_len,
            config.gradient_checkpointing,
            config.task,
            config.num_labels,
            calibration,
        )
        fit_notes = []
        if gpus and gpu_b.total_bytes > gpu_budget * (1 - SAFETY_MARGIN):
            fit_notes.append(f"needs {_gib(gpu_b.total_bytes)} per GPU of {_gib(gpu_budget)}")
        if host_b.total_bytes > host_budget * (1 - SAFETY_MARGIN):
            fit_notes.append(f"needs {_gib(host_b.total_bytes)} host RAM of {_gib(host_budget)}")
        estimates.append(Estimate(layout, gpu_b, host_b, not fit_notes, tuple(fit_notes)))
    return Plan(
        config,
        size,
        precision,
        gpus,
        gpu_budget,
        host_budget,
        tuple(estimates),
        recommend(estimates, gpus),
        tuple(notes),
    )


def recommend(estimates: list[Estimate], gpus: int) -> Recommendation:
    ordered = sorted(estimates, key=lambda e: speed_rank(e.layout))
    fitting = [e for e in ordered if e.fits]
    where = "host RAM" if not gpus else "GPU memory"
    if not fitting:
        best = min(ordered, key=lambda e: e.per_gpu.total_bytes if gpus else e.host.total_bytes)
        return Recommendation(
            None,
            f"Nothing fits with a {SAFETY_MARGIN:.0%} safety margin. The smallest option, {best.label}, "
            f"{'; '.join(best.fit_notes)}. Reduce the batch size or sequence length, turn on gradient "
            "checkpointing or LoRA, or add GPUs/nodes.",
        )
    choice = fitting[0]
    skipped = [e for e in ordered if speed_rank(e.layout) < speed_rank(choice.layout) and not e.fits]
    total = choice.host.total_bytes if not gpus else choice.per_gpu.total_bytes
    reason = (
        f"{choice.label} is the fastest option that fits: it needs {_gib(total)} of {where}"
        + (f" per GPU and {_gib(choice.host.total_bytes)} of host RAM" if gpus else "")
        + f", within the budget less a {SAFETY_MARGIN:.0%} safety margin. Less sharding and no offload "
        "mean less communication and no CPU optimizer step, so faster steps."
    )
    if choice.layout.ranks == 1 and choice.layout.zero_stage == 0:
        reason += (
            " With a single rank, ZeRO stages 1-3 have nothing to partition across, so stage 0 is enough."
        )
    if skipped:
        reason += (
            " Faster options that do not fit: "
            + "; ".join(f"{e.label} {', '.join(e.fit_notes)}" for e in skipped)
            + "."
        )
    return Recommendation(choice.layout, reason)


def plan_command(config: PlanConfig) -> str:
    """The `nexa plan` command line equivalent to ``config``, for the user to copy."""
    argv = ["nexa", "plan"]
    argv += ["--params", str(config.params)] if config.params is not None else [str(config.model)]
    argv += ["--task", str(config.task)]
    if config.task in (Task.NER, Task.CLASSIFICATION):
        argv += ["--num-labels", str(config.num_labels)]
    if config.precision is not None:
        argv += ["--precision", str(config.precision)]
    argv += ["--batch-size", str(config.batch_size), "--seq-len", str(config.seq_len)]
    if config.gradient_checkpointing:
        argv.append("--gradient-checkpointing")
    if config.lora:
        argv += ["--lora", "--lora-rank", str(config.lora_rank)]
    if config.gpus is not None:
        argv += ["--gpus", str(config.gpus)]
    if config.nodes != 1:
        argv += ["--nodes", str(config.nodes)]
    if config.gpu_memory_gb is not None:
        argv += ["--gpu-memory-gb", f"{config.gpu_memory_gb:g}"]
    if config.host_memory_gb is not None:
        argv += ["--host-memory-gb", f"{config.host_memory_gb:g}"]
    return shlex.join(argv)


def _gib(n: int) -> str:
    return f"{n / GIB:.2f} GiB"
