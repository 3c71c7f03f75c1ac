"""Cost view: which instances of an editable catalogue (deployment/instances.yaml) can run a plan
under each technique, and what the run costs. Prices are the user's; throughput is measured when
given, otherwise 6·Ψ·tokens training FLOPs (Kaplan et al. 2020, section 2.1) at an assumed MFU."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from nexa_core.errors import ConfigError
from nexa_core.paths import deployment_file
from nexa_core.planner import PlanConfig, make_plan

DEFAULT_INSTANCES = deployment_file("instances.yaml")
_FIELDS = ("name", "gpus", "gpu_memory_gb", "host_memory_gb", "peak_tflops", "price_per_hour")


@dataclass(frozen=True)
class Instance:
    name: str
    gpus: int
    gpu_model: str | None
    gpu_memory_gb: float
    host_memory_gb: float
    peak_tflops: float
    price_per_hour: float


def load_instances(path: Path | str = DEFAULT_INSTANCES) -> tuple[list[Instance], float]:
    """(instances, assumed MFU); every problem in the file reported at once."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError([f"instances: cannot read {path}: {exc}"]) from None
    problems, out = [], []
    for i, raw in enumerate((data or {}).get("instances") or []):
        missing = [f for f in _FIELDS if f not in raw]
        if missing:
            problems.append(f"instances[{i}]: missing {', '.join(missing)}")
            continue
        if any(not isinstance(raw[f], (int, float)) or raw[f] < 0 for f in _FIELDS[1:]):
            problems.append(f"instances[{i}] ({raw['name']}): numbers must be non-negative")
            continue
        out.append(Instance(raw["name"], int(raw["gpus"]), raw.get("gpu_model"), float(raw["gpu_memory_gb"]),
                            float(raw["host_memory_gb"]), float(raw["peak_tflops"]), float(raw["price_per_hour"])))  # fmt: skip
    mfu = (data or {}).get("assumed_mfu", 0.35)
    if not isinstance(mfu, (int, float)) or not 0 < mfu <= 1:
        problems.append("assumed_mfu: a number in (0, 1]")
    if not out and not problems:
        problems.append("instances: the catalogue is empty")
    if problems:
        raise ConfigError(problems)
    return out, float(mfu)


def cost_view(
    config: PlanConfig,
    train_tokens: int,
    measured_samples_per_s: float | None = None,
    path: Path | str = DEFAULT_INSTANCES,
) -> list[dict[str, Any]]:
    """Per instance: the techniques that fit, the recommended one, hours and cost of ``train_tokens``
    tokens of training, cheapest first (instances that fit nothing last)."""
    from nexa_core.hardware import Hardware

    instances, mfu = load_instances(path)
    rows = []
    for inst in instances:
        plan = make_plan(
            replace(
                config,
                gpus=inst.gpus,
                gpu_memory_gb=inst.gpu_memory_gb or None,
                host_memory_gb=inst.host_memory_gb,
            ),
            Hardware((), 0, 0),
        )
        fitting = [e.label for e in plan.estimates if e.fits]
        hours = None
        if measured_samples_per_s:
            hours = train_tokens / (measured_samples_per_s * config.seq_len) / 3600
        elif inst.gpus and inst.peak_tflops:
            flops = (
                6 * plan.size.params * train_tokens
            )  # forward + backward ≈ 6 FLOPs per parameter per token
            hours = flops / (inst.gpus * config.nodes * inst.peak_tflops * 1e12 * mfu) / 3600
        rows.append(
            {
                "instance": inst.name,
                "gpus": inst.gpus,
                "fits": fitting,
                "recommended": plan.recommendation.label,
                "hours": hours,
                "cost": hours * inst.price_per_hour * config.nodes if hours is not None and fitting else None,
                "throughput_source": "measured"
                if measured_samples_per_s
                else f"estimated (6·Ψ·tokens at MFU {mfu:.0%})",
            }
        )
    return sorted(rows, key=lambda r: (r["cost"] is None, r["cost"] or 0))
