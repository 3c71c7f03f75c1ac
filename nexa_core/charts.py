"""The plotly figures of the Monitor and Runs pages, built from monitor.py's series: loss (raw,
smoothed, validation), learning rate, throughput, evaluation metrics, and memory measured next to the
planner's estimate."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

import plotly.graph_objects as go

from nexa_core.memory import GIB
from nexa_core.monitor import EVAL_METRICS, Point, downsample, memory_series
from nexa_core.runstore import RunStore

FEW_POINTS = 30
NO_GPU_TEXT = "no GPU samples yet"
# Colours that cannot be mistaken for one another (plotly's defaults give loss and smoothed loss two
# near-identical blues): the raw loss faint grey, its average the strong blue, validation orange.
RAW_LOSS, SMOOTH_LOSS, VALIDATION = "#a0a7b4", "#1f4e9c", "#e8710a"
# Memory samples come about every second; a pause this much longer than the usual spacing (and at
# least GAP_MIN_S) is a time nothing was measured (a stopped run resumed later): the line breaks.
GAP_FACTOR, GAP_MIN_S = 10.0, 15.0
# An estimate above this multiple of the measured peak is not drawn as a line (it would squash the
# measured curve into the bottom of the chart); the chart says where it is instead.
ESTIMATE_SCALE_LIMIT = 3.0
EVAL_TITLES = {"eval_f1": "entity F1", "eval_accuracy": "accuracy", "eval_perplexity": "perplexity"}


def _xy(pts: Sequence[tuple[float, float | None]], scale: float = 1.0) -> tuple[list, list]:
    return [x for x, _ in pts], [None if y is None else y / scale for _, y in pts]


def _line(fig: go.Figure, pts: Sequence[Point], name: str, scale: float = 1.0, **style: Any) -> None:
    # Markers while a series is short: a line through one point draws nothing, so the first steps
    # of a run would look like an empty chart.
    mode = "lines+markers" if len(pts) <= FEW_POINTS else "lines"
    x, y = _xy(pts, scale)
    fig.add_trace(go.Scatter(x=x, y=y, mode=mode, name=name, **style))


def break_gaps(pts: Sequence[Point]) -> list[tuple[float, float | None]]:
    """``pts`` with a (x, None) point inside every pause much longer than the usual spacing, so a
    line does not join the samples before and after it (plotly breaks a line at None)."""
    if len(pts) < 3:
        return list(pts)
    spacing = statistics.median(b[0] - a[0] for a, b in zip(pts, pts[1:]))
    gap = max(GAP_MIN_S, GAP_FACTOR * spacing)
    out: list[tuple[float, float | None]] = [pts[0]]
    for a, b in zip(pts, pts[1:]):
        if b[0] - a[0] > gap:
            out.append(((a[0] + b[0]) / 2, None))
        out.append(b)
    return out


def _layout(fig: go.Figure, title: str, x: str, y: str, **extra: Any) -> go.Figure:
    # uirevision keeps the user's zoom and hidden traces across the page's one-second refreshes.
    fig.update_layout(
        title=title, xaxis_title=x, yaxis_title=y, height=320, margin=dict(l=10, r=10, t=40, b=10),
        uirevision="nexa", legend=dict(orientation="h", y=-0.25), **extra,
    )  # fmt: skip
    return fig


def _estimate_line(fig: go.Figure, value_bytes: Any, what: str, measured_peak_bytes: float) -> None:
    """The estimate as a dashed line, unless it is so far above what was measured that the line would
    set the chart's range: then a note at the top says how far above it is."""
    if not isinstance(value_bytes, (int, float)) or value_bytes <= 0:
        return
    text = f"estimate {what} {value_bytes / GIB:,.2f} GiB"
    if measured_peak_bytes and value_bytes > ESTIMATE_SCALE_LIMIT * measured_peak_bytes:
        fig.add_annotation(
            text=f"▲ {text}, off the scale ({value_bytes / measured_peak_bytes:,.0f}× the measured peak)",
            xref="paper", yref="paper", x=0, y=1, xanchor="left", yanchor="top", showarrow=False,
            font=dict(color="firebrick"),
        )  # fmt: skip
        return
    fig.add_hline(
        y=value_bytes / GIB, line_dash="dash", line_color="firebrick", annotation_text=text,
        annotation_position="top left", name="estimate",
    )  # fmt: skip


def _peak(*groups: Any) -> float:
    """The largest value of every series in ``groups`` (lists of points, or dicts of them)."""
    values = [
        y
        for group in groups
        for pts in (group.values() if isinstance(group, dict) else [group])
        for _, y in pts or []
        if y is not None
    ]
    return max(values, default=0.0)


def _loss(series: dict[str, Any], log_y: bool) -> go.Figure:
    fig = go.Figure()
    _line(fig, series.get("loss", []), "loss", line=dict(width=1, color=RAW_LOSS))
    _line(fig, series.get("loss_smoothed", []), "loss (smoothed)", line=dict(width=2.5, color=SMOOTH_LOSS))
    validation = (series.get("eval") or {}).get("eval_loss") or []
    if validation:
        x, y = _xy(validation)
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", name="validation loss",
                                 line=dict(width=2, color=VALIDATION), marker=dict(size=8)))  # fmt: skip
    return _layout(fig, "Loss", "step", "loss", yaxis_type="log" if log_y else "linear")


def _evaluation(evals: dict[str, list]) -> go.Figure | None:
    """Validation metrics other than the loss, by step; None until one has two points (a single
    final evaluation is the metric shown beside the charts, not a curve)."""
    curves = {k: v for k, v in evals.items() if k in EVAL_TITLES and len(v) >= 2}
    if not curves:
        return None
    fig = go.Figure()
    for name, rows in curves.items():
        x, y = _xy(rows)
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", name=EVAL_TITLES[name]))
    return _layout(fig, "Evaluation (validation set)", "step", " / ".join(EVAL_TITLES[k] for k in curves))


def figures(
    series: dict[str, Any], estimate: dict[str, Any] | None, log_y: bool = False
) -> dict[str, go.Figure]:
    """The Monitor page's charts, in the order to draw them: loss (with the validation loss), lr,
    throughput, evaluation (once validation metrics form a curve), host_memory and gpu_memory (when
    the run has GPU samples or a per-GPU estimate; a CPU-only run has no GPU chart). Memory in GiB
    against seconds, the line broken where sampling paused, with the planner's estimate dashed."""
    estimate = estimate or {}
    figs = {"loss": _loss(series, log_y)}
    lr = go.Figure()
    _line(lr, series.get("lr", []), "learning rate")
    figs["lr"] = _layout(lr, "Learning rate", "step", "lr")

    throughput = go.Figure()
    _line(throughput, series.get("samples_per_s", []), "samples/s", line=dict(color=SMOOTH_LOSS))
    _line(
        throughput,
        series.get("tokens_per_s", []),
        "tokens/s",
        yaxis="y2",
        line=dict(color=VALIDATION, dash="dot"),
    )
    figs["throughput"] = _layout(throughput, "Throughput", "step", "samples/s",
                                 yaxis2=dict(title="tokens/s", overlaying="y", side="right"))  # fmt: skip
    evaluation = _evaluation(series.get("eval") or {})
    if evaluation is not None:
        figs["evaluation"] = evaluation

    memory = series.get("memory") or {}
    host = go.Figure()
    for name, pts in (memory.get("host_rss") or {}).items():
        _line(host, break_gaps(pts), f"{name} RSS", scale=GIB)
    if len(memory.get("host_rss") or {}) > 1:
        _line(host, break_gaps(memory.get("host_total", [])), "all ranks", scale=GIB, line=dict(width=3))
    peak = _peak(memory.get("host_rss") or {}, memory.get("host_total") or [])
    _estimate_line(host, estimate.get("host_total_bytes"), "host", peak)
    figs["host_memory"] = _layout(host, "Host memory (RSS per rank)", "seconds", "GiB")

    used, allocated = memory.get("gpu_used") or {}, memory.get("gpu_allocated") or {}
    if used or allocated or (estimate.get("per_gpu_total_bytes") or 0) > 0:
        gpu = go.Figure()
        for name, pts in used.items():
            _line(gpu, break_gaps(pts), f"{name} used (NVML)", scale=GIB)
        for name, pts in allocated.items():
            _line(gpu, break_gaps(pts), f"{name} allocated (torch)", scale=GIB, line=dict(dash="dot"))
        _estimate_line(gpu, estimate.get("per_gpu_total_bytes"), "per GPU", _peak(used, allocated))
        if not (used or allocated):
            gpu.add_annotation(text=NO_GPU_TEXT, showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5)
        figs["gpu_memory"] = _layout(gpu, "GPU memory (per device)", "seconds", "GiB")
    return figs


OVERLAY_NAMES = {
    "loss": "training loss", "eval_loss": "validation loss", "eval_f1": "validation F1",
    "eval_accuracy": "validation accuracy", "eval_perplexity": "validation perplexity", "lr": "learning rate",
    "samples_per_s": "samples/s", "tokens_per_s": "tokens/s", "host_rss": "host memory (all ranks)",
}  # fmt: skip


def overlay_metrics(store: RunStore, run_ids: Sequence[str]) -> list[str]:
    """What ``overlay`` can draw for these runs: the training loss, each validation metric one of
    them recorded, learning rate, throughput and host memory (OVERLAY_NAMES gives their names)."""
    recorded = {name for run_id in run_ids for name in store.metric_names(run_id)}
    return [
        "loss",
        *(m for m in EVAL_METRICS if m in recorded),
        "lr",
        "samples_per_s",
        "tokens_per_s",
        "host_rss",
    ]


def overlay(
    store: RunStore, run_ids: Sequence[str], metric: str = "loss", max_points: int = 2000, log_y: bool = False
) -> go.Figure:
    """One figure comparing runs: a metric by step (log-scale y on request: losses of runs that
    learn at different rates; validation metrics are drawn with markers), or ``host_rss`` (all ranks)
    by seconds."""
    fig = go.Figure()
    for run_id in run_ids:
        run = store.get_run(run_id) or {}
        label = f"{run.get('name') or run_id} ({run_id})" if run.get("name") != run_id else run_id
        if metric == "host_rss":
            total = memory_series(store.memory(run_id), max_points)["host_total"]
            _line(fig, break_gaps(total), label, scale=GIB)
        elif metric in EVAL_METRICS:
            x, y = _xy(store.curves(run_id, [metric])[metric])
            fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", name=label))
        else:
            _line(fig, downsample(store.curves(run_id, [metric])[metric], max_points), label)
    if metric == "host_rss":
        return _layout(fig, "Host memory, all ranks", "seconds", "GiB")
    name = OVERLAY_NAMES.get(metric, metric)
    return _layout(fig, name[0].upper() + name[1:], "step", name, yaxis_type="log" if log_y else "linear")
