"""Target machines to plan for when they are not this one: the editable presets in
deployment/hardware.yaml (the Plan page's "planning for another machine" mode, `nexa plan --hardware`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import yaml

from nexa_core.errors import ConfigError
from nexa_core.paths import deployment_file

DEFAULT_PRESETS = deployment_file("hardware.yaml")


@dataclass(frozen=True)
class HardwarePreset:
    name: str
    description: str
    gpus: int  # per node
    gpu_memory_gb: float  # per GPU, GiB
    host_memory_gb: float  # per node, GiB


@lru_cache(maxsize=4)
def hardware_presets(path: Path = DEFAULT_PRESETS) -> dict[str, HardwarePreset]:
    """Presets by name; every problem in the file reported at once."""
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError([f"hardware presets: cannot read {path}: {exc}"]) from None
    problems: list[str] = []
    out: dict[str, HardwarePreset] = {}
    for i, raw in enumerate(data.get("presets") or []):
        name = raw.get("name") if isinstance(raw, dict) else None
        if not isinstance(name, str) or not name:
            problems.append(f"presets[{i}]: needs a name")
            continue
        numbers = {k: raw.get(k) for k in ("gpus", "gpu_memory_gb", "host_memory_gb")}
        bad = [
            k
            for k, v in numbers.items()
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v <= 0
        ]
        if bad or int(numbers["gpus"]) != numbers["gpus"]:
            problems.append(f"presets[{i}] ({name}): gpus (whole), gpu_memory_gb, host_memory_gb must be > 0")
            continue
        out[name] = HardwarePreset(
            name, str(raw.get("description", "")), int(numbers["gpus"]),
            float(numbers["gpu_memory_gb"]), float(numbers["host_memory_gb"]),
        )  # fmt: skip
    if problems:
        raise ConfigError(problems)
    return out


def preset(name: str) -> HardwarePreset:
    presets = hardware_presets()
    if name not in presets:
        raise ConfigError(
            [f"hardware (--hardware): {name!r} is not a preset; choose one of {', '.join(presets)}"]
        )
    return presets[name]
