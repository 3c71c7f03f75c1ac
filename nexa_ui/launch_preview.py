"""The Launch page's "What will run" section: the `nexa launch` command to copy, the process the run
manager starts (or the Slurm batch script), each node's command, the DeepSpeed config when DeepSpeed
is used, and the memory check that asks for a confirmation before an estimate this machine cannot
hold. Rendering only: every figure and command comes from nexa_core."""

from __future__ import annotations

from typing import Any

import streamlit as st

from nexa_core import paths, runs, scaling, slurm_jobs
from nexa_core.hardware import Hardware
from nexa_core.launch import RunSpec, build_launch, command_text, launch_command
from nexa_core.slurm import SlurmRequest

PREVIEW_ID = "preview"  # the process preview names this run id; the real one is assigned at launch


def show_command(spec: RunSpec, request: SlurmRequest | None, estimate: dict[str, Any] | None) -> None:
    """The `nexa launch` equivalent (runnable as shown), then what the run manager starts with it."""
    st.subheader("What will run")
    st.code(launch_command(spec, request), language="bash", wrap_lines=True)
    st.caption(
        "The same run from a terminal (`nexa launch`, in the environment the panel runs in): copy and run "
        "it, or press the button below. The run id, its folder and a free master port are assigned when "
        "it starts."
    )
    if request:
        with st.expander("The batch script (written to the run folder, submitted with sbatch --parsable)"):
            st.code(slurm_jobs.preview(spec, request, estimate), language="bash")
            st.caption(f"Shown with run id {PREVIEW_ID!r}; Monitor and Runs then show the job id, partition "
                       "and nodes.")  # fmt: skip
        return
    argv, env = build_launch(spec, PREVIEW_ID, paths.run_dir(PREVIEW_ID))
    with st.expander("The process the run manager starts (in the run's own folder)"):
        st.code(command_text(argv), language="bash")
        st.caption(
            f"Environment: {', '.join(f'{k}={v}' for k, v in env.items())}. Shown with run id {PREVIEW_ID!r}: "
            "at launch the run's files (run_config.json, deepspeed_config.json, accelerate_config.yaml) are "
            "written to its own folder, which this command names."
        )


def show_nodes(spec: RunSpec, has_gpu: bool) -> None:
    """Several machines: the command for each node and the files written for them."""
    if spec.nodes <= 1 and not spec.hosts:
        return
    preview = scaling.launch_preview(spec, PREVIEW_ID, paths.run_dir(PREVIEW_ID), has_gpu=has_gpu)
    for node in preview["nodes"]:
        st.markdown(f"**Node {node.node_rank}** ({node.host}): " + (
            "started by the panel" if node.by_panel else "run this on that machine"))  # fmt: skip
        st.code(node.text(), language="bash")
    for name, text in (
        ("hostfile", preview["hostfile"]),
        ("accelerate_config.yaml", preview["accelerate_config"]),
    ):
        if text:
            with st.expander(f"{name} (written to the run folder)"):
                st.code(text, language="yaml" if name.endswith("yaml") else "text")


def show_deepspeed(spec: RunSpec, has_gpu: bool) -> None:
    """The DeepSpeed config the run uses, or that it uses none (DeepSpeed off)."""
    settings = spec.train.deepspeed_settings()
    if not settings.deepspeed_enabled(has_gpu=has_gpu):
        why = "auto turns it off without a GPU" if str(spec.train.deepspeed) == "auto" else "set to off"
        st.caption(
            f"DeepSpeed is off for this run ({why}): it trains with Accelerate alone, so no DeepSpeed "
            "config, ZeRO stage or offload is used."
        )
        return
    with st.expander("DeepSpeed config (deepspeed_config.json)", expanded=False):
        st.json(settings.deepspeed_config(settings.resolved_precision(has_gpu=has_gpu)))


def fit_confirmed(
    estimate: dict[str, Any] | None, hw: Hardware, spec: RunSpec, request: SlurmRequest | None
) -> bool:
    """Warn when the estimate exceeds what this machine has free; launching then needs a tick. A Slurm
    job runs on the cluster's nodes, whose memory the batch script requests."""
    warnings = [] if request else runs.fit_warnings(estimate, hw, spec.gpus)
    for warning in warnings:
        st.warning(warning)
    if not warnings:
        return True
    return st.checkbox("Launch anyway: I expect it to run out of memory, or the estimate to be wrong",
                       key="launch_fit_confirm")  # fmt: skip
