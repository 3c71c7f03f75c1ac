"""The memory planner: a validated PlanConfig in, estimates for every ZeRO layout and a
fit-based recommendation out. Used by `nexa plan` and the Plan page alike."""

from __future__ import annotations

import math
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from nexa_core import hardware, learned
from nexa_core.enums import Attention, Precision, Task, Weights
from nexa_core.errors import ConfigError, int_problems, raise_if
from nexa_core.learned import Outcome
from nexa_core.memory import (
    DEFAULT_CALIBRATION,
    DEFAULT_MAX_LIVE_PARAMETERS,
    GIB,
    Breakdown,
    Calibration,
    Layout,
    Workload,
    layouts,
    load_path_text,
    per_rank_estimate,
)
from nexa_core.models import (
    DEFAULT_MODEL,
    ModelSize,
    hypothetical_size,
    seq_len_problems,
    size_model,
    validate_model_name,
)

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
    host_memory_gb: float | None = None  # None: this machine's available RAM, or not checked for another
    hardware: str | None = None  # a preset of deployment/hardware.yaml: fills gpus and both memories
    other_machine: bool = False  # planning for a machine other than this one (also implied by the flags)
    cpu_ranks: int = 1  # processes per node of a CPU-only plan (gpus 0), e.g. torchrun --nproc 2
    attention: Attention | str = Attention.AUTO
    random_init: bool = False  # the run starts from random weights: no checkpoint is read
    zero3_init: bool = True  # ZeRO-3 creates the model sharded (DeepSpeed zero.Init)
    # (rows, padded tokens) of the batches one rank will train on (data_shapes.DataProfile.shapes):
    # each layout is then also planned for this data ("expected"); empty: only at the seq_len cap.
    batch_shapes: tuple[tuple[int, int], ...] = ()

    def __post_init__(self) -> None:
        problems: list[str] = []
        if self.hardware is not None:
            from nexa_core.targets import preset

            try:
                target = preset(str(self.hardware))
            except ConfigError as exc:
                problems += exc.problems
            else:
                self.gpus = target.gpus if self.gpus is None else self.gpus
                self.gpu_memory_gb = (
                    target.gpu_memory_gb if self.gpu_memory_gb is None else self.gpu_memory_gb
                )
                self.host_memory_gb = (
                    target.host_memory_gb if self.host_memory_gb is None else self.host_memory_gb
                )
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
        for name, enum in (("task", Task), ("precision", Precision), ("attention", Attention)):
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
            ("cpu_ranks", 1, 256),
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
                or not 0 < value <= 1 << 30
            ):
                problems.append(
                    f"{name} (--{name.replace('_', '-')}): must be a positive, finite number of GiB, got {value!r}"
                )
        problems += self._shape_problems()
        raise_if(problems)

    def _shape_problems(self) -> list[str]:
        if int_problems("batch_size", self.batch_size, 1, 65_536) or int_problems(
            "seq_len", self.seq_len, 1, 1 << 20
        ):
            return []  # reported above; the shapes cannot be checked against them
        try:
            self.batch_shapes = tuple(tuple(s) for s in self.batch_shapes)
        except TypeError:
            return [f"batch_shapes: a list of (rows, tokens) pairs, got {self.batch_shapes!r}"]
        for shape in self.batch_shapes:
            ok = len(shape) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in shape)
            if not ok or not (1 <= shape[0] <= self.batch_size and 1 <= shape[1] <= self.seq_len):
                return [
                    f"batch_shapes: each must be (rows, tokens) with 1 <= rows <= batch_size ({self.batch_size}) "
                    f"and 1 <= tokens <= seq_len ({self.seq_len}), got {shape!r}"
                ]
        return []


@dataclass(frozen=True)
class Expected:
    """A layout planned for the batches the data will really give (PlanConfig.batch_shapes): the
    estimate at the batch that needs the most."""

    per_gpu: Breakdown
    host: Breakdown
    rows: int
    tokens: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "per_gpu": self.per_gpu.to_dict(),
            "host": self.host.to_dict(),
            "batch_rows": self.rows,
            "batch_tokens": self.tokens,
        }


@dataclass(frozen=True)
class Estimate:
    layout: Layout
    per_gpu: Breakdown  # at the cap: batch_size × seq_len
    host: Breakdown
    fits: bool
    fit_notes: tuple[str, ...] = ()
    load_path: str = ""  # how the weights reach the ranks under this layout (memory.load_path_text)
    expected: Expected | None = None  # for this data, when PlanConfig.batch_shapes is given
    # Corrections from the user's own runs on this machine, by term (learned.HOST, learned.GPU): each
    # learned.Correction.apply()'d to this estimate; shown beside it, never in its place.
    learned: dict[str, dict[str, Any]] = field(default_factory=dict)

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
            "load_path": self.load_path,
            "expected": self.expected.to_dict() if self.expected else None,
            "learned": self.learned,
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
    host_budget_bytes: int | None  # per node; None: not checked (a plan for another machine)
    estimates: tuple[Estimate, ...]
    recommendation: Recommendation
    notes: tuple[str, ...] = field(default=())
    # The past runs the corrections rest on: {"machine": Machine.id, "runs": how many}; None without history
    learned_from: dict[str, Any] | None = None

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
                "cpu_ranks": self.config.cpu_ranks if not self.gpus_per_node else None,
                "hardware": self.config.hardware,
                "attention": str(self.config.attention),
                "random_init": self.config.random_init,
                "zero3_init": self.config.zero3_init,
                "gpu_budget_bytes": self.gpu_budget_bytes,
                "host_budget_bytes": self.host_budget_bytes,
                "host_checked": self.host_budget_bytes is not None,
                "safety_margin": SAFETY_MARGIN,
            },
            "recommendation": self.recommendation.to_dict(),
            "estimates": [e.to_dict() for e in self.estimates],
            "notes": list(self.notes),
            "learned_from": self.learned_from,
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
    config: PlanConfig,
    hw: hardware.Hardware | None = None,
    calibration: Calibration | None = None,
    history: Sequence[Outcome] | None = None,
) -> Plan:
    """Estimate every layout and recommend the fastest that fits. Raises ConfigError on bad input.

    ``history``: outcomes of the user's finished runs on this machine (runs.learned_history); each
    estimate then carries the correction they give (Estimate.learned), unless the plan is for
    another machine."""
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
        raise_if(seq_len_problems(config.model, config.seq_len))
        size = size_model(
            config.model, config.task, config.num_labels, config.lora_rank if config.lora else None
        )

    if config.gpu_memory_gb is not None:
        gpu_budget = int(config.gpu_memory_gb * GIB)
    else:
        gpu_budget = hw.min_gpu_free_bytes
    other_machine = is_other_machine(config, hw)
    host_budget: int | None
    if config.host_memory_gb is not None:
        host_budget = int(config.host_memory_gb * GIB)
    elif other_machine:
        host_budget = None
        notes.append(
            "host RAM not checked: the plan is for another machine (--gpus/--gpu-memory-gb/--nodes/"
            "--hardware), so this machine's RAM says nothing about it; pass --host-memory-gb to check it"
        )
    else:
        host_budget = hw.host_available_bytes
    if gpus and not gpu_budget:
        notes.append("no GPU detected to measure free memory: pass --gpu-memory-gb to check the fit")
    if not gpus:
        notes.append("CPU-only training plan: every term sits in host RAM; per-GPU totals are 0")

    workload = plan_workload(config, size, precision)
    estimates = []
    for layout in layouts(gpus, config.nodes, config.cpu_ranks if not gpus else 1):
        gpu_b, host_b = per_rank_estimate(workload, layout, calibration)
        fit_notes = []
        if gpus and gpu_b.total_bytes > gpu_budget * (1 - SAFETY_MARGIN):
            fit_notes.append(
                f"needs {_gib(gpu_b.total_bytes)} per GPU of {_gib(gpu_budget)} ({_largest(gpu_b)})"
            )
        if host_budget is not None and host_b.total_bytes > host_budget * (1 - SAFETY_MARGIN):
            fit_notes.append(
                f"needs {_gib(host_b.total_bytes)} host RAM of {_gib(host_budget)} ({_largest(host_b)})"
            )
        expected = expected_estimate(workload, layout, config.batch_shapes, calibration)
        learned_terms = learned_for(history or (), layout, gpu_b, host_b, config) if not other_machine else {}
        estimates.append(
            Estimate(layout, gpu_b, host_b, not fit_notes, tuple(fit_notes), load_path_text(workload, layout),
                     expected, learned_terms)
        )  # fmt: skip
    if history and other_machine:
        notes.append("no correction from your past runs: they ran on this machine, the plan is for another")
    return Plan(
        config,
        size,
        precision,
        gpus,
        gpu_budget,
        host_budget,
        tuple(estimates),
        recommend(estimates, gpus, config, host_budget is not None),
        tuple(notes),
        {"machine": history[0].machine, "runs": len({o.run_id for o in history})} if history else None,
    )


def plan_workload(config: PlanConfig, size: ModelSize, precision: Precision) -> Workload:
    """What one rank computes under ``config``: the memory model's input besides the layout."""
    return Workload(
        params=size.params,
        trainable=size.trainable_params,
        largest_layer=size.largest_layer_params,
        arch=size.architecture,
        precision=precision,
        batch_size=config.batch_size,
        seq_len=config.seq_len,
        gradient_checkpointing=config.gradient_checkpointing,
        task=Task.parse(config.task, "task"),
        num_labels=config.num_labels,
        attention=Attention.parse(config.attention, "attention"),
        weights=Weights.RANDOM if config.random_init else Weights.PRETRAINED,
        zero3_init=config.zero3_init,
        zero3_max_live_parameters=zero3_max_live_parameters(),
    )


def expected_estimate(
    workload: Workload, layout: Layout, shapes: tuple[tuple[int, int], ...], calibration: Calibration
) -> Expected | None:
    """The layout's estimate at each batch shape the data gives; the largest one (per GPU on GPUs,
    host on CPU) is the peak to expect. Every rank is planned at that batch (ranks' longest batches
    differ little). None without shapes."""
    best: Expected | None = None
    for rows, tokens in shapes:
        gpu_b, host_b = per_rank_estimate(
            replace(workload, batch_size=rows, seq_len=tokens), layout, calibration
        )
        size = gpu_b.total_bytes if not layout.cpu_only else host_b.total_bytes
        if best is None or size > (
            best.per_gpu.total_bytes if not layout.cpu_only else best.host.total_bytes
        ):
            best = Expected(gpu_b, host_b, rows, tokens)
    return best


def learned_for(
    history: Sequence[Outcome], layout: Layout, gpu_b: Breakdown, host_b: Breakdown, config: PlanConfig
) -> dict[str, dict[str, Any]]:
    """The corrections past runs give this layout's estimate, by term (learned.correction_for)."""
    label = layout_label(layout)
    precision = str(config.precision or (Precision.BF16 if layout.gpus_per_node else Precision.FP32))
    technique = learned.technique_key(
        label, config.lora, config.gradient_checkpointing, precision, layout.ranks
    )
    out = {}
    for term, bytes_ in ((learned.HOST, host_b.total_bytes // layout.ranks_per_node),
                         (learned.GPU, gpu_b.total_bytes)):  # fmt: skip
        found = learned.correction_for(history, term, label, technique) if bytes_ else None
        if found is not None:
            out[term] = found.apply(bytes_)
    return out


def is_other_machine(config: PlanConfig, hw: hardware.Hardware) -> bool:
    """True when the plan describes a machine other than this one: a hardware preset, several nodes,
    another GPU count, or more memory per GPU than this machine's GPUs have."""
    if config.other_machine or config.hardware is not None or config.nodes > 1:
        return True
    if config.gpus is not None and config.gpus != hw.gpu_count:
        return True
    return config.gpu_memory_gb is not None and config.gpu_memory_gb * GIB > hw.min_gpu_total_bytes


def zero3_max_live_parameters() -> int:
    """stage3_max_live_parameters of the DeepSpeed config runs use (DEEPSPEED_CONFIG_FILE, else
    deployment/deepspeed_config.json); DeepSpeed's default when it is missing or unreadable."""
    from nexa_core.device_manager import DeepSpeedSettings

    try:
        zero = DeepSpeedSettings.from_env().template().get("zero_optimization", {})
        return int(float(zero.get("stage3_max_live_parameters", DEFAULT_MAX_LIVE_PARAMETERS)))
    except (ConfigError, OSError, ValueError, TypeError, AttributeError):
        return DEFAULT_MAX_LIVE_PARAMETERS


_TERMS = {
    "params_bytes": "parameters",
    "gradients_bytes": "gradients",
    "optimizer_bytes": "optimizer states",
    "activations_bytes": "activations",
    "overhead_bytes": "overhead",
}


def _largest(b: Breakdown) -> str:
    name, value = max(((n, getattr(b, n)) for n in _TERMS), key=lambda kv: kv[1])
    return f"largest term: {_TERMS[name]} {_gib(value)}"


def _advice(config: PlanConfig, gpus: int) -> str:
    """What could make a run fit, leaving out what the plan already does."""
    steps = []
    if config.batch_size > 1:
        steps.append("reduce the micro-batch (keep the global batch with gradient accumulation)")
    if config.seq_len > 128:
        steps.append("shorten the sequence length")
    if not config.gradient_checkpointing:
        steps.append("turn on gradient checkpointing")
    if not config.lora and config.params is None:
        steps.append("turn on LoRA")
    if (config.precision or (Precision.BF16 if gpus else Precision.FP32)) is Precision.FP32 and gpus:
        steps.append("train in bf16")
    steps.append("add GPUs or nodes" if gpus else "add host RAM or nodes")
    return "; ".join(steps[:-1]) + (", or " if len(steps) > 1 else "") + steps[-1]


def recommend(
    estimates: list[Estimate], gpus: int, config: PlanConfig | None = None, host_checked: bool = True
) -> Recommendation:
    ordered = sorted(estimates, key=lambda e: speed_rank(e.layout))
    fitting = [e for e in ordered if e.fits]
    where = "host RAM" if not gpus else "GPU memory"
    if not fitting:
        best = min(ordered, key=lambda e: e.per_gpu.total_bytes if gpus else e.host.total_bytes)
        advice = _advice(config, gpus) if config is not None else "reduce the batch or add GPUs/nodes"
        return Recommendation(
            None,
            f"Nothing fits with a {SAFETY_MARGIN:.0%} safety margin. The smallest option, {best.label}, "
            f"{'; '.join(best.fit_notes)}. To make it fit: {advice}.",
        )
    choice = fitting[0]
    skipped = [e for e in ordered if speed_rank(e.layout) < speed_rank(choice.layout) and not e.fits]
    total = choice.host.total_bytes if not gpus else choice.per_gpu.total_bytes
    host_text = (
        f" and {_gib(choice.host.total_bytes)} of host RAM per node"
        if gpus and host_checked
        else " (host RAM not checked)"
        if gpus
        else ""
    )
    reason = (
        f"{choice.label} is the fastest option that fits: it needs {_gib(total)} of {where}"
        + (" per GPU" if gpus else "")
        + host_text
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
    if config.hardware is not None:
        argv += ["--hardware", config.hardware]
    if config.gpus is not None:
        argv += ["--gpus", str(config.gpus)]
    if config.gpus == 0 and config.cpu_ranks != 1:
        argv += ["--cpu-ranks", str(config.cpu_ranks)]
    if config.attention is not Attention.AUTO:
        argv += ["--attention", str(config.attention)]
    if config.random_init:
        argv.append("--random-init")
    if not config.zero3_init:
        argv.append("--no-zero3-init")
    if config.nodes != 1:
        argv += ["--nodes", str(config.nodes)]
    if config.gpu_memory_gb is not None:
        argv += ["--gpu-memory-gb", f"{config.gpu_memory_gb:g}"]
    if config.host_memory_gb is not None:
        argv += ["--host-memory-gb", f"{config.host_memory_gb:g}"]
    return shlex.join(argv)


def _gib(n: int) -> str:
    return f"{n / GIB:.2f} GiB"
