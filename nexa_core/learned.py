"""Estimates that learn: a correction of the formula estimate from the user's own finished runs on
the same machine, shown beside the formula estimate, never instead of it.

Every run records its estimate (runs.estimate_for: the expected peak for its data, the layout and this
machine's fingerprint) when it starts, and each rank records its kernel peak RSS when it ends; GPU
peaks come from the memory samples. So the run store holds, for every finished run, measured and
estimated per term: the host peak per rank and, with GPUs, the peak per device. ``outcomes`` turns one
run into ``Outcome`` pairs (runs.learned_history reads every run of a machine).

Method (``correction``): the median of measured / estimated over the matching runs, with the band
from the 10th to the 90th percentile of those ratios. Why: errors of a memory model are
multiplicative (a formula that misses a constant share is off by the same percentage at 2 and at
20 GiB), so ratios pool runs of different sizes; the median ignores one odd run (a run stopped at
its first step, another job's pages counted); and percentiles make no assumption about the shape of
a distribution known from a handful of runs. Fewer than ``MIN_RUNS`` matching runs give no
correction. The scope narrows when it can: the same technique (layout plus LoRA / checkpointing /
precision / ranks), else the same ZeRO layout, else every run on this machine.
"""

from __future__ import annotations

import hashlib
import platform
import socket
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

MIN_RUNS = 3
BAND = (0.10, 0.90)  # percentiles of the ratios that bound the corrected estimate
HOST, GPU = "host per rank", "GPU per device"


@dataclass(frozen=True)
class Machine:
    """What identifies the hardware a run measured: hostname, CPU model, RAM total, GPU names."""

    hostname: str
    cpu_model: str
    ram_total_bytes: int
    gpu_names: tuple[str, ...]

    @property
    def id(self) -> str:
        text = "|".join([self.hostname, self.cpu_model, str(self.ram_total_bytes), *self.gpu_names])
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, **asdict(self), "gpu_names": list(self.gpu_names)}


@lru_cache(maxsize=1)
def this_machine() -> Machine:
    import psutil

    from nexa_core.hardware import list_gpus

    return Machine(
        socket.gethostname(),
        _cpu_model(),
        int(psutil.virtual_memory().total),
        tuple(g.name for g in list_gpus()),
    )


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@dataclass(frozen=True)
class Outcome:
    """One finished run's measured and estimated peak for one term."""

    run_id: str
    machine: str  # Machine.id
    term: str  # HOST or GPU
    layout: str  # the ZeRO layout label, e.g. "ZeRO-2 + optimizer→CPU"
    technique: str  # the layout plus what else changes memory: LoRA, checkpointing, precision, ranks
    estimated_bytes: int
    measured_bytes: int

    @property
    def ratio(self) -> float:
        return self.measured_bytes / self.estimated_bytes


@dataclass(frozen=True)
class Correction:
    """measured ≈ estimate × ratio, within [estimate × low, estimate × high], from ``runs`` runs."""

    term: str
    runs: int
    ratio: float
    low: float
    high: float
    scope: str  # "this technique", "this layout" or "all layouts"

    @property
    def band(self) -> float:
        """Half-width of the band relative to the corrected estimate (the "±" shown)."""
        return max(self.high / self.ratio - 1, 1 - self.low / self.ratio)

    def apply(self, estimate_bytes: int) -> dict[str, Any]:
        return {
            "term": self.term,
            "runs": self.runs,
            "scope": self.scope,
            "ratio": round(self.ratio, 4),
            "band": round(self.band, 4),
            "corrected_bytes": int(estimate_bytes * self.ratio),
            "low_bytes": int(estimate_bytes * self.low),
            "high_bytes": int(estimate_bytes * self.high),
            "text": self.text(),
        }

    def text(self) -> str:
        where = {"this technique": "with this technique", "this layout": "with this layout"}.get(
            self.scope, ""
        )
        return f"based on {self.runs} of your runs on this machine{' ' + where if where else ''}: ±{self.band * 100:.0f} %"


def correction(
    pairs: Sequence[tuple[int, int]], term: str = HOST, scope: str = "all layouts"
) -> Correction | None:
    """From (estimated, measured) byte pairs: the median ratio and the 10th-90th percentile band.
    None with fewer than MIN_RUNS usable pairs."""
    ratios = sorted(m / e for e, m in pairs if e > 0 and m > 0)
    if len(ratios) < MIN_RUNS:
        return None
    return Correction(term, len(ratios), statistics.median(ratios), _quantile(ratios, BAND[0]),
                      _quantile(ratios, BAND[1]), scope)  # fmt: skip


def _quantile(ordered: Sequence[float], q: float) -> float:
    """Linear interpolation between the closest ranks (numpy's default 'linear' method)."""
    at = q * (len(ordered) - 1)
    low = int(at)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (at - low)


def correction_for(
    history: Iterable[Outcome], term: str, layout: str, technique: str | None = None
) -> Correction | None:
    """The narrowest scope with enough runs: this technique, this layout, then every layout."""
    same_term = [o for o in history if o.term == term]
    for scope, keep in (
        ("this technique", lambda o: technique is not None and o.technique == technique),
        ("this layout", lambda o: o.layout == layout),
        ("all layouts", lambda o: True),
    ):
        found = correction([(o.estimated_bytes, o.measured_bytes) for o in same_term if keep(o)], term, scope)
        if found is not None:
            return found
    return None


def technique_key(layout: str, lora: bool, checkpointing: bool, precision: str, ranks: int) -> str:
    parts = [layout, *(["LoRA"] if lora else []), *(["checkpointing"] if checkpointing else []), precision]
    return " · ".join([*parts, f"{ranks} rank{'s' if ranks != 1 else ''}"])


def outcomes(run: dict[str, Any], measured: dict[str, Any]) -> list[Outcome]:
    """A finished run's pairs: host per rank (the rank that used most against the per-rank estimate)
    and GPU per device (the device that used most), where both sides were recorded."""
    est = run.get("estimate") or {}
    machine = (est.get("machine") or {}).get("id")
    if not machine or run.get("state") != "succeeded":
        return []
    spec = run.get("spec") or {}
    ranks = int(est.get("ranks_per_node") or 1)
    layout = str(est.get("label") or "")
    technique = technique_key(layout, bool(spec.get("lora")), bool(spec.get("gradient_checkpointing")),
                              str(est.get("precision") or ""), ranks * int(est.get("nodes") or 1))  # fmt: skip
    out = []
    host_est = est.get("expected_host_total_bytes") or est.get("host_total_bytes")
    per_rank = list((measured.get("peak_rss_bytes_per_rank") or {}).values())
    if not per_rank and measured.get("peak_host_rss_bytes"):
        per_rank = [measured["peak_host_rss_bytes"] / ranks]
    if host_est and per_rank:
        out.append(
            Outcome(run["id"], machine, HOST, layout, technique, int(host_est / ranks), int(max(per_rank)))
        )
    gpu_est = est.get("expected_per_gpu_total_bytes") or est.get("per_gpu_total_bytes")
    gpu_peaks = list((measured.get("peak_gpu_bytes") or {}).values())
    if gpu_est and gpu_peaks:
        out.append(Outcome(run["id"], machine, GPU, layout, technique, int(gpu_est), int(max(gpu_peaks))))
    return out
