"""The Runs page's parts: the filters above the history table, the overlaid curves and the parameter
table of the selected runs, and one run's panel (outcome, tags and note, open, clone, resume, try,
export, delete). Widgets and rendering only: nexa_core.run_history, charts and runner do the work."""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from nexa_core import charts, run_history, runner, runs, try_model
from nexa_core.errors import ConfigError
from nexa_core.runstore import RunStore
from nexa_ui.shared import export_form, show_problems
from nexa_ui.try_panel import try_panel

ACTIVE = ("queued", "running")


def notice() -> None:
    """The message a callback left (a deletion, saved tags) for the run after it."""
    kind, text = st.session_state.pop("runs_notice", (None, None))
    if kind:
        getattr(st, kind)(text)


def _keep_known(key: str, options: list[Any]) -> None:
    """A widget's remembered choices that are no longer offered (a run deleted, a tag removed) are
    dropped before the widget is drawn, which is when Streamlit lets a page set them."""
    if isinstance(st.session_state.get(key), list):
        st.session_state[key] = [v for v in st.session_state[key] if v in options]
    elif key in st.session_state and st.session_state[key] not in options:
        del st.session_state[key]


def filters(summaries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Search, tag, state and model filters (comparison and probe runs behind a toggle); the runs shown."""
    options = {
        "runs_tags": sorted({t for s in summaries for t in s.get("tags") or ()}),
        "runs_states": sorted({s["state"] for s in summaries}),
        "runs_models": sorted({s["model"] for s in summaries if s.get("model")}),
    }
    for key, values in options.items():
        _keep_known(key, values)
    c1, c2, c3, c4 = st.columns([3, 2, 2, 2])
    search = c1.text_input("Search", key="runs_search", placeholder="name, id, model, task, tag or note")
    tags = c2.multiselect("Tags (all of them)", options["runs_tags"], key="runs_tags")
    states = c3.multiselect("State", options["runs_states"], key="runs_states")
    models = c4.multiselect("Model", options["runs_models"], key="runs_models")
    measuring = sum(run_history.is_bench(s) for s in summaries)
    show_bench = bool(measuring) and st.toggle(
        f"Show comparison and probe runs ({measuring})", key="runs_show_bench",
        help="the short runs the Compare page and the Plan page's probes start",
    )  # fmt: skip
    shown = run_history.filter_summaries(summaries, search, tags, states, models, show_bench)
    if len(shown) < len(summaries):
        st.caption(f"{len(shown)} of {len(summaries)} runs shown")
    return shown


def overlays(store: RunStore, picked: list[str]) -> None:
    """Two charts over the selected runs, each of a metric the user picks (loss and, once there are
    validation metrics, the headline one; else host memory)."""
    metrics = charts.overlay_metrics(store, picked)
    right = next(
        (m for m in ("eval_f1", "eval_accuracy", "eval_perplexity", "eval_loss") if m in metrics), "host_rss"
    )
    for key in ("runs_metric_left", "runs_metric_right"):
        _keep_known(key, metrics)
    name = charts.OVERLAY_NAMES.get
    left_col, right_col = st.columns(2)
    chosen = [
        left_col.selectbox("Overlay", metrics, index=0, key="runs_metric_left", format_func=name),
        right_col.selectbox(
            "and", metrics, index=metrics.index(right), key="runs_metric_right", format_func=name
        ),
    ]
    log_y = st.toggle("Log-scale y (not for memory)", key="runs_log_y")
    for column, metric, side in zip((left_col, right_col), chosen, ("left", "right")):
        figure = charts.overlay(store, picked, metric, log_y=log_y and metric != "host_rss")
        column.plotly_chart(figure, key=f"runs_overlay_{side}")


def parameters(listed: dict[str, dict[str, Any]], picked: list[str]) -> None:
    """The configuration of each selected run, one row each: the fields that differ, or all of them
    with those highlighted."""
    rows, differing = run_history.param_table([listed[i] for i in picked])
    st.subheader("Parameters")
    every = st.toggle("All fields", key="runs_params_all")
    st.caption(
        "Fields that differ: " + ", ".join(differing)
        if differing
        else "These runs have the same configuration."
    )
    rest = [k for k in rows[0] if k not in differing and k != "run"] if every else []
    table = pd.DataFrame(rows)[["run", *differing, *rest]]
    if every and differing:
        table = table.style.set_properties(
            subset=differing, **{"background-color": "rgba(250, 204, 21, 0.3)"}
        )
    st.dataframe(table, hide_index=True)


def _delete(store: RunStore, run_id: str) -> None:
    """A callback, so the table is drawn without the deleted run."""
    if not st.session_state.get(f"runs_confirm_{run_id}"):
        st.session_state["runs_notice"] = ("warning", "Tick the confirmation first: nothing was deleted.")
        return
    try:
        folder = runs.remove_run(store, run_id)
    except ConfigError as exc:
        st.session_state["runs_notice"] = ("error", "; ".join(exc.problems))
        return
    kept = (
        "its folder was removed"
        if folder
        else "no folder of its own was found under the runs folder to remove"
    )
    st.session_state["runs_notice"] = ("success", f"Deleted run {run_id}; {kept}.")


def _save_labels(store: RunStore, run_id: str) -> None:
    """A callback: the run's tags and note from its form, so the table above shows them at once."""
    try:
        run_history.set_tags(store, run_id, st.session_state.get(f"runs_tags_{run_id}") or [], replace=True)
        run_history.set_note(store, run_id, st.session_state.get(f"runs_note_{run_id}"))
    except ConfigError as exc:
        st.session_state["runs_notice"] = ("error", "Please fix: " + "; ".join(exc.problems))
    else:
        st.session_state["runs_notice"] = ("success", f"Saved the tags and note of run {run_id}.")


def run_panel(store: RunStore, run: dict[str, Any], summary: dict[str, Any], label: str, known_tags: list[str],
              expanded: bool) -> None:  # fmt: skip
    """One selected run: its outcome, tags and note, and what can be done with it."""
    run_id = run["id"]
    with st.expander(label, expanded=expanded):
        if summary["exit_reason"]:
            st.caption(f"Outcome: {summary['exit_reason']}")
        b1, b2, b3 = st.columns(3)
        if b1.button("Open in Monitor", key=f"runs_open_{run_id}"):
            st.session_state["monitor_run"] = run_id
            st.switch_page("pages/monitor.py")
        if b2.button(
            "Clone into Launch", key=f"runs_clone_{run_id}", help="the same configuration, as a new run"
        ):
            st.session_state["launch_clone"] = run_id
            st.switch_page("pages/launch.py")
        if summary["state"] in ("stopped", "failed") and b3.button(
            "Resume from the latest checkpoint", key=f"runs_resume_{run_id}"
        ):
            try:
                runner.resume(run_id)
            except ConfigError as exc:
                show_problems(exc.problems)
            else:
                st.session_state["monitor_run"] = run_id
                st.switch_page("pages/monitor.py")
        with st.form(f"runs_labels_{run_id}", enter_to_submit=False):
            tags = summary.get("tags") or []
            st.multiselect("Tags", sorted({*known_tags, *tags}), default=tags, key=f"runs_tags_{run_id}",
                           accept_new_options=True, placeholder=f"type a tag: {run_history.TAG_RULE}")  # fmt: skip
            st.text_area("Note", summary.get("note") or "", key=f"runs_note_{run_id}", height=68)
            st.form_submit_button("Save tags and note", on_click=_save_labels, args=(store, run_id))
        if summary["state"] in ACTIVE:
            return
        if try_model.has_checkpoint(run_id):
            st.markdown("**Try the model**")
            try_panel(f"runs_{run_id}", run_id=run_id, task=summary.get("task"))
        export_form(run, "runs")
        confirm = st.checkbox(
            "Yes, delete this run's record and its run folder", key=f"runs_confirm_{run_id}"
        )
        st.button("Delete run", key=f"runs_delete_{run_id}", disabled=not confirm, on_click=_delete,
                  args=(store, run_id))  # fmt: skip
