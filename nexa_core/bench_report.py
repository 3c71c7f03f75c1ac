"""The savings report: tables and plotly charts from a bench result, as one self-contained HTML file
(plotly.js inline, so it opens with no network), CSV, or PNG images of the charts (plotly's own export
through kaleido, which drives a local Chrome or Chromium). Every number is measured or marked estimated."""

from __future__ import annotations

import csv
import html
import io
from typing import Any

from nexa_core.bench import MIN_TIMED_STEPS, SKIP_STEPS
from nexa_core.errors import ConfigError

MIB = 1024**2
CHARTS = ("memory", "slowdown")
PNG_NEEDS_A_BROWSER = (
    "png (--png-dir): PNG export needs Chrome or Chromium on this machine (kaleido drives it; set BROWSER_PATH "
    "if it is installed elsewhere); the HTML report and each chart's camera button work without one"
)


def timed_steps(result: dict[str, Any], row: dict[str, Any]) -> int | None:
    """How many steps a measured row's median step time comes from (older results did not say:
    then every step after the warm-up ones)."""
    timed = (row.get("measured") or {}).get("timed_steps")
    steps = (result.get("config") or {}).get("steps")
    return timed if timed is not None else None if steps is None else max(steps - SKIP_STEPS, 0)


def too_noisy(result: dict[str, Any], row: dict[str, Any]) -> bool:
    """A step-time ratio with this row (or the baseline) is noise below MIN_TIMED_STEPS timed steps."""
    timed = timed_steps(result, row)
    return timed is not None and timed < MIN_TIMED_STEPS


def table_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per technique with % memory saved and % slower against the baseline row; a slow-down
    from too few timed steps says so instead of a number."""
    rows = result["rows"]
    base = next((r for r in rows if r["technique"] == "baseline" and r["status"] == "measured"), None)
    out = []
    for r in rows:
        m, e = r.get("measured") or {}, r.get("estimate") or {}
        row = {
            "technique": r["technique"],
            "status": r["status"],
            "peak host MiB (measured)": _mib(m.get("peak_host_rss_bytes")),
            "host MiB (estimated)": _mib(e.get("host_total_bytes")),
            "estimate error": _pct(r.get("host_estimate_error")),
            "peak GPU MiB (measured)": _mib(m.get("peak_gpu_bytes")),
            "GPU MiB (estimated)": _mib(e.get("per_gpu_total_bytes"))
            if e.get("per_gpu_total_bytes")
            else None,
            "step time s (measured)": round(m["step_time_s"], 3) if m.get("step_time_s") else None,
            "timed steps": timed_steps(result, r) if r["status"] == "measured" else None,
            "samples/s (measured)": round(m["samples_per_s"], 2) if m.get("samples_per_s") else None,
            "host memory saved vs baseline": None,
            "slower vs baseline": None,
            "reason": r.get("reason"),
        }
        if base and r["status"] == "measured":
            bm = base["measured"]
            if bm.get("peak_host_rss_bytes") and m.get("peak_host_rss_bytes"):
                row["host memory saved vs baseline"] = _pct(
                    1 - m["peak_host_rss_bytes"] / bm["peak_host_rss_bytes"]
                )
            if bm.get("step_time_s") and m.get("step_time_s"):
                noisy = too_noisy(result, r) or too_noisy(result, base)
                row["slower vs baseline"] = (
                    f"too noisy (fewer than {MIN_TIMED_STEPS} timed steps)"
                    if noisy
                    else _pct(m["step_time_s"] / bm["step_time_s"] - 1)
                )
        out.append(row)
    return out


def figures(result: dict[str, Any]) -> dict[str, Any]:
    import plotly.graph_objects as go

    measured = [r for r in result["rows"] if r["status"] == "measured"]
    names = [r["technique"] for r in measured]
    memory = go.Figure()
    memory.add_bar(
        name="host peak, measured",
        x=names,
        y=[(r["measured"]["peak_host_rss_bytes"] or 0) / MIB for r in measured],
    )
    memory.add_bar(
        name="host, estimated", x=names, y=[(r["estimate"]["host_total_bytes"] or 0) / MIB for r in measured]
    )
    if any(r["measured"].get("peak_gpu_bytes") for r in measured):
        memory.add_bar(
            name="GPU peak, measured",
            x=names,
            y=[(r["measured"]["peak_gpu_bytes"] or 0) / MIB for r in measured],
        )
        memory.add_bar(
            name="GPU, estimated",
            x=names,
            y=[(r["estimate"]["per_gpu_total_bytes"] or 0) / MIB for r in measured],
        )
    memory.update_layout(
        barmode="group", title="Peak memory per technique: measured vs estimated (MiB)", yaxis_title="MiB"
    )
    base = next((r for r in measured if r["technique"] == "baseline"), None)
    speed = go.Figure()
    timed = [r for r in measured if r["measured"].get("step_time_s") and not too_noisy(result, r)]
    noisy = [r["technique"] for r in measured if r not in timed]
    if base and base in timed:
        bt = base["measured"]["step_time_s"]
        speed.add_bar(
            x=[r["technique"] for r in timed],
            y=[r["measured"]["step_time_s"] / bt for r in timed],
            name="step time / baseline",
        )
        speed.add_hline(y=1.0, line_dash="dash", annotation_text="baseline")
    if speed.data:
        steps = "/".join(str(n) for n in sorted({timed_steps(result, r) for r in timed}))
        title = f"Step time relative to baseline (median of {steps} timed steps; lower is faster)"
    else:
        title = "Step time relative to baseline: no measured baseline with enough timed steps"
    if noisy:
        title += f"<br><sup>not shown, too noisy (fewer than {MIN_TIMED_STEPS} timed steps): {', '.join(noisy)}</sup>"
    speed.update_layout(title=title, yaxis_title="× baseline")
    return {"memory": memory, "slowdown": speed}


def to_csv(result: dict[str, Any]) -> str:
    rows = table_rows(result)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["technique"])
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def png_browser() -> str | None:
    """The Chrome/Chromium kaleido would render PNGs with, or None. Looked up the way kaleido's
    choreographer does (BROWSER_PATH, PATH, the usual install folders); nothing is downloaded."""
    try:
        import kaleido  # noqa: F401  (plotly's static-image engine)
        from choreographer.browsers.chromium import Chromium
    except ImportError:
        return None
    return Chromium.find_browser(skip_local=False)


def to_png(result: dict[str, Any], chart: str) -> bytes:
    """One chart of the report as a PNG image (1600×800 pixels)."""
    if chart not in CHARTS:
        raise ConfigError([f"chart: {chart!r} is not a report chart; choose one of {', '.join(CHARTS)}"])
    if png_browser() is None:
        raise ConfigError([PNG_NEEDS_A_BROWSER])
    return figures(result)[chart].to_image(format="png", width=1000, height=500, scale=1.6)


def to_html(result: dict[str, Any]) -> str:
    """A stakeholder-readable report; plotly.js is inlined once, so the file needs no network."""
    import plotly.io as pio

    figs = figures(result)
    charts = [
        pio.to_html(fig, full_html=False, include_plotlyjs=(i == 0)) for i, fig in enumerate(figs.values())
    ]
    rows = table_rows(result)
    head = "".join(f"<th>{html.escape(k)}</th>" for k in (rows[0] if rows else {}))
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape('' if v is None else str(v))}</td>" for v in r.values()) + "</tr>"
        for r in rows
    )
    env, cfg = result["environment"], result["config"]
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items())
    gpus = ", ".join(env["gpus"]) or "none (CPU only)"
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>NEXA savings report</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;font-size:13px}}</style>
</head><body><h1>NEXA savings report</h1>
<p>Model <b>{html.escape(str(cfg["model"]))}</b>, task {html.escape(str(cfg["task"]))}, batch {cfg["batch_size"]} × sequence
{cfg["seq_len"]} (padded), {cfg["steps"]} steps per technique, the first {SKIP_STEPS} not timed; step-time ratios from fewer than
{MIN_TIMED_STEPS} timed steps are marked too noisy. Each technique ran as its own process.</p>
<p>Hardware: {html.escape(env["machine"])}, {env["cpu_cores"]} CPU cores, {env["host_ram_bytes"] / 1024**3:.1f} GiB RAM, GPUs: {html.escape(gpus)}.
Versions: {html.escape(versions)}. Date: {env["date"]}.</p>
<p>Columns marked <i>measured</i> come from the runs (peak RSS of the process tree, median step time); columns marked
<i>estimated</i> come from the NEXA planner's formulas (docs/MEMORY.md). Nothing here is a quoted or marketing figure.</p>
<table><tr>{head}</tr>{body}</table>
{"".join(charts)}
</body></html>"""


def _mib(value: Any) -> float | None:
    return round(value / MIB, 1) if value else None


def _pct(value: Any) -> str | None:
    return f"{value:+.1%}" if isinstance(value, (int, float)) else None
