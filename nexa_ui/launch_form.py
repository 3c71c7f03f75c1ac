"""The Launch page's fields for a saved configuration (a preset, or a past run to clone): which widget
key takes which value. Pure, so it is tested without a browser; the page writes the result into
st.session_state before its widgets are drawn, which is when Streamlit lets a page set them."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from nexa_core import paths
from nexa_core.errors import ConfigError
from nexa_core.launch import RunSpec
from nexa_core.models import DEFAULT_MODEL
from nexa_core.train_config import TrainConfig

SOURCES = ["bundled sample", "upload a file", "a file uploaded before"]
# TrainConfig fields with a widget on the page; the others travel unseen (seed, save_every, ...).
SHOWN = {
    "model", "task", "dataset", "epochs", "max_steps", "lr", "batch_size", "seq_len", "precision", "lora",
    "lora_rank", "gradient_checkpointing", "name", "deepspeed", "zero_stage", "offload_optimizer", "offload_param",
    "eval_every",
}  # fmt: skip


# What the Plan page carries over (its choices and the recommended layout); the rest keeps defaults.
_FROM_PLAN = (
    "model task precision batch_size seq_len gradient_checkpointing lora lora_rank zero_stage "
    "offload_optimizer offload_param"
).split()


def spec_from_plan(plan: dict[str, Any], gpu_ids: list[int]) -> RunSpec:
    """The run the Plan page's choices describe, on the planned number of GPUs (defaults without a
    plan, or when the choices do not make a valid run)."""
    try:
        train = TrainConfig(**{k: plan[k] for k in _FROM_PLAN if plan.get(k) is not None})
    except ConfigError:
        train = TrainConfig()
    return RunSpec(train, gpus=gpu_ids[: int(plan.get("gpus") or 1)])


def uploads() -> list[str]:
    """Datasets uploaded before (NEXA_HOME/uploads), newest first, to train on again."""
    folder = paths.home_folder("uploads", create=False)
    files = (
        [p for p in folder.glob("*") if p.is_file() and not p.name.endswith(".part")]
        if folder.is_dir()
        else []
    )
    return [str(p) for p in sorted(files, key=lambda p: p.stat().st_mtime, reverse=True)]


def uploaded_name(path: str) -> str:
    """The name the user gave an upload: its stored name without the content-hash prefix that
    nexa_ui.shared.save_upload adds (``3f2a9c1b7e0d-data.jsonl`` -> ``data.jsonl``)."""
    name = path.replace("\\", "/").rsplit("/", 1)[-1]
    prefix, _, rest = name.partition("-")
    return rest if rest and len(prefix) == 12 and all(c in "0123456789abcdef" for c in prefix) else name


def extra_fields(train: TrainConfig) -> dict[str, Any]:
    """The fields the page does not show, where they differ from the defaults: kept as they were."""
    default = TrainConfig()
    hidden = [f.name for f in fields(TrainConfig) if f.name not in SHOWN]
    return {k: getattr(train, k) for k in hidden if getattr(train, k) != getattr(default, k)}


def _layout_state(train: TrainConfig, has_gpu: bool) -> dict[str, Any]:
    """The ZeRO stage and offload selects always hold a real value: a configuration that leaves them
    to the DeepSpeed config file (None) shows the layout the run would train with here (ZeRO-0
    without offload when DeepSpeed is off), so the form and the saved run say the same."""
    chosen = (train.zero_stage, train.offload_optimizer, train.offload_param)
    if any(v is not None for v in chosen):  # the explicit choices, the file completing them
        stage, off_opt, off_param = train.deepspeed_settings().layout()
    else:
        stage, off_opt, off_param = train.layout(has_gpu=has_gpu)
    return {"launch_stage": stage, "launch_off_opt": str(off_opt), "launch_off_param": str(off_param)}


def form_state(
    spec: RunSpec, catalogue_ids: list[str], gpu_ids: list[int]
) -> tuple[dict[str, Any], list[str]]:
    """(widget key -> value, notes for the user) that put ``spec`` into the Launch page's fields."""
    t, notes = spec.train, []
    in_catalogue = t.model in catalogue_ids
    state: dict[str, Any] = {
        "launch_model_text": "" if in_catalogue else t.model,
        "launch_task": str(t.task),
        "launch_length": "max steps" if t.max_steps is not None else "epochs",
        "launch_lr": float(t.lr),
        "launch_batch": t.batch_size,
        "launch_seq": t.seq_len,
        "launch_precision": str(t.precision) if t.precision is not None else "auto",
        "launch_lora": t.lora,
        "launch_rank": t.lora_rank,
        "launch_ckpt": t.gradient_checkpointing,
        "launch_eval_every": t.eval_every or 0,
        "launch_name": t.name or "",
        "launch_deepspeed": str(t.deepspeed),
        **_layout_state(t, has_gpu=bool(gpu_ids)),
        "launch_mode": str(spec.mode),
        "launch_nproc": spec.nproc,
        "launch_nodes": spec.nodes,
        "launch_node_rank": spec.node_rank,
        "launch_master_addr": spec.master_addr or "",
        "launch_master_port": spec.master_port or 0,
        "launch_hosts": "\n".join(f"{h.name} slots={h.slots}" for h in spec.hosts),
        "launch_include": spec.include,
        "launch_exclude": spec.exclude,
        "launch_ssh": spec.ssh_launcher,
    }
    state["launch_model"] = t.model if in_catalogue else DEFAULT_MODEL
    state["launch_epochs"] = t.epochs
    state["launch_max_steps"] = t.max_steps if t.max_steps is not None else 100
    known = uploads()
    if t.dataset is None:
        state["launch_source"] = SOURCES[0]
    elif t.dataset in known:
        state["launch_source"], state["launch_dataset_file"] = SOURCES[2], t.dataset
    else:  # a path given on the command line: the browser only reads files inside NEXA_HOME
        state["launch_source"] = SOURCES[0]
        notes.append(
            f"dataset {t.dataset} is not among the uploaded files: upload it, or train on the bundled sample"
        )
    usable = [g for g in spec.gpus if g in gpu_ids]
    if usable != spec.gpus:
        notes.append(f"GPUs {spec.gpus} were chosen; this machine has {gpu_ids or 'none'}")
    if gpu_ids:
        state["launch_gpus"] = usable
    return state, notes
