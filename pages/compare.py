"""Compare: measured memory and speed of memory-saving techniques (baseline, ZeRO stages, offload,
LoRA, ...) side by side with the planner's estimates, as a downloadable report; and what a run
would cost on the instances of deployment/instances.yaml. A comparison is one queued run per
technique (nexa_core/comparisons.py): nothing here runs in the page's session."""

from functools import partial

import streamlit as st

from nexa_core.bench import DEFAULT_STEPS, MIN_TIMED_STEPS, SKIP_STEPS, TECHNIQUES, BenchConfig
from nexa_core.bench_report import CHARTS, figures, png_browser, table_rows, to_csv, to_html, to_png
from nexa_core.comparisons import (
    DEDUPE_S,
    comparison_state,
    default_comparison,
    list_comparisons,
    start_comparison,
)
from nexa_core.costs import (
    CPU,
    cost_view,
    device_choices,
    display_rows,
    given_throughput,
    measured_from_comparison,
)
from nexa_core.enums import Task
from nexa_core.errors import ConfigError
from nexa_core.memory import GIB
from nexa_core.models import DEFAULT_MODEL, catalogue
from nexa_core.planner import PlanConfig
from nexa_ui.auth import require_access
from nexa_ui.shared import hardware_sidebar, open_store, show_problems

require_access()  # also when Streamlit runs this file without app.py (nexa_ui/auth.py)

DEFAULT_TECHNIQUES = ["baseline", "zero2", "zero3", "zero3-offload", "lora"]

st.title("Compare memory-saving techniques")
hardware_sidebar()
open_store()  # comparisons are runs: a damaged or unusable NEXA_HOME is a message first
st.caption(
    "Each technique trains the same model on the same data for a few steps, one at a time and each in its "
    "own process (so peaks never mix), with every batch padded to the sequence length. The planner's "
    "estimate is shown beside each measurement. The techniques wait in the run queue (Runs page) while "
    "this machine's device is busy."
)
ids = list(catalogue())

# ------------------------------------------------------------------ start a comparison
# Enter in a field only takes its value: the button alone starts a comparison (once per click).
with st.form("compare_form", enter_to_submit=False):
    left, middle, right = st.columns(3)
    model = left.selectbox("Model (catalogue)", ids, index=ids.index(DEFAULT_MODEL), key="compare_model")
    task = left.selectbox("Task", Task.values(), key="compare_task")
    techniques = middle.multiselect(
        "Techniques", list(TECHNIQUES), default=DEFAULT_TECHNIQUES, key="compare_techniques"
    )
    steps = right.number_input(
        "Steps per technique", SKIP_STEPS + 1, 10_000, DEFAULT_STEPS, key="compare_steps",
        help=f"The first {SKIP_STEPS} steps are not timed (optimizer state allocation, warm-up); step-time "
        f"ratios need {MIN_TIMED_STEPS} timed steps ({SKIP_STEPS + MIN_TIMED_STEPS} steps or more), else "
        "they are marked too noisy",
    )  # fmt: skip
    batch = right.number_input("Micro-batch", 1, 65_536, 8, key="compare_batch")
    seq = right.number_input("Sequence length (every batch padded to it)", 8, 131_072, 128, key="compare_seq")
    submitted = st.form_submit_button("Run comparison", key="compare_run", type="primary")
if submitted:
    try:
        config = BenchConfig(
            model=model, task=task, techniques=tuple(techniques), steps=int(steps),
            batch_size=int(batch), seq_len=int(seq),
        )  # fmt: skip
    except ConfigError as exc:
        show_problems(exc.problems)
    else:
        with st.spinner("Queueing one run per technique…"):
            comparison_id, new = start_comparison(config, dedupe_s=DEDUPE_S)
        st.session_state["compare_id"] = comparison_id
        st.success(
            f"Queued comparison {comparison_id}: one run per technique, one after the other. It does not "
            "need this tab: close it and reopen the comparison below."
            if new
            else f"Comparison {comparison_id} with these values was started seconds ago; it was not started twice."
        )


# ------------------------------------------------------------------ reopen one
def _remember() -> None:
    st.session_state["compare_id"] = st.session_state["compare_pick"]


@st.fragment(run_every=2.0)
def _live(comparison_id: str, shown_state: str) -> None:
    """Every 2 s while the comparison runs (the refresh also moves the queue on if a run crashed);
    when it ends, one full rerun shows the outcome, and the fragment is no longer refreshed."""
    state = comparison_state(comparison_id, refresh=True)
    if state["state"] != shown_state:
        st.rerun()
    progress = state["progress"]
    st.progress(
        progress["done"] / progress["total"],
        text=f"{progress['done']} of {progress['total']} techniques measured · now: {progress['current']}, "
        f"{progress['phase']}",
    )
    st.caption(f"Run {progress['run_id']}: its log is on the Monitor page.")


def _failed(state: dict) -> None:
    st.error(f"**Comparison failed**: {state.get('reason') or 'no progress was recorded'}")


def _result(comparison_id: str, result: dict) -> None:
    cfg, env = result["config"], result["environment"]
    st.markdown(
        f"**{cfg['model']}**, task {cfg['task']}, batch {cfg['batch_size']} × sequence {cfg['seq_len']} "
        f"(padded), {cfg['steps']} steps per technique (the first {SKIP_STEPS} not timed; a step-time ratio "
        f"from fewer than {MIN_TIMED_STEPS} timed steps is marked too noisy)"
    )
    versions = ", ".join(f"{name} {version}" for name, version in env["versions"].items())
    st.caption(
        f"Hardware: {env['machine']}, {env['cpu_cores']} CPU cores, {env['host_ram_bytes'] / GIB:.1f} GiB RAM, "
        f"GPUs: {', '.join(env['gpus']) or 'none (CPU only)'} · Versions: {versions} · Date: {env['date']}"
    )
    figs = figures(result)
    chart_left, chart_right = st.columns(2)
    chart_left.plotly_chart(figs["memory"], key="compare_chart_memory")
    chart_right.plotly_chart(figs["slowdown"], key="compare_chart_slowdown")
    if png_browser() is None:
        st.caption("To save a chart as PNG, use the camera button in its toolbar (top right of the chart).")
    st.dataframe(table_rows(result), hide_index=True, width="stretch")
    st.caption(
        "Columns marked *measured* come from the runs (peak RSS of the process tree, peak GPU memory, "
        "median step time); columns marked *estimated* come from the planner's formulas."
    )
    for row in result["rows"]:
        if row["status"] != "measured":
            st.warning(f"**{row['technique']}** was not measured: {row['reason']}")
    html_col, csv_col, png_col = st.columns(3)
    html_col.download_button(
        "Download the report (HTML, opens offline)", partial(to_html, result),
        file_name=f"{comparison_id}.html", mime="text/html", on_click="ignore", key="compare_download_html",
    )  # fmt: skip
    csv_col.download_button(
        "Download the table (CSV)", partial(to_csv, result),
        file_name=f"{comparison_id}.csv", mime="text/csv", on_click="ignore", key="compare_download_csv",
    )  # fmt: skip
    if png_browser() is not None:  # rendered on click: kaleido starts a headless Chromium (seconds)
        for chart in CHARTS:
            png_col.download_button(
                f"Download the {chart} chart (PNG)", partial(to_png, result, chart),
                file_name=f"{comparison_id}-{chart}.png", mime="image/png", on_click="ignore",
                key=f"compare_download_png_{chart}",
            )  # fmt: skip


st.subheader("Comparisons")
listed = list_comparisons()
result = None
open_id = None
if not listed:
    st.info("No comparisons yet: pick the techniques above and press **Run comparison**.")
else:
    about = {
        c["id"]: f"{c['id']} · {c['state']}"
        + (f" · {c['model']}: {', '.join(c['techniques'] or [])}" if c["model"] else "")
        for c in listed
    }
    # The comparison to show survives reruns and page switches in "compare_id"; the widget's own key
    # is set from it before the widget exists, which Streamlit allows. By default: the newest one
    # running or finished, not a failed one while another runs.
    wanted = st.session_state.get("compare_id")
    st.session_state["compare_pick"] = wanted if wanted in about else default_comparison(listed)
    open_id = st.selectbox(
        "Comparison (newest first)",
        list(about),
        key="compare_pick",
        format_func=about.get,
        on_change=_remember,
    )
    st.session_state["compare_id"] = open_id
    state = comparison_state(open_id)
    if state["state"] == "running":
        _live(open_id, state["state"])
    elif state["state"] == "failed":
        _failed(state)
    else:
        result = state["result"]
        _result(open_id, result)

# ------------------------------------------------------------------ cost view
st.subheader("Cost view")
basis = result["config"] if result else {"model": model, "task": task, "batch_size": batch, "seq_len": seq}
st.caption(
    f"For {basis['model']}, task {basis['task']}, batch {basis['batch_size']} × sequence {basis['seq_len']} "
    f"({'the open comparison' if result else 'the form above'}). A throughput measured on one device type "
    "applies only to instances of that type; the others use the FLOPs model."
)
measured = measured_from_comparison(result)
cost_left, cost_middle, cost_right = st.columns(3)
tokens = cost_left.number_input(
    "Tokens to train", 1, 10**15, 100_000_000, step=10_000_000, key="compare_cost_tokens"
)
suffix = open_id if result else "none"  # a new default for each opened comparison
samples_per_s = cost_middle.number_input(
    "Measured samples/s (optional)", min_value=0.0, value=measured.samples_per_s if measured else None,
    key=f"compare_cost_samples_{suffix}", placeholder="empty: estimate from FLOPs",
    help="Defaults to the open comparison's baseline throughput, on the device its runs used",
)  # fmt: skip
devices = device_choices()
on = measured.device if measured else CPU
devices += [] if on in devices else [on]
measured_on = cost_right.selectbox(
    "Measured on", devices, index=devices.index(on), key=f"compare_cost_device_{suffix}",
    help="cpu, or the GPU as nvidia-smi names it: the throughput applies to instances of that type only",
)  # fmt: skip
try:
    costs = cost_view(
        PlanConfig(
            model=basis["model"], task=basis["task"], batch_size=int(basis["batch_size"]),
            seq_len=int(basis["seq_len"]),
        ),
        int(tokens),
        given_throughput(samples_per_s, measured_on, measured),
    )  # fmt: skip
except ConfigError as exc:
    show_problems(exc.problems)
else:
    st.table(display_rows(costs))
    st.caption(
        "Prices come from deployment/instances.yaml: example prices, each with its source and date. Edit "
        "that file for your provider and region (NEXA never fetches prices). An instance that fits no "
        "technique has no cost."
    )
