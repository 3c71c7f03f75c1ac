"""What the Monitor and Runs pages draw: a run's series read from the store, bounded in size, and
the plotly figures built from them (measured memory next to the planner's estimate)."""

from __future__ import annotations

import gc
import math
import operator
import threading
import time
from array import array
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from nexa_core.runstore import RunState, RunStore

Point = tuple[float, float]
SERIES_METRICS = ("loss", "lr", "samples_per_s", "tokens_per_s")
# validation metrics (trainer._store_names): a handful of rows per run, re-read whole on every update
EVAL_METRICS = ("eval_loss", "eval_f1", "eval_accuracy", "eval_perplexity")
_ACTIVE = (RunState.QUEUED.value, RunState.RUNNING.value)
SMOOTH_ALPHA = 0.1  # the EMA weight of the newest loss value
_MEM_FIELDS = ("t", "rank", "host", "rss_bytes", "gpu_index", "gpu_allocated_bytes", "nvml_used_bytes")
_MEM_ROW = operator.itemgetter(*_MEM_FIELDS)  # a store row as a tuple, at C speed


def _keep(values: np.ndarray, max_points: int) -> np.ndarray:
    """Indices to keep: every non-NaN value when they fit, else the first, the last and each
    bucket's min and max, so a loss spike or a memory peak survives (a plain stride drops it)."""
    valid = np.flatnonzero(~np.isnan(values))
    n, buckets = len(valid), max(1, (max_points - 2) // 2)
    if n <= max(max_points, 4):
        return valid
    body = values[valid[1:-1]]
    width = -(-len(body) // buckets)
    rows = -(-len(body) // width)
    pad = rows * width - len(body)  # the last bucket is padded with values argmin/argmax never pick
    lows = np.concatenate([body, np.full(pad, np.inf)]).reshape(rows, width).argmin(axis=1)
    highs = np.concatenate([body, np.full(pad, -np.inf)]).reshape(rows, width).argmax(axis=1)
    starts = np.arange(rows) * width + 1
    return valid[np.unique(np.concatenate(([0], starts + lows, starts + highs, [n - 1])))]


def downsample(points: Sequence[Point], max_points: int = 2000) -> list[Point]:
    """At most ``max_points`` (at least 4) of ``points``, in order: the first, the last and per
    bucket the min and the max. O(n) (the work is numpy's); points whose value is None are dropped."""
    values = np.array([math.nan if v is None else v for _, v in points], dtype=float)
    return [points[i] for i in _keep(values, max_points)]


def smooth(
    values: Iterable[float | None], alpha: float = SMOOTH_ALPHA, start: float | None = None
) -> list[float | None]:
    """Exponential moving average (from ``start``, else from the first value); None stays None and
    does not move the average."""
    out: list[float | None] = []
    average = start
    for v in values:
        if v is not None:
            average = v if average is None else alpha * v + (1 - alpha) * average
        out.append(None if v is None else average)
    return out


class _Column:
    """One series at full resolution in two compact arrays (16 bytes a point, not a tuple's ~100)."""

    def __init__(self, x_type: str = "d") -> None:
        self.x, self.y = array(x_type), array("d")

    def add(self, x: float, y: float | None) -> None:
        self.x.append(x)
        self.y.append(math.nan if y is None else y)

    def extend(self, xs: Sequence[float], ys: Sequence[float | None]) -> None:
        self.x.extend(xs)
        self.y.extend([math.nan if y is None else y for y in ys])

    def copy(self) -> _Column:
        out = _Column(self.x.typecode)
        out.x, out.y = array(self.x.typecode, self.x), array("d", self.y)
        return out

    def points(self, max_points: int) -> list[Point]:
        keep = _keep(np.array(self.y), max_points)
        return list(zip(np.array(self.x)[keep].tolist(), np.array(self.y)[keep].tolist()))


def _column(columns: dict[tuple, _Column], key: tuple) -> _Column:
    column = columns.get(key)
    if column is None:
        column = columns[key] = _Column()
    return column


class _MemoryCurves:
    """Memory rows (tuples in ``_MEM_FIELDS`` order, by t), each ingested once, as columns of
    (seconds since the first sample, bytes)."""

    def __init__(self) -> None:
        self.t0: float | None = None
        self.rss: dict[tuple, _Column] = {}  # (host, rank)
        self.total = _Column()  # host RSS summed over ranks: what the per-node estimate covers
        self.used: dict[tuple, _Column] = {}  # (host, gpu): NVML used, device-wide
        self.allocated: dict[tuple, _Column] = {}  # (host, gpu): torch allocated, summed over ranks
        self.latest_rss: dict[tuple, int] = {}
        self.latest_alloc: dict[tuple, dict[tuple, int]] = {}
        self.seen: dict[tuple, float] = {}
        self.nvml_rank: dict[tuple, int] = {}

    def add(self, rows: Iterable[tuple]) -> None:
        # This loop sees every sample of a run (100,000 for a long one), so it works on locals, appends
        # to the arrays directly and keeps the all-ranks total as a running sum.
        seen, latest_rss, rss_columns = self.seen, self.latest_rss, self.rss
        total_x, total_y = self.total.x, self.total.y
        running = sum(latest_rss.values())
        t0 = self.t0
        for t_abs, rank, host, rss, gpu, alloc, used in rows:
            if t0 is None:
                t0 = self.t0 = t_abs
            t, rank = t_abs - t0, rank or 0
            who = (host, rank)
            # A rank writes one row per visible GPU, all with the same RSS: count it once.
            if rss is not None and seen.get(who) != t_abs:
                seen[who] = t_abs
                running += rss - latest_rss.get(who, 0)
                latest_rss[who] = rss
                column = rss_columns.get(who) or _column(rss_columns, who)
                column.x.append(t)
                column.y.append(rss)
                total_x.append(t)
                total_y.append(running)
            if gpu is None:
                continue
            device = (host, gpu)
            # NVML figures are per device: read them from one rank only (no zig-zag between ranks).
            if used is not None and self.nvml_rank.setdefault(device, rank) == rank:
                _column(self.used, device).add(t, used)
            if alloc is not None:
                per_rank = self.latest_alloc.setdefault(device, {})
                per_rank[who] = alloc
                _column(self.allocated, device).add(t, sum(per_rank.values()))

    def copy(self) -> _MemoryCurves:
        out = _MemoryCurves()
        out.t0, out.total = self.t0, self.total.copy()
        for name in ("rss", "used", "allocated"):
            setattr(out, name, {k: c.copy() for k, c in getattr(self, name).items()})
        out.latest_rss, out.seen, out.nvml_rank = dict(self.latest_rss), dict(self.seen), dict(self.nvml_rank)
        out.latest_alloc = {k: dict(v) for k, v in self.latest_alloc.items()}
        return out

    def series(self, max_points: int) -> dict[str, Any]:
        multi_host = len({host for host, _ in self.rss}) > 1

        def named(columns: dict[tuple, _Column], what: str) -> dict[str, list[Point]]:
            return {
                (f"{host} {what} {i}" if multi_host else f"{what} {i}"): columns[host, i].points(max_points)
                for host, i in sorted(columns, key=lambda k: (str(k[0]), k[1]))
            }

        return {
            "t0": self.t0,
            "host_rss": named(self.rss, "rank"),
            "host_total": self.total.points(max_points),
            "gpu_used": named(self.used, "GPU"),
            "gpu_allocated": named(self.allocated, "GPU"),
        }


def memory_series(rows: Sequence[dict[str, Any]], max_points: int = 2000) -> dict[str, Any]:
    """Memory samples (store rows, by t) as series of (seconds since the first sample, bytes):
    ``host_rss`` per rank, ``host_total`` summed over ranks, ``gpu_used`` (NVML) and
    ``gpu_allocated`` (torch, summed over the ranks on a device) per device."""
    curves = _MemoryCurves()
    curves.add(map(_MEM_ROW, rows))
    return curves.series(max_points)


@contextmanager
def _bulk_read() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while a read builds hundreds of thousands of row
    tuples: they hold no cycles, and the collector's passes over them cost about a quarter of a long
    run's first build here. The previous state is restored (it stays on if another thread's read
    turned it back on)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class SeriesReader:
    """One run's chart series, read incrementally: each call reads only the metric steps after the
    last one seen and the memory samples since the settled point, ``SETTLE_S`` before the newest
    (ranks flush about every second, so a rank's samples can land behind another's newer ones).
    Every row is ingested once into full-resolution columns; a call then only downsamples them.
    A run that has ended is read once in full and then served as is until it is active again (a
    resume rewrites steps). The app keeps one reader per run; thread-safe for concurrent sessions."""

    SETTLE_S = 10.0

    def __init__(self, store: RunStore, run_id: str) -> None:
        self.store, self.run_id = store, run_id
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self._metrics = {name: _Column("q") for name in (*SERIES_METRICS, "loss_smoothed")}
        self._evals: dict[str, list[tuple]] = {}
        self._average: float | None = None
        self._last_step: int | None = None
        self._settled, self._settled_t = _MemoryCurves(), None
        self._tail: list[tuple] = []
        self._final_for: Any = None  # (created_at, ended_at) of the ended run read in full
        self._version, self._built = 0, None

    def _update(self) -> None:
        with _bulk_read():
            self._read_new()

    def _read_new(self) -> None:
        run = self.store.get_run(self.run_id) or {}
        ended = run.get("state") not in _ACTIVE
        signature = (run.get("created_at"), run.get("ended_at"))
        if ended and self._final_for == signature:
            return  # nothing changes until the run is resumed
        if ended or self._final_for is not None:
            self._reset()  # one full read of an ended run; a fresh read after a resume
        raw = self.store.curves(self.run_id, list(SERIES_METRICS), since_step=self._last_step)
        for name, rows in raw.items():
            if not rows:
                continue
            steps, values = zip(*rows)
            self._metrics[name].extend(steps, values)
            self._last_step = max(self._last_step or 0, steps[-1])
            if name == "loss":  # the EMA continues from the last increment's average
                kept = [(step, v) for step, v in zip(steps, values) if v is not None]
                smoothed = smooth([v for _, v in kept], start=self._average)
                self._metrics["loss_smoothed"].extend([step for step, _ in kept], smoothed)
                self._average = smoothed[-1] if smoothed else self._average
        # Evaluation rows land after their step's loss row (the same step), so an increment by step
        # would miss them: the few there are are read whole, and a change counts as new data.
        evals = self.store.curves(self.run_id, list(EVAL_METRICS))
        changed_evals = evals != self._evals
        self._evals = evals
        fresh = self.store.memory_rows(self.run_id, _MEM_FIELDS, self._settled_t)
        if ended:
            self._settled.add(fresh)
            self._tail = []
        elif fresh:
            settle = fresh[-1][0] - self.SETTLE_S
            self._settled.add(r for r in fresh if r[0] <= settle)
            self._tail = [r for r in fresh if r[0] > settle]
            self._settled_t = max(settle, self._settled_t or settle)
        self._version += bool(any(raw.values()) or fresh or ended or changed_evals)
        self._final_for = signature if ended else None

    def series(self, max_points: int = 2000) -> dict[str, Any]:
        """``run_series`` for this run: what was read before plus what is new."""
        with self._lock:
            self._update()
            if self._built is not None and self._built[0] == (self._version, max_points):
                return self._built[1]
            out: dict[str, Any] = {name: col.points(max_points) for name, col in self._metrics.items()}
            out["eval"] = {name: rows for name, rows in self._evals.items() if rows}
            memory = self._settled
            if self._tail:
                memory = memory.copy()
                memory.add(self._tail)
            out["memory"] = memory.series(max_points)
            self._built = ((self._version, max_points), out)
            return out


def run_series(store: RunStore, run_id: str, max_points: int = 2000) -> dict[str, Any]:
    """Everything the Monitor page charts for one run, each series at most ``max_points`` long:
    loss, loss_smoothed (``smooth``), lr, samples_per_s, tokens_per_s as (step, value), ``eval``
    (validation metric -> (step, value), every row) and ``memory`` (see ``memory_series``). A one-off read; a live view keeps a ``SeriesReader``."""
    return SeriesReader(store, run_id).series(max_points)


def live_status(run: dict[str, Any]) -> dict[str, Any]:
    """The part of ``runs.summary`` a page refreshing every second needs (state, step, total_steps,
    duration_s, exit_reason), from the run row alone: no metric or memory reads."""
    spec, started = run.get("spec") or {}, run.get("started_at")
    return {
        "state": run.get("state"),
        "step": run.get("last_step") or 0,
        "total_steps": spec.get("max_steps"),
        "duration_s": (run.get("ended_at") or time.time()) - started if started else None,
        "exit_reason": run.get("reason"),
    }


def format_seconds(seconds: float | None) -> str:
    """1h 02m 03s, 2m 05s or 12s; an em dash when unknown."""
    if seconds is None:
        return "—"
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h {s % 3600 // 60:02d}m {s % 60:02d}s"
    return f"{s // 60}m {s % 60:02d}s" if s >= 60 else f"{s}s"


def progress(summary: dict[str, Any]) -> tuple[float, float | None]:
    """(fraction done, seconds left or None). The ETA extrapolates the run's average pace so far,
    start-up included, so it errs long early on; an epoch-based run has no known total (0.0, None)."""
    if summary.get("state") == RunState.SUCCEEDED.value:
        return 1.0, None
    step, total = summary.get("step") or 0, summary.get("total_steps")
    if not total:
        return 0.0, None
    fraction = min(step / total, 1.0)
    duration = summary.get("duration_s")
    active = summary.get("state") in _ACTIVE
    if not active or not step or not duration:
        return fraction, None
    return fraction, max(duration * (total - step) / step, 0.0)
