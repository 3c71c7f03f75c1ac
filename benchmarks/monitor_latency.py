"""How fresh and how fast the Monitor page is, against a 1 s goal for each:

(a) store latency: one process writes a metric row (RunStore.log_metrics, as a trainer does), another
    polls RunStore.metrics(since_step=...) until it sees it; the delay from the write call to
    visibility, 50 times (the page's own 1 s refresh interval comes on top of this);
(b) chart build: run_series + figures for a run of 100,000 steps (loss, lr, samples_per_s) and
    100,000 memory samples, as each refresh of the page does it.

    python benchmarks/monitor_latency.py
"""

from __future__ import annotations

import multiprocessing as mp
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nexa_core.charts import figures  # noqa: E402
from nexa_core.monitor import _MEM_FIELDS, SeriesReader, run_series  # noqa: E402
from nexa_core.runstore import RunState, RunStore  # noqa: E402

GOAL_S = 1.0
ROUNDS = 50
STEPS = 100_000
REPEATS = 5


def _verdict(seconds: float) -> str:
    return "met" if seconds < GOAL_S else "MISSED"


def _poller(path: str, run_id: str, seen: mp.Queue) -> None:
    """Poll as the page does (since the last step it has) and report when each new step appears."""
    store, last = RunStore(path), 0
    while last < ROUNDS:
        rows = store.metrics(run_id, ["loss"], since_step=last)["loss"]
        if rows:
            last = rows[-1][0]
            seen.put((last, time.time()))
        else:
            time.sleep(0.001)


def store_latency(folder: Path) -> list[float]:
    store = RunStore(folder / "latency.sqlite")
    store.create_run("lat", name="lat", spec={}, run_dir=str(folder), state=RunState.RUNNING)
    spawn = mp.get_context("spawn")  # a fresh interpreter, like a separate app process
    seen = spawn.Queue()
    poller = spawn.Process(target=_poller, args=(str(store.path), "lat", seen))
    poller.start()
    time.sleep(1.0)  # let the poller start (imports) before the first write
    delays = []
    for step in range(1, ROUNDS + 1):
        written = time.time()
        store.log_metrics("lat", step, {"loss": 1.0 / step})
        got, at = seen.get(timeout=30)
        assert got == step, (got, step)
        delays.append(at - written)
    poller.join(timeout=10)
    return delays


def fill(store: RunStore, run_id: str) -> None:
    """A long run, written in bulk (a trainer writes the same rows one step at a time)."""
    store.create_run(run_id, name="long", spec={"max_steps": STEPS}, run_dir="", state=RunState.SUCCEEDED)
    start = time.time() - STEPS
    rows = [
        (run_id, s, name, value, start + s)
        for s in range(1, STEPS + 1)
        for name, value in (
            ("loss", 2.0 / (1 + s / 1000) + (s % 97) / 1000),
            ("lr", 5e-5),
            ("samples_per_s", 40.0),
        )
    ]
    with sqlite3.connect(store.path) as conn:  # the table RunStore.log_metrics writes, in one transaction
        conn.executemany("INSERT INTO metrics VALUES (?, ?, ?, ?, ?)", rows)
    store.log_memory(
        run_id,
        [
            {"t": start + i, "rank": 0, "host": "h", "step": i, "rss_bytes": 2**30 + (i % 500) * 2**20}
            for i in range(STEPS)
        ],
    )


def chart_build(folder: Path) -> tuple[float, float, float, float]:
    """(cold median, cold worst, of which the store's reads, refresh) seconds: a first look at the finished-size run,
    then a live refresh after one more step and memory sample arrive (the page's 1 s fragment)."""
    store = RunStore(folder / "long.sqlite")
    fill(store, "long")
    estimate = {"host_total_bytes": 3 * 2**30, "per_gpu_total_bytes": 0}
    figures(run_series(store, "long"), estimate)  # warm imports and plotly's validators, as a running app has
    # The first build repeated with a fresh reader each time (the machine's noise is of the same order
    # as the figure): the median is reported, and the worst of the repeats beside it.
    colds, reads_s = [], []
    for _ in range(REPEATS):
        start = time.perf_counter()
        store.curves("long", ["loss", "lr", "samples_per_s", "tokens_per_s"])
        store.memory_rows("long", _MEM_FIELDS)
        reads_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        reader = SeriesReader(store, "long")
        series = reader.series()
        figs = figures(series, estimate)
        colds.append(time.perf_counter() - start)
    cold, worst, reads = statistics.median(colds), max(colds), statistics.median(reads_s)
    assert len(figs["loss"].data[0].x) <= 2000 and len(series["memory"]["host_rss"]["rank 0"]) <= 2000
    store.update_run("long", state=RunState.RUNNING)  # live: the reader now reads increments
    reader.series()
    store.log_metrics("long", STEPS + 1, {"loss": 0.5, "lr": 5e-5, "samples_per_s": 40.0})
    store.log_memory(
        "long", [{"t": time.time(), "rank": 0, "host": "h", "step": STEPS + 1, "rss_bytes": 2**31}]
    )
    start = time.perf_counter()
    series = reader.series()
    figures(series, estimate)
    refresh = time.perf_counter() - start
    assert series["loss"][-1] == (STEPS + 1, 0.5)
    return cold, worst, reads, refresh


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        delays = store_latency(Path(tmp))
        median_ms, max_ms = statistics.median(delays) * 1000, max(delays) * 1000
        print(f"(a) write -> visible to a poller, {ROUNDS} rounds: median {median_ms:.1f} ms, max {max_ms:.1f} ms"
              f" (goal < {GOAL_S * 1000:.0f} ms): {_verdict(max(delays))}")  # fmt: skip
        cold, worst, reads, refresh = chart_build(Path(tmp))
        what = f"{STEPS:,} steps x 3 metrics + {STEPS:,} memory rows"
        print(f"(b) run_series + figures, {what}, first build, median of {REPEATS}: {cold:.3f} s, worst "
              f"{worst:.3f} s (goal < {GOAL_S:.0f} s): {_verdict(cold)}")  # fmt: skip
        print(f"    of which the store's bulk reads (RunStore.curves + memory_rows) take {reads:.3f} s")
        print(f"(b) live refresh after one new step (incremental read): {refresh:.3f} s"
              f" (goal < {GOAL_S:.0f} s): {_verdict(refresh)}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
