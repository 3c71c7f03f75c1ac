"""Monitor: one run's progress, loss, learning rate, throughput, validation metrics and memory against
the estimate, live while it runs (read from the run store, so a closed tab loses nothing); stop,
outcome, export, and trying the finished model."""

import streamlit as st

from nexa_core import charts, monitor, runner, runs
from nexa_ui.auth import require_access
from nexa_ui.shared import export_form, hardware_sidebar, open_store, run_summary, series_reader
from nexa_ui.try_panel import try_panel

require_access()  # also when Streamlit runs this file without app.py (nexa_ui/auth.py)

ACTIVE = ("queued", "running")

st.title("Monitor a run")
hardware_sidebar()
store = open_store()  # refreshed: runs whose process vanished are marked failed first
listed = store.list_runs()
if not listed:
    st.info("No runs yet: start one on the Launch page.")
    st.stop()
ids = [r["id"] for r in listed]
about = {r["id"]: runs.run_label(r["id"], r["name"], r["state"]) for r in listed}


def _remember() -> None:
    st.session_state["monitor_run"] = st.session_state["monitor_pick"]


# The run to show survives page switches in "monitor_run" (Launch and Runs set it too); the
# widget's own key is set from it before the widget exists, which Streamlit allows.
wanted = st.session_state.get("monitor_run")
st.session_state["monitor_pick"] = wanted if wanted in ids else ids[0]
run_id = st.selectbox(
    "Run (newest first)", ids, key="monitor_pick", format_func=about.get, on_change=_remember
)
st.session_state["monitor_run"] = run_id
run = store.get_run(run_id) or {}
active = run.get("state") in ACTIVE

if active:
    if st.button(
        "Stop run", key="monitor_stop", help="The trainer checkpoints and exits; stragglers are killed"
    ):
        with st.spinner("Stopping: the trainer saves a checkpoint, then every process of the run ends…"):
            runner.stop(run_id, by="user")
        st.rerun()
else:
    summary = run_summary(store, run)
    if summary["state"] == "failed":
        st.error(
            f"**Failed** (exit code {summary['exit_code']}): {summary['exit_reason'] or 'see the log below'}"
        )
    elif summary["state"] == "stopped":
        st.warning(f"**Stopped** by {summary['stopped_by'] or 'a signal'}: {summary['exit_reason'] or ''}")
    else:
        st.success(f"**Succeeded** in {monitor.format_seconds(summary['duration_s'])}")
        c1, c2, c3 = st.columns(3)
        c1.metric("Final loss", "—" if summary["final_loss"] is None else f"{summary['final_loss']:.4f}")
        c2.metric("F1", "—" if summary["f1"] is None else f"{summary['f1']:.3f}")
        c3.metric("Accuracy", "—" if summary["accuracy"] is None else f"{summary['accuracy']:.3f}")
        export_form(run, "monitor")
        with st.expander("Try the model", expanded=True):
            try_panel("monitor", run_id=run_id, task=(run.get("spec") or {}).get("task"))

log_y = st.toggle("Log-scale loss", key="monitor_log_y")


@st.fragment(run_every=1.0 if active else None)
def live(run_id: str, was_active: bool, log_y: bool, slurm: bool) -> None:
    """Re-read from the store about every second while the run is active; when it ends, one full
    rerun shows the outcome and stops the refreshing. A Slurm run's ranks write relay files, and
    the scheduler has its state: refresh folds both into the store first."""
    if was_active and slurm:
        runner.refresh(store)
    run = store.get_run(run_id)
    if run is None:
        st.warning(f"Run {run_id} no longer exists (deleted on the Runs page or from the CLI).")
        return
    status = monitor.live_status(run)
    if was_active and status["state"] not in ACTIVE:
        st.rerun()
    fraction, eta = monitor.progress(status)
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("State", status["state"])
    c2.metric("Step", f"{status['step']:,} / {status['total_steps'] or '?'}")
    c3.metric("Elapsed", monitor.format_seconds(status["duration_s"]))
    c4.metric("ETA", monitor.format_seconds(eta))
    st.progress(fraction)
    if slurm:
        job = runs.slurm_job(store, run_id) or {}
        said = f"{job.get('state') or 'submitted'}" + (f" ({job['reason']})" if job.get("reason") else "")
        st.caption(f"{runs.job_label(job)} · the scheduler says {said}")
    figs = charts.figures(series_reader(str(store.path), run_id).series(), run.get("estimate"), log_y=log_y)
    st.plotly_chart(figs.pop("loss"), key="monitor_chart_loss")
    columns = st.columns(2)  # the others two by two, in charts.figures' order (no GPU chart without a GPU)
    for i, (name, fig) in enumerate(figs.items()):
        columns[i % 2].plotly_chart(fig, key=f"monitor_chart_{name}")
    with st.expander("Log (tail)", expanded=status["state"] == "failed"):
        st.code(runner.logs(run_id, max_bytes=16 * 1024) or "(no output yet)", language="text")


live(run_id, active, log_y, run.get("kind") == "slurm")
