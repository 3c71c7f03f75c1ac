"""Runs: every run's outcome, measured peak memory next to its estimate; search, filter, tag and note
them; overlay the curves and compare the parameters of several; resume, try, export, clone or delete one."""

import streamlit as st

from nexa_core import run_history, runs
from nexa_ui.auth import require_access
from nexa_ui.queue_view import queue_section
from nexa_ui.runs_view import filters, notice, overlays, parameters, run_panel
from nexa_ui.shared import hardware_sidebar, open_store, run_summary
from nexa_ui.try_panel import folder_panel

require_access()  # also when Streamlit runs this file without app.py (nexa_ui/auth.py)

st.title("Run history")
hardware_sidebar()
store = open_store()  # refreshed: runs whose process vanished are marked failed first
notice()
queue_section(store)  # the runs waiting for a busy device: reorder or cancel (nexa_ui/queue_view.py)

listed = {r["id"]: r for r in store.list_runs()}
if not listed:
    st.info("No runs yet: start one on the Launch page.")
summaries = {run_id: run_summary(store, run) for run_id, run in listed.items()}
shown = filters(list(summaries.values())) if listed else []
if listed:
    st.dataframe(run_history.history_rows(shown), hide_index=True, width="stretch")

about = {i: runs.run_label(i, s["name"], s["state"]) for i, s in summaries.items()}
# Runs picked before stay picked while a filter hides them; a deleted run leaves the selection (both
# set before the widget is drawn, which Streamlit allows).
picked_before = [i for i in st.session_state.get("runs_pick", []) if i in listed]
st.session_state["runs_pick"] = picked_before
options = [s["run_id"] for s in shown] + [i for i in picked_before if i not in {s["run_id"] for s in shown}]
picked = (
    st.multiselect("Runs to compare or act on", options, key="runs_pick", format_func=about.get)
    if listed
    else []
)
if listed and not picked:
    st.caption(
        "Select one or more runs to overlay their curves, compare their parameters, tag, try or export them."
    )
if picked:
    overlays(store, picked)
    if len(picked) > 1:
        parameters(listed, picked)
    known_tags = sorted({t for s in summaries.values() for t in s.get("tags") or ()})
    for run_id in picked:
        run_panel(
            store, listed[run_id], summaries[run_id], about[run_id], known_tags, expanded=len(picked) == 1
        )

with st.expander("Try an exported model folder"):
    folder_panel("runs")
