"""Probe runs: a few real steps at the longest sequence length report the true peak; "find batch
size" binary-searches the largest micro-batch whose measured peak fits a memory budget. Each probe
is its own process (through the run manager), so an out-of-memory probe is an answer, not a crash."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from nexa_core import runner, runs
from nexa_core.launch import RunSpec
from nexa_core.runstore import RunStore
from nexa_core.train_config import TrainConfig

PROBE_STEPS = 3  # step 1 allocates the optimizer state; the peak is reached by step 2-3


@dataclass(frozen=True)
class ProbeResult:
    batch_size: int
    fits: bool
    peak_host_rss_bytes: int | None
    peak_gpu_bytes: int | None
    estimate_host_bytes: int | None
    estimate_gpu_bytes: int | None
    state: str
    reason: str | None
    run_id: str | None
    out_of_memory: bool = False  # failed because memory ran out: a "does not fit" answer, not an error


def probe(
    config: TrainConfig, budget_bytes: int | None = None, on_gpu: bool = False, store: RunStore | None = None
) -> ProbeResult:
    """Run ``PROBE_STEPS`` steps of ``config`` with every batch padded to ``seq_len``; measure."""
    from nexa_core.models import resolve_model

    store = store or RunStore()
    cfg = replace(
        config,
        # Memory and speed do not depend on the weights' values: a catalogue model with no local
        # weights is probed random-initialised instead of failing to load.
        random_init=config.random_init or resolve_model(config.model).weights_dir is None,
        max_steps=PROBE_STEPS,
        pad_to_seq_len=True,
        save=False,
        eval=False,
        name=f"probe b{config.batch_size}",
    )
    spec = RunSpec(cfg)
    estimate = runs.estimate_for(spec) or {}
    run_id = runner.launch(spec, estimate=estimate, store=store)
    run = runner.wait(run_id, timeout_s=3600, store=store)
    peaks = runs.measured(store, run_id)
    host = peaks["peak_host_rss_bytes"]
    gpu = max(peaks["peak_gpu_bytes"].values(), default=None)
    peak = gpu if on_gpu else host
    ok = run["state"] == "succeeded" and (budget_bytes is None or (peak is not None and peak <= budget_bytes))
    oom = run["state"] == "failed" and "memory" in (run.get("reason") or "").lower()
    return ProbeResult(
        config.batch_size, ok, host, gpu, estimate.get("host_total_bytes"), estimate.get("per_gpu_total_bytes"),
        run["state"], run.get("reason"), run_id, oom,
    )  # fmt: skip


def find_batch_size(
    config: TrainConfig,
    budget_bytes: int,
    max_batch: int = 256,
    on_gpu: bool = False,
    progress: Callable[[ProbeResult], None] | None = None,
) -> dict[str, Any]:
    """The largest micro-batch in [1, max_batch] whose probe fits ``budget_bytes`` (None if even 1
    does not). Doubles from 1 until a probe does not fit, then bisects: O(log max_batch) probes.
    A probe that fails for another reason than memory ends the search with ``error`` set: treating
    a broken configuration as "does not fit" would report a wrong batch size."""
    tried: dict[int, ProbeResult] = {}

    class _Broken(Exception):
        pass

    def fits(batch: int) -> bool:
        if batch not in tried:
            tried[batch] = probe(replace(config, batch_size=batch), budget_bytes, on_gpu)
            if progress:
                progress(tried[batch])
            result = tried[batch]
            if result.state != "succeeded" and not result.out_of_memory:
                raise _Broken(f"batch {batch}: run {result.state}: {result.reason or 'no reason recorded'}")
        return tried[batch].fits

    def answer(batch_size: int | None, error: str | None = None) -> dict[str, Any]:
        return {
            "batch_size": batch_size,
            "probes": [p.__dict__ for p in sorted(tried.values(), key=lambda p: p.batch_size)],
            "budget_bytes": budget_bytes,
            "error": error,
        }

    try:
        return answer(_search(fits, max_batch))
    except _Broken as exc:
        return answer(None, str(exc))


def _search(fits: Callable[[int], bool], max_batch: int) -> int | None:
    if not fits(1):
        return None
    good, bad = 1, None
    while bad is None and good < max_batch:
        nxt = min(good * 2, max_batch)
        if fits(nxt):
            good = nxt
        else:
            bad = nxt
    while bad is not None and bad - good > 1:
        mid = (good + bad) // 2
        if fits(mid):
            good = mid
        else:
            bad = mid
    return good
