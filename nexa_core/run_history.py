"""The run history as the Runs page and `nexa runs list | tag | note` show it: one display row per run
(text only, no empty "None" cells, narrow enough for a laptop screen), search and filters (comparison
and probe runs hidden unless asked for), tags and a note per run (validated, kept in the run store),
and the parameter table across runs with the fields that differ named (as W&B's runs table does)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from nexa_core.errors import ConfigError, raise_if
from nexa_core.memory import GIB
from nexa_core.monitor import format_seconds
from nexa_core.runs import job_label
from nexa_core.runstore import RunStore

# The names nexa_core/bench.py ("bench <technique>") and probe.py ("probe b<batch>") give their runs:
# many short measuring runs that would bury the user's own, so the history hides them by default.
BENCH_PREFIXES = ("bench ", "probe ")
MAX_TAGS, MAX_NOTE_CHARS = 20, 2000
_TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+-]{0,31}")
TAG_RULE = "1 to 32 letters, digits, '.', '_', ':', '+' or '-', starting with a letter or digit"
SCORES = (("f1", "F1"), ("accuracy", "acc"), ("perplexity", "ppl"))


def is_bench(summary: dict[str, Any]) -> bool:
    """A run started by a comparison (Compare page, `nexa bench`) or a memory probe (Plan page)."""
    return summary.get("kind") == "bench" or str(summary.get("name") or "").startswith(BENCH_PREFIXES)


# ------------------------------------------------------------------ tags and notes
def tag_problems(tags: Iterable[Any]) -> list[str]:
    """Why these tags cannot be kept (one problem per bad tag, and the count); [] when they can."""
    tags = list(tags)
    problems = [f"tags (--tag): {t!r} is not a tag; use {TAG_RULE}" for t in tags
                if not isinstance(t, str) or not _TAG.fullmatch(t)]  # fmt: skip
    if len(set(tags)) > MAX_TAGS:
        problems.append(f"tags (--tag): at most {MAX_TAGS} per run, got {len(set(tags))}")
    return problems


def set_tags(
    store: RunStore, run_id: str, add: Iterable[str] = (), remove: Iterable[str] = (), replace: bool = False
) -> list[str]:
    """Add and remove tags of a run (``replace``: the run's tags become ``add``); returns them, sorted."""
    run = _run(store, run_id)
    add, remove = [str(t).strip() for t in add], {str(t).strip() for t in remove}
    tags = sorted({*(() if replace else run.get("tags") or ()), *add} - remove)
    raise_if(tag_problems(add) or tag_problems(tags))
    store.update_run(run_id, tags=tags)
    return tags


def set_note(store: RunStore, run_id: str, note: str | None) -> str | None:
    """Set (or with None / blank text, clear) a run's note: free text up to MAX_NOTE_CHARS characters."""
    _run(store, run_id)
    note = (note or "").strip() or None
    if note is not None and len(note) > MAX_NOTE_CHARS:
        raise ConfigError([f"note: at most {MAX_NOTE_CHARS} characters, got {len(note)}"])
    if note is not None and any(ord(c) < 32 and c not in "\n\t" for c in note):
        raise ConfigError(["note: contains control characters (other than newlines and tabs)"])
    store.update_run(run_id, note=note)
    return note


def _run(store: RunStore, run_id: str) -> dict[str, Any]:
    run = store.get_run(run_id)
    if run is None:
        raise ConfigError([f"run_id: no run {run_id!r} (see `nexa runs list`)"])
    return run


# ------------------------------------------------------------------ search and filters
def filter_summaries(
    summaries: Iterable[dict[str, Any]],
    search: str = "",
    tags: Sequence[str] = (),
    states: Sequence[str] = (),
    models: Sequence[str] = (),
    show_bench: bool = False,
) -> list[dict[str, Any]]:
    """The runs that match every filter given: ``search`` (case-insensitive, in the name, id, model,
    task, tags or note), all of ``tags``, one of ``states``, one of ``models``; comparison and probe
    runs only with ``show_bench``."""
    words = search.lower().split()
    out = []
    for s in summaries:
        if not show_bench and is_bench(s):
            continue
        if tags and not set(tags) <= set(s.get("tags") or ()):
            continue
        if (states and s.get("state") not in states) or (models and s.get("model") not in models):
            continue
        haystack = " ".join(
            str(s.get(k) or "") for k in ("name", "run_id", "model", "task", "note")
        ).lower() + " " + " ".join(s.get("tags") or ()).lower()  # fmt: skip
        if all(w in haystack for w in words):
            out.append(s)
    return out


# ------------------------------------------------------------------ the history table
def _layout_text(summary: dict[str, Any]) -> str:
    label = (summary.get("estimate") or {}).get("label")
    if label:
        return label
    stage = summary.get("zero_stage")
    if stage is None:
        return ""
    parts = [f"ZeRO-{stage}"]
    parts += ["optimizer→CPU"] if summary.get("offload_optimizer") == "cpu" else []
    parts += ["params→CPU"] if summary.get("offload_param") == "cpu" else []
    return " + ".join(parts)


def _pair(measured: Any, estimated: Any) -> str:
    """'peak / estimate' in GiB; a dash for a missing side, empty when both are missing."""
    sides = [f"{v / GIB:,.2f}" if isinstance(v, (int, float)) and v else "–" for v in (measured, estimated)]
    return "" if sides == ["–", "–"] else " / ".join(sides)


def _score(summary: dict[str, Any]) -> str:
    return next((f"{short} {summary[k]:.3f}" for k, short in SCORES if summary.get(k) is not None), "")


def history_rows(summaries: Iterable[dict[str, Any]]) -> list[dict[str, str]]:
    """One row of text per run summary for the Runs table: every cell a string (empty when unknown);
    memory as 'measured peak / estimate' in GiB; the GPU and Slurm columns only when a run has them."""
    rows = []
    for s in summaries:
        est, meas = s.get("estimate") or {}, s.get("measured") or {}
        gpu_peaks = list((meas.get("peak_gpu_bytes") or {}).values())
        total = s.get("total_steps")
        rows.append(
            {
                "run": str(s.get("name") or s["run_id"]),
                "state": str(s.get("state") or ""),
                "tags": ", ".join(s.get("tags") or ()),
                "model": str(s.get("model") or "").rstrip("/").rsplit("/", 1)[-1],
                "task": str(s.get("task") or ""),
                "layout": _layout_text(s),
                "step": f"{s.get('step') or 0}/{total}" if total else str(s.get("step") or 0),
                "time": format_seconds(s["duration_s"]) if s.get("duration_s") is not None else "",
                "host GiB peak / est.": _pair(meas.get("peak_host_rss_bytes"), est.get("host_total_bytes")),
                "GPU GiB peak / est.": _pair(max(gpu_peaks) if gpu_peaks else None, est.get("per_gpu_total_bytes")),
                "loss": f"{s['final_loss']:.4f}" if s.get("final_loss") is not None else "",
                "score": _score(s),
                "where": job_label(s.get("slurm")) or "this machine",
            }
        )  # fmt: skip
    for optional, empty in (("GPU GiB peak / est.", ""), ("where", "this machine")):
        if all(r[optional] == empty for r in rows):
            for r in rows:
                del r[optional]
    return rows


# ------------------------------------------------------------------ parameters across runs
def param_table(runs: Sequence[dict[str, Any]]) -> tuple[list[dict[str, str]], list[str]]:
    """(one row per run: its label and every configuration field, as text; the fields whose values
    differ between the runs, in the order of the rows' columns). Data files show by file name."""
    rows = []
    for run in runs:
        spec = dict(run.get("spec") or {})
        for key in ("dataset", "eval_dataset"):
            if spec.get(key):
                spec[key] = Path(str(spec[key])).name
        row = {"run": str(run.get("name") or run["id"])}
        row.update(
            {k: "" if v is None else v if isinstance(v, str) else json.dumps(v) for k, v in spec.items()}
        )
        rows.append(row)
    keys = list(dict.fromkeys(k for row in rows for k in row if k != "run"))
    differing = [k for k in keys if len({row.get(k, "") for row in rows}) > 1]
    return [{k: row.get(k, "") for k in ("run", *keys)} for row in rows], differing
