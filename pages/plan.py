"""Plan: will this model train here, with which ZeRO stage, and how much memory will it take?"""

import streamlit as st

from nexa_core import probe_jobs
from nexa_core.charts import plan_figure
from nexa_core.enums import Attention, Precision, Task
from nexa_core.errors import ConfigError
from nexa_core.memory import GIB
from nexa_core.models import DEFAULT_MODEL, catalogue
from nexa_core.planner import plan_command
from nexa_core.probe import PROBE_STEPS
from nexa_core.report import plan_rows
from nexa_core.targets import hardware_presets
from nexa_core.train_config import TrainConfig
from nexa_ui.auth import require_access
from nexa_ui.shared import (
    cached_plan,
    detected_hardware,
    hardware_sidebar,
    learned_history,
    refresh_hardware,
    show_problems,
)

require_access()  # also when Streamlit runs this file without app.py (nexa_ui/auth.py)

st.title("Plan memory before a run")
hw = detected_hardware()
ids = list(catalogue())

with st.sidebar:
    hardware_sidebar()
    st.caption(
        f"Detected: {hw.gpu_count} GPU(s)"
        + "".join(
            f" · GPU{g.index} {g.name} {g.free_bytes / GIB:.1f}/{g.total_bytes / GIB:.1f} GiB free"
            for g in hw.gpus
        )
        + f" · host RAM {hw.host_available_bytes / GIB:.1f} GiB available"
    )
    st.button("Re-detect hardware", key="plan_redetect", on_click=refresh_hardware)

left, right = st.columns(2)
with left:
    picked = st.selectbox("Model (catalogue)", ids, index=ids.index(DEFAULT_MODEL), key="plan_model")
    typed = st.text_input(
        "…or a hub id / local folder", key="plan_model_text", placeholder="org/name or /path/to/model"
    )
    task = st.selectbox("Task", Task.values(), key="plan_task")
    # No bounds on the numbers: a value out of range reaches PlanConfig, which names it (a bounded
    # field only turns red, and the plan would go on with the old value).
    num_labels = 7  # PlanConfig's default; only token/sequence classification heads use it
    if task in (Task.NER, Task.CLASSIFICATION):
        num_labels = st.number_input("Labels", value=7, step=1, key="plan_labels")
    precision = st.selectbox("Precision", ["auto", *Precision.values()], key="plan_precision")
    batch = st.number_input("Micro-batch per GPU", value=8, step=1, key="plan_batch")
    seq = st.number_input("Sequence length", value=128, step=1, key="plan_seq")
with right:
    ckpt = st.checkbox("Gradient checkpointing", key="plan_ckpt")
    lora = st.checkbox("LoRA", key="plan_lora")
    rank = st.number_input("LoRA rank", value=8, step=1, key="plan_rank", disabled=not lora)
    target = st.radio("Plan for", ["this machine", "another machine"], key="plan_target", horizontal=True)
    if target == "this machine":
        preset = None
        gpus = st.number_input("GPUs per node (0 = CPU-only)", value=hw.gpu_count, step=1, key="plan_gpus")
        gpu_gb = st.number_input(
            "GPU memory per GPU (GiB; 0 = as detected)", value=round(hw.min_gpu_free_bytes / GIB, 1),
            step=1.0, key="plan_gpu_gb", disabled=gpus == 0,
        )  # fmt: skip
        host_gb = st.number_input("Host RAM per node (GiB)", value=round(hw.host_available_bytes / GIB, 1),
                                  step=1.0, key="plan_host_gb")  # fmt: skip
    else:
        # Each preset keeps its own widget values (keys carry its name), so switching presets shows
        # that preset's numbers instead of the last one's edits.
        names = list(hardware_presets())
        preset = st.selectbox("Machine (deployment/hardware.yaml)", [*names, "custom"], key="plan_preset")
        chosen = hardware_presets().get(preset)
        gpus = st.number_input(
            "GPUs per node", value=chosen.gpus if chosen else 8, step=1, key=f"plan_gpus_{preset}"
        )
        gpu_gb = st.number_input("GPU memory per GPU (GiB)", value=float(chosen.gpu_memory_gb if chosen else 80.0),
                                 step=1.0, key=f"plan_gpu_gb_{preset}")  # fmt: skip
        check_host = st.checkbox("Check host RAM", value=chosen is not None, key=f"plan_check_host_{preset}",
                                 help="Without it the plan says the host RAM it needs but does not check it.")  # fmt: skip
        host_gb = st.number_input("Host RAM per node (GiB)", value=float(chosen.host_memory_gb if chosen else 1024.0),
                                  step=1.0, key=f"plan_host_gb_{preset}", disabled=not check_host)  # fmt: skip
        host_gb = host_gb if check_host else None
        if chosen is not None:
            st.caption(chosen.description)
    nodes = st.number_input("Nodes", value=1, step=1, key="plan_nodes")
    with st.expander("Advanced"):
        attention = st.selectbox("Attention implementation", Attention.values(), key="plan_attention",
                                 help="auto: transformers' default (SDPA where the model supports it)")  # fmt: skip
        zero3_init = st.checkbox("ZeRO-3 creates the model sharded (zero.Init)", True, key="plan_zero3_init")
        random_init = st.checkbox("Random weights (no checkpoint is read)", key="plan_random_init")
        cpu_ranks = st.number_input("Processes per node (CPU-only plans)", value=1, step=1, key="plan_cpu_ranks",
                                    disabled=gpus != 0)  # fmt: skip

fields = dict(
    model=typed.strip() or picked,
    task=task,
    num_labels=int(num_labels),
    precision=None if precision == "auto" else precision,
    batch_size=int(batch),
    seq_len=int(seq),
    gradient_checkpointing=ckpt,
    lora=lora,
    lora_rank=int(rank),
    gpus=int(gpus),
    nodes=int(nodes),
    gpu_memory_gb=float(gpu_gb) if gpus and gpu_gb != 0 else None,  # 0: as detected
    host_memory_gb=None if host_gb is None else float(host_gb),
    hardware=preset if preset in hardware_presets() else None,
    other_machine=target == "another machine",
    attention=attention,
    zero3_init=zero3_init,
    random_init=random_init,
    cpu_ranks=int(cpu_ranks) if gpus == 0 else 1,
)
try:
    plan = cached_plan(learned_history(), **fields)
except ConfigError as exc:
    st.session_state.pop("plan_choices", None)  # nothing valid to carry over to Launch
    show_problems(exc.problems)
    st.stop()

size = plan.size
c1, c2, c3 = st.columns(3)
c1.metric("Parameters (exact)", f"{size.params:,}")
c2.metric("Trainable", f"{size.trainable_params:,}")
c3.metric("Largest layer (ZeRO-3 gathers)", f"{size.largest_layer_params:,}")

rec = plan.recommendation
if rec.layout is None:
    st.warning(rec.reason)
else:
    st.success(f"**Recommended: {rec.label}**\n\n{rec.reason}")

on_gpu = plan.gpus_per_node > 0
fig = plan_figure(plan)
st.plotly_chart(fig, width="stretch")
st.dataframe(plan_rows(plan), hide_index=True, width="stretch")
if plan.learned_from:
    st.caption(
        f"'from your runs': the formula's estimate × the median measured/estimated of your "
        f"{plan.learned_from['runs']} finished runs on this machine, with their 10–90 % band (docs/MEMORY.md)."
    )
st.caption(
    "Host totals are per node: offloaded states, each rank's process baseline and the weights' load copy"
    + (
        " (not checked against a budget: another machine, no host RAM given)."
        if plan.host_budget_bytes is None
        else "."
    )
)
if rec.layout is not None:
    chosen_estimate = next(e for e in plan.estimates if e.layout == rec.layout)
    st.caption(f"Loading the weights ({rec.label}): {chosen_estimate.load_path}.")
st.code(plan_command(plan.config), language="bash")
for note in plan.notes:
    st.caption(note)

# What the Launch page carries over: the user's choices and the recommended layout.
recommended = {k: v for k, v in rec.to_dict().items() if k != "reason"}
st.session_state["plan_choices"] = {**fields, **recommended}


# ------------------------------------------------------------------ probe: measure instead of estimate
def _probe_table(probes: list[dict]) -> None:
    """One row per probe: the measured peaks beside the planner's estimates."""
    as_bytes = {"format": "bytes"}
    st.dataframe(
        probes,
        hide_index=True,
        width="stretch",
        column_order=[
            "batch_size", "fits", "peak_host_rss_bytes", "estimate_host_bytes", "peak_gpu_bytes",
            "estimate_gpu_bytes", "state", "reason", "run_id",
        ],
        column_config={
            "batch_size": "batch",
            "fits": "fits the budget",
            "peak_host_rss_bytes": st.column_config.NumberColumn("peak host RSS (measured)", **as_bytes),
            "estimate_host_bytes": st.column_config.NumberColumn("host (estimated)", **as_bytes),
            "peak_gpu_bytes": st.column_config.NumberColumn("peak GPU (measured)", **as_bytes),
            "estimate_gpu_bytes": st.column_config.NumberColumn("GPU per device (estimated)", **as_bytes),
            "run_id": "run (Runs page)",
        },
    )  # fmt: skip


with st.expander("Probe this plan"):
    # Probes run here, on this machine: GPU memory is the budget only when the plan uses GPUs and
    # this machine has one; otherwise the probe trains on the CPU and host RAM is the budget.
    probe_on_gpu = on_gpu and bool(hw.gpus)
    st.caption(
        f"Runs {PROBE_STEPS} real training steps of this plan on this machine "
        f"({'GPU' if probe_on_gpu else 'CPU only'}), every batch padded to the sequence length, so the "
        "measured peak is the worst case. Each probe is its own process: running out of memory is an "
        "answer, not a crash. The recommended ZeRO layout is used (no DeepSpeed when ZeRO-0 is "
        "recommended); a model without weights on this machine is probed with random weights (same memory)."
    )
    budget_col, max_col = st.columns(2)
    budget_gb = budget_col.number_input(
        f"Budget ({'GPU memory per GPU' if probe_on_gpu else 'host RAM'}, GiB)", 0.0, 65_536.0,
        # probes run here: this machine's RAM when the plan checks none (a plan for another machine)
        round((plan.gpu_budget_bytes if probe_on_gpu else plan.host_budget_bytes or hw.host_available_bytes) / GIB, 1),
        key="plan_probe_budget",
    )  # fmt: skip
    max_batch = max_col.number_input("Largest batch to try", 1, 65_536, 64, key="plan_probe_max_batch")
    one_col, find_col = st.columns(2)
    probe_one = one_col.button("Probe at the longest sequence", key="plan_probe_one")
    probe_find = find_col.button(
        "Find batch size", key="plan_probe_find", help="Doubles the batch from 1 until a probe does not fit, then bisects"
    )  # fmt: skip
    if probe_one or probe_find:
        zero = rec.layout is not None and rec.layout.zero_stage > 0
        layout = (
            {k: recommended[k] for k in ("zero_stage", "offload_optimizer", "offload_param")} if zero else {}
        )
        try:
            probe_config = TrainConfig(
                model=fields["model"], task=task,
                num_labels=int(num_labels) if task in (Task.NER, Task.CLASSIFICATION) else None,
                precision=fields["precision"], batch_size=int(batch), seq_len=int(seq), lora=lora,
                lora_rank=int(rank), gradient_checkpointing=ckpt, deepspeed="on" if zero else "off", **layout,
            )  # fmt: skip
        except ConfigError as exc:
            show_problems(exc.problems)
            st.stop()
        # in its own process: a search of several probes can take an hour (nexa_core/probe_jobs.py)
        st.session_state["plan_probe_job"] = probe_jobs.start(
            probe_config, int(budget_gb * GIB), probe_on_gpu, find=probe_find, max_batch=int(max_batch)
        )


@st.fragment(run_every=2)
def _probe_progress() -> None:
    """The background probe job of this session, read from its file every 2 s."""
    job = probe_jobs.state(st.session_state["plan_probe_job"])
    if job is None:
        return
    config, budget = job["config"], job["budget_bytes"] / GIB
    for landed in job["probes"]:
        st.caption(f"Tried batch {landed['batch_size']}: {'fits' if landed['fits'] else 'does not fit'}")
    if job["state"] == "running":
        what = "the largest batch that fits" if job["find"] else f"batch {config['batch_size']}"
        st.info(f"Probing {what} at sequence length {config['seq_len']} in the background "
                f"({PROBE_STEPS} real steps a probe; this page can be closed).")  # fmt: skip
    elif job["error"]:
        st.error(f"The probe stopped: a probe failed for another reason than memory ({job['error']}).")
    elif not job["find"]:
        fits = job["result"]["fits"]
        (st.success if fits else st.error)(
            f"Batch {config['batch_size']} at sequence length {config['seq_len']} "
            f"{'fits' if fits else 'does not fit'} the {budget:.1f} GiB budget"
        )
    elif job["result"]["batch_size"] is None:
        st.error(f"Not even batch 1 fits {budget:.1f} GiB at sequence length {config['seq_len']}.")
    else:
        st.success(
            f"Largest batch that fits {budget:.1f} GiB at sequence length {config['seq_len']}: "
            f"**{job['result']['batch_size']}**"
        )
    if job["probes"]:
        _probe_table(job["probes"])


if "plan_probe_job" in st.session_state:
    _probe_progress()
