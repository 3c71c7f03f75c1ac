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


def _estimate_line(
    fig: go.Figure, value_bytes: Any, text: str, measured_peak_bytes: float, dash: str = "dash",
    color: str = "firebrick",
) -> None:  # fmt: skip
    """An estimate as a line, unless it is so far above what was measured that the line would set the
    chart's range: then a note at the top says how far above it is."""
    if not isinstance(value_bytes, (int, float)) or value_bytes <= 0:
        return
    text = f"{text} {value_bytes / GIB:,.2f} GiB"
    if measured_peak_bytes and value_bytes > ESTIMATE_SCALE_LIMIT * measured_peak_bytes:
        fig.add_annotation(
            text=f"▲ {text}, off the scale ({value_bytes / measured_peak_bytes:,.0f}× the measured peak)",
            xref="paper", yref="paper", x=0, y=1, xanchor="left", yanchor="top", showarrow=False,
            font=dict(color=color),
        )  # fmt: skip
        return
    fig.add_hline(
        y=value_bytes / GIB, line_dash=dash, line_color=color, annotation_text=text,
        annotation_position="top left", name="estimate",
    )  # fmt: skip


def _estimate_lines(fig: go.Figure, estimate: dict[str, Any], key: str, where: str, peak: float) -> None:
    """The estimate for the run's data (dashed), and the worst case at the --seq-len cap (dotted)
    when it differs; runs recorded before data-aware estimates have only the cap (dashed)."""
    cap, expected = estimate.get(f"{key}_total_bytes"), estimate.get(f"expected_{key}_total_bytes")
    seq = estimate.get("seq_len")
    cap_text = f"cap at --seq-len {seq}" if seq else "at the --seq-len cap"
    if not expected:  # (runs recorded before estimates said their sequence length say nothing more)
        _estimate_line(fig, cap, f"estimate {where} ({cap_text})" if seq else f"estimate {where}", peak)
        return
    shape = estimate.get("expected") or {}
    batch = f", batch {shape['batch_rows']}×{shape['batch_tokens']}" if shape.get("batch_rows") else ""
    _estimate_line(fig, expected, f"estimate {where} for this data{batch}", peak)
    if cap and cap != expected:
        _estimate_line(fig, cap, cap_text, peak, dash="dot", color="gray")


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
    against seconds, the line broken where sampling paused, with the planner's estimate for the run's
    data dashed and the --seq-len cap dotted."""
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
    _estimate_lines(host, estimate, "host", "host", peak)
    figs["host_memory"] = _layout(host, "Host memory (RSS per rank)", "seconds", "GiB")

    used, allocated = memory.get("gpu_used") or {}, memory.get("gpu_allocated") or {}
    if used or allocated or (estimate.get("per_gpu_total_bytes") or 0) > 0:  # (the cap is the larger)
        gpu = go.Figure()
        for name, pts in used.items():
            _line(gpu, break_gaps(pts), f"{name} used (NVML)", scale=GIB)
        for name, pts in allocated.items():
            _line(gpu, break_gaps(pts), f"{name} allocated (torch)", scale=GIB, line=dict(dash="dot"))
        _estimate_lines(gpu, estimate, "per_gpu", "per GPU", _peak(used, allocated))
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


_TERMS = (("parameters", "params_bytes"), ("gradients", "gradients_bytes"), ("optimizer", "optimizer_bytes"),
          ("activations", "activations_bytes"), ("overhead", "overhead_bytes"))  # fmt: skip


def plan_figure(plan: Any) -> go.Figure:
    """The Plan page's stacked bars: each layout's memory by term against the capacity. Per GPU for a
    GPU plan; host bytes for a CPU-only one (every term is in host RAM there, per-GPU totals are 0)."""
    from nexa_core.memory import GIB

    on_gpu = plan.gpus_per_node > 0
    fig = go.Figure()
    labels = [e.label for e in plan.estimates]
    for term, attr in _TERMS:
        values = [getattr(e.per_gpu if on_gpu else e.host, attr) / GIB for e in plan.estimates]
        fig.add_trace(go.Bar(name=term, x=labels, y=values))
    capacity = (plan.gpu_budget_bytes if on_gpu else plan.host_budget_bytes or 0) / GIB
    if capacity:  # none for another machine's host RAM that was not given
        where = "GPU memory" if on_gpu else "host RAM"
        fig.add_hline(y=capacity, line_dash="dash", annotation_text=f"{where} capacity {capacity:.1f} GiB")
    title = "Per-GPU memory by option (GiB)" if on_gpu else "Host memory by option, CPU-only training (GiB)"
    fig.update_layout(barmode="stack", title=title, yaxis_title="GiB", legend_title="term")
    return fig
