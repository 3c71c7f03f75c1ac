"""Cost view: which instances of an editable catalogue (deployment/instances.yaml) can run a plan
under each technique, and what the run costs.

Throughput belongs to a device type. A throughput measured on one type (this machine's CPU, or a
GPU as NVML names it) is applied only to instances of that type, scaled by their device count;
every other instance gets 6·Ψ·tokens training FLOPs (Kaplan et al. 2020, section 2.1) at the
catalogue's stated MFU of its GPUs' peak. A CPU instance without a CPU measurement gets no time at
all: there is no FLOPs figure for it. Every row says which basis it used."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from nexa_core.errors import ConfigError
from nexa_core.paths import deployment_file
from nexa_core.planner import PlanConfig, make_plan

DEFAULT_INSTANCES = deployment_file("instances.yaml")
_FIELDS = ("name", "gpus", "gpu_memory_gb", "host_memory_gb", "peak_tflops", "price_per_hour")
_DATE = re.compile(r"^\d{4}(-\d{2}(-\d{2})?)?$")  # 2026, 2026-04 or 2026-05-07: as the source dates it
CPU = "cpu"


@dataclass(frozen=True)
class Instance:
    name: str
    gpus: int
    gpu_model: str | None  # the GPU's name as nvidia-smi / NVML report it (matched to measurements)
    gpu_memory_gb: float
    host_memory_gb: float
    peak_tflops: float
    price_per_hour: float
    source: str = ""  # where the price comes from: title and public URL
    price_date: str = ""  # when the source stated it


@dataclass(frozen=True)
class Measured:
    """A throughput measured on one device of one type (``device``: "cpu" or the GPU's NVML name)."""

    samples_per_s: float
    device: str
    detail: str = ""  # e.g. "baseline, 4 timed steps, 2 CPU cores"


def same_device(catalogue_name: str, measured_name: str) -> bool:
    """Whether a measurement on ``measured_name`` applies to an instance whose device is
    ``catalogue_name``: every word of the catalogue's name (less "NVIDIA") is a word of the measured
    one, so "NVIDIA A100 80GB" matches "NVIDIA A100-SXM4-80GB" and "L4" never matches "L40S"."""

    def words(name: str) -> set[str]:
        return set(re.sub(r"[^a-z0-9]+", " ", name.lower()).split()) - {"nvidia"}

    wanted = words(catalogue_name)
    return bool(wanted) and wanted <= words(measured_name)


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
        source = raw.get("source") or {}
        if not (
            isinstance(source, dict) and source.get("title") and str(source.get("url", "")).startswith("http")
        ):
            problems.append(
                f"instances[{i}] ({raw['name']}): source needs the price's title and public url (http...)"
            )
            continue
        if not _DATE.match(str(source.get("date", ""))):
            problems.append(f"instances[{i}] ({raw['name']}): source.date must be YYYY, YYYY-MM or YYYY-MM-DD, "
                            f"got {source.get('date')!r}")  # fmt: skip
            continue
        out.append(Instance(raw["name"], int(raw["gpus"]), raw.get("gpu_model"), float(raw["gpu_memory_gb"]),
                            float(raw["host_memory_gb"]), float(raw["peak_tflops"]), float(raw["price_per_hour"]),
                            f"{source['title']} ({source['url']})", str(source["date"])))  # fmt: skip
    mfu = (data or {}).get("assumed_mfu", 0.35)
    if not isinstance(mfu, (int, float)) or not 0 < mfu <= 1:
        problems.append("assumed_mfu: a number in (0, 1]")
    if not out and not problems:
        problems.append("instances: the catalogue is empty")
    if problems:
        raise ConfigError(problems)
    return out, float(mfu)


def device_choices(path: Path | str = DEFAULT_INSTANCES) -> list[str]:
    """What a throughput can be measured on: "cpu" and every GPU type of the catalogue."""
    instances, _ = load_instances(path)
    return [CPU, *dict.fromkeys(i.gpu_model for i in instances if i.gpus and i.gpu_model)]


def cost_view(
    config: PlanConfig,
    train_tokens: int,
    measured: Measured | None = None,
    path: Path | str = DEFAULT_INSTANCES,
) -> list[dict[str, Any]]:
    """Per instance: the techniques that fit, the recommended one, hours and cost of ``train_tokens``
    tokens of training and the basis of the hours (``basis``: measured, flops or none, and
    ``throughput_source`` in words), cheapest first (instances that fit nothing last)."""
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
        hours, basis, source = _hours(inst, config, plan.size.params, train_tokens, measured, mfu)
        rows.append(
            {
                "instance": inst.name,
                "gpus": inst.gpus,
                "fits": fitting,
                "recommended": plan.recommendation.label,
                "hours": hours,
                "cost": hours * inst.price_per_hour * config.nodes if hours is not None and fitting else None,
                "basis": basis,
                "throughput_source": source,
                "price_per_hour": inst.price_per_hour,
                "price_source": f"{inst.source}, {inst.price_date}",
            }
        )
    return sorted(rows, key=lambda r: (r["cost"] is None, r["cost"] or 0))


def _hours(
    inst: Instance, config: PlanConfig, params: int, tokens: int, measured: Measured | None, mfu: float
) -> tuple[float | None, str, str]:
    """(hours, basis, the basis in words) for one instance."""
    devices = max(inst.gpus, 1) * config.nodes
    if measured and measured.samples_per_s > 0 and _applies(measured.device, inst):
        hours = tokens / (measured.samples_per_s * devices * config.seq_len) / 3600
        scale = f" × {devices} devices (linear scaling assumed)" if devices > 1 else ""
        detail = f"; {measured.detail}" if measured.detail else ""
        return (
            hours,
            "measured",
            f"measured on {measured.device}: {measured.samples_per_s:.3g} samples/s{scale}{detail}",
        )
    if inst.gpus and inst.peak_tflops:
        flops = 6 * params * tokens  # forward + backward ≈ 6 FLOPs per parameter per token
        hours = flops / (devices * inst.peak_tflops * 1e12 * mfu) / 3600
        other = f" (the measurement on {measured.device} is another device type)" if measured else ""
        return (
            hours,
            "flops",
            f"FLOPs model: 6·Ψ·tokens at {mfu:.0%} MFU of {inst.peak_tflops:g} TFLOPS per GPU{other}",
        )
    return None, "none", "no estimate: a CPU instance needs a throughput measured on a CPU"


def _applies(device: str, inst: Instance) -> bool:
    if device == CPU or not inst.gpus:
        return device == CPU and not inst.gpus
    return bool(inst.gpu_model) and same_device(inst.gpu_model, device)


def measured_from_comparison(result: dict[str, Any] | None) -> Measured | None:
    """The baseline's measured throughput of a finished comparison, on the device its runs used
    (older results without ``measured_on`` ran on the first GPU listed, else the CPU)."""
    if not result:
        return None
    base = next((r for r in result.get("rows", []) if r["technique"] == "baseline" and r["status"] == "measured"),
                None)  # fmt: skip
    samples = (base or {}).get("measured", {}).get("samples_per_s")
    if not samples:
        return None
    env = result.get("environment") or {}
    device = env.get("measured_on") or ((env.get("gpus") or [CPU])[0])
    timed = base["measured"].get("timed_steps")
    parts = ["baseline"] + ([f"{timed} timed steps"] if timed else [])
    if device == CPU and env.get("cpu_cores"):
        parts.append(f"{env['cpu_cores']} CPU cores")
    return Measured(float(samples), device, ", ".join(parts))


def given_throughput(samples_per_s: float | None, device: str, measured: Measured | None) -> Measured | None:
    """The throughput the cost view uses: what the user left in the fields (none when empty); the
    comparison's description stays only while its figure and device are kept."""
    if not samples_per_s:
        return None
    kept = measured is not None and (samples_per_s, device) == (measured.samples_per_s, measured.device)
    return Measured(samples_per_s, device, measured.detail if kept else "")


def display_rows(rows: list[dict[str, Any]]) -> list[dict[str, str]]:
    """The cost view as text for a table (the panel shows it as a plain table a screen reader and
    a browser test can read)."""
    return [
        {
            "instance": r["instance"],
            "GPUs": str(r["gpus"]),
            "techniques that fit": ", ".join(r["fits"]) or "none",
            "recommended": r["recommended"] or "nothing fits",
            "hours": "—"
            if r["hours"] is None
            else f"{r['hours']:,.3g} h"
            if r["hours"] < 1000
            else f"{r['hours']:,.0f} h",
            "cost": "—" if r["cost"] is None else f"${r['cost']:,.2f}",
            "throughput": r["throughput_source"],
            "price": f"${r['price_per_hour']:,.2f}/h: {r['price_source']}",
        }
        for r in rows
    ]
