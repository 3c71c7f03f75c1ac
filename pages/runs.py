"""Runs: every run's outcome, measured peak memory next to its estimate; overlay curves of several
runs; resume, export or delete one."""

import streamlit as st

from nexa_core import monitor, runner, runs
from nexa_core.errors import ConfigError
from nexa_ui.auth import require_access
from nexa_ui.queue_view import queue_section
from nexa_ui.shared import export_form, hardware_sidebar, open_store, run_summary, show_problems

require_access()  # also when Streamlit runs this file without app.py (nexa_ui/auth.py)

st.title("Run history")
hardware_sidebar()
store = open_store()  # refreshed: runs whose process vanished are marked failed first


def _delete(run_id: str) -> None:
    """A callback, so the table below is drawn without the deleted run."""
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


kind, text = st.session_state.pop("runs_notice", (None, None))
if kind:
    getattr(st, kind)(text)

listed = store.list_runs()
if not listed:
    st.info("No runs yet: start one on the Launch page.")
    st.stop()
summaries = {r["id"]: run_summary(store, r) for r in listed}
st.dataframe(runs.history_rows(summaries.values()), hide_index=True, width="stretch")
queue_section(store)  # the runs waiting for a busy device: reorder or cancel (nexa_ui/queue_view.py)

ids = list(summaries)
about = {i: runs.run_label(i, s["name"], s["state"]) for i, s in summaries.items()}
# A deleted run leaves the selection before the widget is drawn (Streamlit allows setting it then).
st.session_state["runs_pick"] = [i for i in st.session_state.get("runs_pick", []) if i in ids]
picked = st.multiselect("Runs to compare or act on", ids, key="runs_pick", format_func=about.get)
if not picked:
    st.caption("Select one or more runs to overlay their loss and host-memory curves.")
    st.stop()

log_y = st.toggle("Log-scale loss", key="runs_log_y")
left, right = st.columns(2)
left.plotly_chart(monitor.overlay(store, picked, "loss", log_y=log_y), key="runs_overlay_loss")
right.plotly_chart(monitor.overlay(store, picked, "host_rss"), key="runs_overlay_memory")

for run_id in picked:
    summary, run = summaries[run_id], next(r for r in listed if r["id"] == run_id)
    with st.expander(about[run_id], expanded=len(picked) == 1):
        if summary["exit_reason"]:
            st.caption(f"Outcome: {summary['exit_reason']}")
        if st.button("Open in Monitor", key=f"runs_open_{run_id}"):
            st.session_state["monitor_run"] = run_id
            st.switch_page("pages/monitor.py")
        if st.button(
            "Clone into Launch", key=f"runs_clone_{run_id}", help="the same configuration, as a new run"
        ):
            st.session_state["launch_clone"] = run_id
            st.switch_page("pages/launch.py")
        if summary["state"] in ("stopped", "failed") and st.button(
            "Resume from the latest checkpoint", key=f"runs_resume_{run_id}"
        ):
            try:
                runner.resume(run_id)
            except ConfigError as exc:
                show_problems(exc.problems)
            else:
                st.session_state["monitor_run"] = run_id
                st.switch_page("pages/monitor.py")
        if summary["state"] not in ("queued", "running"):
            export_form(run, "runs")
            confirm = st.checkbox(
                "Yes, delete this run's record and its run folder", key=f"runs_confirm_{run_id}"
            )
            st.button(
                "Delete run",
                key=f"runs_delete_{run_id}",
                disabled=not confirm,
                on_click=_delete,
                args=(run_id,),
            )
