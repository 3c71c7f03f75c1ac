"""Launch: a training run from the Plan page's choices, with the exact command, the DeepSpeed config
and the memory estimate shown before anything starts."""

import streamlit as st

from nexa_core import datasets, paths, presets, report, runner, slurm_jobs
from nexa_core.enums import DeepSpeedMode, Offload, Precision, Task
from nexa_core.errors import ConfigError
from nexa_core.launch import LaunchMode, RunSpec
from nexa_core.memory import GIB
from nexa_core.models import catalogue
from nexa_core.scaling import global_batch_warning
from nexa_core.slurm import DEFAULT_TIME, Backend, SlurmRequest, request_problems
from nexa_core.train_config import TrainConfig
from nexa_ui.auth import require_access
from nexa_ui.launch_form import SOURCES, extra_fields, form_state, spec_from_plan, uploaded_name, uploads
from nexa_ui.launch_preview import fit_confirmed, show_command, show_deepspeed, show_nodes
from nexa_ui.shared import (
    cached_estimate,
    check_dataset,
    detected_hardware,
    hardware_sidebar,
    open_store,
    save_upload,
    show_problems,
)

require_access()  # also when Streamlit runs this file without app.py (nexa_ui/auth.py)

st.title("Launch a training run")
hardware_sidebar()
open_store()  # a damaged or unusable NEXA_HOME is a message here, before a form that could not launch
hw = detected_hardware()
ids = list(catalogue())
gpu_ids = [g.index for g in hw.gpus]


def _load(spec: RunSpec, label: str) -> None:
    """Fill the form with a saved configuration (before the widgets are drawn)."""
    state, notes = form_state(spec, ids, gpu_ids)
    st.session_state.update(state)
    st.session_state["launch_extra"] = extra_fields(spec.train)
    st.session_state["launch_loaded"] = {"label": label, "notes": notes}


def _load_preset() -> None:  # a button callback: it runs before the page is drawn again
    name = st.session_state.get("launch_preset_pick")
    try:
        _load(presets.load(name), f"preset {name!r}")
    except ConfigError as exc:
        st.session_state["launch_load_problems"] = exc.problems


# Arriving from another page (Streamlit has dropped this page's widget state): start from the Plan
# page's choices, or from the run the Runs page asked to clone.
plan = st.session_state.get("plan_choices") or {}
planned = form_state(spec_from_plan(plan, gpu_ids), ids, gpu_ids)[0]
if "launch_task" not in st.session_state:
    for stale in ("launch_extra", "launch_loaded"):
        st.session_state.pop(stale, None)
    st.session_state.update(planned)
    clone = st.session_state.pop("launch_clone", None)
    if clone:
        try:
            _load(presets.of_run(paths.run_dir(clone), clone), f"run {clone}")
        except ConfigError as exc:
            st.session_state["launch_load_problems"] = exc.problems
    elif plan:
        st.session_state["launch_loaded"] = {
            "label": "the Plan page's choices and recommended layout",
            "notes": [],
        }
else:
    # Part of the form's state can be gone: in a browser, a page switch that races a rerun keeps only
    # the widgets the frontend still showed. A dropped field starts from the plan again, never from a
    # number input's 0 (which failed validation as "nodes ... got 0"); kept fields keep their values.
    for key, value in planned.items():
        st.session_state.setdefault(key, value)

with st.expander("Presets: load a saved configuration", expanded=False):
    try:
        saved = presets.names()
    except ConfigError as exc:  # e.g. NEXA_HOME/presets is a file
        saved = []
        show_problems(exc.problems)
    p1, p2 = st.columns([4, 1], vertical_alignment="bottom")
    p1.selectbox("Saved presets", saved, index=None, key="launch_preset_pick",
                 placeholder="pick one" if saved else "none saved yet: save one below the form")  # fmt: skip
    p2.button("Load", key="launch_preset_load", on_click=_load_preset,
              disabled=not st.session_state.get("launch_preset_pick"))  # fmt: skip
if "launch_load_problems" in st.session_state:
    show_problems(st.session_state.pop("launch_load_problems"))
loaded = st.session_state.get("launch_loaded")
if loaded:
    st.caption(f"Starting from {loaded['label']}.")
    for note in loaded["notes"]:
        st.warning(note)
extra = st.session_state.get("launch_extra") or {}
if extra:
    st.caption("Also kept from it (not on this form): " + ", ".join(f"{k}={v}" for k, v in extra.items()))

left, middle, right = st.columns(3)
with left:
    st.subheader("Model and data")
    picked = st.selectbox("Model (catalogue)", ids, key="launch_model")
    typed = st.text_input("…or a hub id / local folder", key="launch_model_text",
                          placeholder="org/name or /path/to/model")  # fmt: skip
    task = st.selectbox("Task", Task.values(), key="launch_task")
    source = st.radio("Dataset", SOURCES, key="launch_source", horizontal=True)
    dataset, data_problems = None, []
    if source == SOURCES[0]:
        samples = datasets.sample_names(task)
        sample = (
            st.radio("Sample", ["default", *samples], key="launch_sample", horizontal=True,
                     format_func=lambda s: "plain text" if s == "default" else s.removeprefix("sample:"))
            if samples else "default"
        )  # fmt: skip
        dataset = None if sample == "default" else sample
        shown = datasets.bundled_paths(task, None if dataset is None else dataset.removeprefix("sample:"))[0]
        st.caption(f"{shown.name} (and its validation split), shipped with NEXA")
    elif source == SOURCES[1]:
        st.caption(f"Each record of a {task} dataset needs {datasets.fields_help(task)}.")
        upload = st.file_uploader("CSV or JSONL (one record a line)", type=["csv", "jsonl", "json"],
                                  max_upload_size=datasets.LIMIT_BYTES // 2**20, key="launch_upload")  # fmt: skip
        if upload is None:
            data_problems.append("dataset: upload a CSV or JSONL file, or pick the bundled sample")
        elif upload.size > datasets.LIMIT_BYTES:
            data_problems.append(
                f"dataset: {upload.name} is larger than the {datasets.LIMIT_BYTES} byte limit"
            )
        else:
            saved_file = save_upload(upload.name, upload.getvalue())
            count, data_problems = check_dataset(str(saved_file), task, uploaded_name(upload.name))
            if not data_problems:
                dataset = str(saved_file)
                st.caption(f"{count:,} valid records, saved as {saved_file}")
    else:
        earlier = uploads()
        chosen = st.selectbox("Uploaded before (newest first)", earlier, key="launch_dataset_file",
                              format_func=uploaded_name)  # fmt: skip
        st.caption(f"Each record of a {task} dataset needs {datasets.fields_help(task)}.")
        if chosen is None:
            data_problems.append("dataset: nothing uploaded yet; upload a file or pick the bundled sample")
        else:
            count, data_problems = check_dataset(chosen, task, uploaded_name(chosen))
            if not data_problems:
                dataset = chosen
                st.caption(f"{count:,} valid records")
    length = st.radio("Train for", ["epochs", "max steps"], key="launch_length", horizontal=True)
    if length == "epochs":
        epochs, max_steps = st.number_input("Epochs", key="launch_epochs", step=1), None
    else:
        epochs, max_steps = 1, st.number_input("Max steps", key="launch_max_steps", step=1)
with middle:
    st.subheader("Optimisation")
    # No bounds on these fields: a value out of range reaches TrainConfig, which names it with the
    # others (a bounded field only turns red and keeps its old value, which the run would then use).
    lr = st.number_input("Learning rate", step=1e-5, format="%.2e", key="launch_lr")
    batch = st.number_input("Micro-batch per GPU", key="launch_batch", step=1)
    seq = st.number_input("Sequence length", key="launch_seq", step=1)
    precision = st.selectbox("Precision", ["auto", *Precision.values()], key="launch_precision")
    lora = st.checkbox("LoRA", key="launch_lora")
    rank = st.number_input("LoRA rank", key="launch_rank", step=1, disabled=not lora)
    ckpt = st.checkbox("Gradient checkpointing", key="launch_ckpt")
    eval_every = st.number_input("Evaluate every N steps (0: at the end only)", key="launch_eval_every", step=1,
                                 help="validation metrics during training, charted on Monitor and Runs")  # fmt: skip
    name = st.text_input(
        "Run name (optional)", key="launch_name", placeholder="letters, digits, . _ - and spaces"
    )
with right:
    st.subheader("DeepSpeed and devices")
    deepspeed = st.selectbox("DeepSpeed", DeepSpeedMode.values(), key="launch_deepspeed",
                             help="auto: on with a GPU, off on a CPU-only machine")  # fmt: skip
    # Always a real value (nexa_ui/launch_form.py fills the layout the run would use), so the form,
    # the preview and the saved run_config.json agree.
    stage = st.selectbox("ZeRO stage", [0, 1, 2, 3], key="launch_stage", format_func=lambda s: f"ZeRO-{s}")
    offload_optimizer = st.selectbox("Offload optimizer states", Offload.values(), key="launch_off_opt")
    offload_param = st.selectbox("Offload parameters", Offload.values(), key="launch_off_param")
    backend = st.radio("Run on", Backend.values(), key="launch_backend", horizontal=True,
                       format_func={"local": "this machine", "slurm": "a Slurm cluster"}.get)  # fmt: skip
    on_slurm = backend == Backend.SLURM.value
    mode = st.selectbox("Launch with", LaunchMode.values(), key="launch_mode", disabled=on_slurm,
                        help="on Slurm, srun starts every rank")  # fmt: skip
    if hw.gpus and not on_slurm:
        about = {g.index: f"GPU {g.index} · {g.name} · {g.free_bytes / GIB:.1f} GiB free" for g in hw.gpus}
        gpus = st.multiselect("GPUs (physical ids, as nvidia-smi shows them)", gpu_ids, key="launch_gpus",
                              format_func=about.get)  # fmt: skip
    else:
        gpus = []
        if not on_slurm:
            st.caption("No GPU detected: this is a CPU-only machine, so the run trains on the CPU.")
    nproc = st.number_input("Processes (ranks)" + (" per CPU node" if on_slurm else ""), key="launch_nproc", step=1,
                            help="python mode runs one; torchrun, deepspeed and accelerate start several")  # fmt: skip

request = None
if on_slurm:  # the cluster places the ranks: a job request instead of this machine's nodes
    with st.expander("Slurm job (sbatch)", expanded=True):
        st.caption("NEXA writes a batch script into the run folder and submits it with sbatch; srun starts "
                   "every rank. NEXA_HOME must be on a file system all nodes share (docs/SCALING.md, Slurm).")  # fmt: skip
        s1, s2, s3, s4 = st.columns(4)
        partition = s1.text_input("Partition", key="launch_partition", placeholder="sinfo -s lists them")
        # the Plan page's GPUs and nodes, whose estimate also sizes the memory request
        job_nodes = s2.number_input(
            "Nodes", value=int(plan.get("nodes") or 1), step=1, key="launch_job_nodes"
        )
        gpus_per_node = s3.number_input("GPUs per node (0: CPU)", value=int(plan.get("gpus") or 0), step=1,
                                        key="launch_gpus_per_node")  # fmt: skip
        time_limit = s4.text_input("Time limit ([D-]HH:MM:SS)", DEFAULT_TIME, key="launch_time")
        s5, s6, s7 = st.columns(3)
        account = s5.text_input("Account (optional)", key="launch_account")
        qos = s6.text_input("QOS (optional)", key="launch_qos")
        mem = s7.text_input("Memory per node", key="launch_mem", placeholder="empty: the estimate + 25 %")
    nodes, node_rank, master_addr, master_port, hosts_text, include, exclude, target_batch, ssh = (
        1, 0, "", 0, "", "", "", 0, False)  # fmt: skip
else:
    with st.expander("Nodes (several machines)", expanded=False):
        st.caption("One machine: leave as is. Several: the panel starts this machine's node and shows the "
                   "command for every other node (docs/SCALING.md).")  # fmt: skip
        n1, n2, n3, n4 = st.columns(4)
        nodes = n1.number_input("Nodes", key="launch_nodes", step=1)
        node_rank = n2.number_input("This machine is node", key="launch_node_rank", step=1)
        master_addr = n3.text_input("Master address (node 0)", key="launch_master_addr",
                                    placeholder="empty: 127.0.0.1, or the first host")  # fmt: skip
        master_port = n4.number_input("Master port (0: free port)", key="launch_master_port", step=1)
        hosts_text = st.text_area("Hosts, one per line: name slots=N (the DeepSpeed hostfile)", key="launch_hosts",
                                  placeholder="worker-0 slots=8\nworker-1 slots=8")  # fmt: skip
        f1, f2, f3 = st.columns(3)
        include = f1.text_input(
            "deepspeed --include", key="launch_include", placeholder="worker-0@worker-1:0,2"
        )
        exclude = f2.text_input("deepspeed --exclude", key="launch_exclude", placeholder="worker-1:0")
        target_batch = f3.number_input(
            "Global batch wanted (0: no target)", value=0, step=1, key="launch_global_batch"
        )
        ssh = st.checkbox(
            "Start every node from here with the DeepSpeed launcher's ssh/pdsh", key="launch_ssh"
        )

problems = list(data_problems)
train = None
try:
    train = TrainConfig(
        model=typed.strip() or picked, task=task, dataset=dataset, deepspeed=deepspeed, zero_stage=stage,
        offload_optimizer=offload_optimizer, offload_param=offload_param,
        precision=None if precision == "auto" else precision, batch_size=int(batch), seq_len=int(seq),
        lr=float(lr), epochs=int(epochs), max_steps=None if max_steps is None else int(max_steps), lora=lora,
        lora_rank=int(rank), gradient_checkpointing=ckpt, name=name.strip() or None,
        eval_every=int(eval_every) or None, **extra,
    )  # fmt: skip
except ConfigError as exc:
    problems += exc.problems
spec = None
try:  # checked even when the training config is wrong, so every problem shows at once
    mode = LaunchMode.TORCHRUN.value if on_slurm else mode  # on Slurm: nproc ranks per CPU node
    spec = RunSpec(train or TrainConfig(), mode, int(nproc), list(gpus), int(master_port) or None,
                   nodes=int(nodes), node_rank=int(node_rank), master_addr=master_addr.strip() or None,
                   hosts=[hosts_text] if hosts_text.strip() else [], include=include.strip(),
                   exclude=exclude.strip(), ssh_launcher=ssh)  # fmt: skip
except ConfigError as exc:
    problems += exc.problems
if on_slurm:
    try:
        request = SlurmRequest(partition.strip(), int(job_nodes), int(gpus_per_node), time_limit.strip(),
                               account.strip() or None, qos.strip() or None, mem.strip() or None)  # fmt: skip
    except ConfigError as exc:
        problems += exc.problems
    problems += request_problems(spec, request) if spec is not None else []
if problems:
    show_problems(problems)
    st.stop()

has_gpu = bool(request.gpus_per_node) if request else bool(hw.gpus)
estimate = cached_estimate(spec, request.gpus_per_node, request.nodes) if request else cached_estimate(spec)
show_command(spec, request, estimate)
show_nodes(spec, has_gpu=bool(hw.gpus))
warning = global_batch_warning(spec, int(target_batch))
if warning:
    st.warning(warning)
show_deepspeed(spec, has_gpu)

if estimate is None:
    st.warning("No memory estimate for this configuration (the model could not be sized offline).")
else:
    for column, (label, value, why) in zip(st.columns(3), report.estimate_metrics(estimate), strict=True):
        column.metric(label, value, help=why)
    if report.data_text(estimate):
        st.caption(report.data_text(estimate))

with st.expander("Save this configuration as a preset", expanded=False):
    s1, s2 = st.columns([4, 1], vertical_alignment="bottom")
    preset_name = s1.text_input("Preset name", key="launch_preset_name",
                                placeholder="letters, digits, spaces, . _ - (saving again replaces it)")  # fmt: skip
    if s2.button("Save preset", key="launch_preset_save"):
        try:
            where = presets.save(preset_name.strip(), spec)
        except ConfigError as exc:
            show_problems(exc.problems)
        else:
            st.success(f"Saved preset {preset_name.strip()!r} ({where})")

confirmed = fit_confirmed(estimate, hw, spec, request)
if st.button(
    "Submit to Slurm" if request else "Launch", type="primary", key="launch_go", disabled=not confirmed
):
    try:
        run_id = (
            slurm_jobs.submit(spec, request, estimate)
            if request
            else runner.launch(spec, estimate=estimate, queue=True)  # a busy device: it waits in the queue
        )
    except ConfigError as exc:
        show_problems(exc.problems)
    else:
        st.session_state["monitor_run"] = run_id
        st.switch_page("pages/monitor.py")
