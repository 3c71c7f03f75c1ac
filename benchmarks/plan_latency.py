"""Time to plan the largest catalogue model (Llama-3.1-70B), cold (first build on the meta
device) and warm (imports done, sizing cached), as the CLI and the Plan page see it.

    python benchmarks/plan_latency.py
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nexa_core.hardware import Hardware  # noqa: E402
from nexa_core.models import size_model  # noqa: E402
from nexa_core.planner import PlanConfig, make_plan  # noqa: E402

MODEL = "meta-llama/Llama-3.1-70B"


def plan_once(lora: bool = False) -> float:
    start = time.perf_counter()
    config = PlanConfig(
        model=MODEL, task="causal-lm", gpus=8, nodes=2, gpu_memory_gb=80, host_memory_gb=1024, lora=lora
    )
    make_plan(config, Hardware((), 0, 0))
    return time.perf_counter() - start


def main() -> int:
    cold = plan_once()
    warm = [plan_once() for _ in range(5)]
    cold_lora = plan_once(lora=True)
    warm_lora = [plan_once(lora=True) for _ in range(5)]
    uncached = []
    for _ in range(3):  # imports warm, but the meta-device build redone each time
        size_model.cache_clear()
        uncached.append(plan_once())
    print(
        f"{MODEL}: cold {cold:.2f} s (imports + first build), warm uncached median {statistics.median(uncached):.2f} s,"
    )
    print(f"  warm cached median {statistics.median(warm) * 1000:.1f} ms")
    print(f"{MODEL} + LoRA: cold {cold_lora:.2f} s, warm median {statistics.median(warm_lora) * 1000:.1f} ms")
    print(f"goal: warm < 2 s -> {'met' if max(uncached + warm + warm_lora) < 2 else 'MISSED'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
