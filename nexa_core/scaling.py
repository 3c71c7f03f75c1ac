"""Scale-out on top of a validated RunSpec, all pure: the multi-machine Accelerate config, the
command each node runs, the launcher files of a run and the global-batch check. The formats follow
Accelerate's ``ClusterConfig``; tests/test_scaling.py checks them. Hosts and the hostfile are in
``nexa_core.hosts`` (re-exported here)."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nexa_core.hosts import (  # noqa: F401 (re-exported: scaling's public names before the split)
    HOST_RULE,
    HOSTFILE,
    MAX_SLOTS,
    Host,
    active_resources,
    address_problem,
    host_problem,
    hostfile_text,
    hosts_problems,
    parse_hosts,
)
from nexa_core.launch import ACCELERATE_FILE, DEEPSPEED_FILE, LaunchMode, RunSpec, build_launch


def accelerate_config(
    spec: RunSpec, run_dir: Path, template: dict[str, Any], has_gpu: bool
) -> dict[str, Any]:
    """The run's Accelerate config from the deployment template: process and machine counts, the
    rendezvous address, and for DeepSpeed the multi-node launcher (``pdsh`` with the run's hostfile
    when the panel starts the other nodes over ssh, ``standard`` (torchrun on each node) otherwise)."""
    config = copy.deepcopy(template)
    deepspeed = spec.accelerate_uses_deepspeed
    config["distributed_type"] = "DEEPSPEED" if deepspeed else ("MULTI_GPU" if has_gpu else "MULTI_CPU")
    config["num_processes"] = spec.world_size
    config["num_machines"] = spec.nodes
    config["machine_rank"] = spec.node_rank
    config["use_cpu"] = not has_gpu
    if spec.gpus:
        config["gpu_ids"] = ",".join(map(str, spec.gpus))
    if spec.master_port is not None:
        config["main_process_port"] = spec.master_port
    if spec.nodes > 1:
        config["main_process_ip"] = spec.master_address
        config["same_network"] = True  # static rendezvous on master_addr:master_port
        config["rdzv_backend"] = "static"
    if not deepspeed:
        config.pop("deepspeed_config", None)
        return config
    ds = config.setdefault("deepspeed_config", {})
    ds["deepspeed_config_file"] = str(run_dir / DEEPSPEED_FILE)
    # accelerate launch passes this on as ACCELERATE_DEEPSPEED_ZERO3_INIT (DeepSpeedSettings.from_env)
    ds["zero3_init_flag"] = bool(spec.train.zero3_init)
    if spec.nodes > 1:
        ds["deepspeed_multinode_launcher"] = "pdsh" if spec.ssh_launcher else "standard"
        if spec.ssh_launcher:
            ds["deepspeed_hostfile"] = str(run_dir / HOSTFILE)
            if spec.include:
                ds["deepspeed_inclusion_filter"] = spec.include
            if spec.exclude:
                ds["deepspeed_exclusion_filter"] = spec.exclude
    return config


@dataclass(frozen=True)
class NodeCommand:
    """What one node runs. ``by_panel``: the panel starts it (this machine, or every node through the
    DeepSpeed launcher's ssh/pdsh); otherwise the user runs it on ``host``."""

    node_rank: int
    host: str
    argv: list[str]
    env: dict[str, str]
    by_panel: bool

    def text(self) -> str:
        """A shell line for the user: the environment, then the command (display only)."""
        import shlex

        shown = {k: v for k, v in self.env.items() if k != "NEXA_HOME"}
        prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in shown.items())
        return f"{prefix} {shlex.join(self.argv)}".strip()


def node_commands(spec: RunSpec, run_id: str, run_dir: Path, python: str | None = None) -> list[NodeCommand]:
    """One command per node (only node 0's when the DeepSpeed launcher starts the others over ssh)."""
    import sys
    from dataclasses import replace

    python = python or sys.executable
    names = [h.name for h in spec.hosts]
    if spec.ssh_launcher:
        argv, env = build_launch(spec, run_id, run_dir, python)
        return [NodeCommand(0, names[0] if names else "localhost", argv, env, True)]
    out = []
    for rank in range(spec.nodes):
        argv, env = build_launch(replace(spec, node_rank=rank), run_id, run_dir, python)
        host = (
            names[rank]
            if rank < len(names)
            else ("this machine" if rank == spec.node_rank else f"node {rank}")
        )
        out.append(NodeCommand(rank, host, argv, env, rank == spec.node_rank))
    return out


def global_batch(micro_batch: int, accumulation: int, ranks: int) -> int:
    """Samples per optimizer step across the job: micro-batch × accumulation × data-parallel ranks."""
    return micro_batch * accumulation * ranks


def global_batch_warning(spec: RunSpec, wanted: int | None) -> str | None:
    """A sentence when the run's global batch differs from ``wanted`` (None or 0: no target)."""
    if not wanted:
        return None
    if wanted < 0:
        return f"Global batch wanted: {wanted} is not a batch; give a positive number, or 0 for no target"
    accumulation = spec.train.deepspeed_settings().gradient_accumulation_steps
    actual = global_batch(spec.train.batch_size, accumulation, spec.world_size)
    if actual == wanted:
        return None
    return (
        f"Global batch is {actual} (micro-batch {spec.train.batch_size} × accumulation {accumulation} × "
        f"{spec.world_size} rank(s)), not the {wanted} asked for: change the micro-batch, the "
        "gradient accumulation or the number of ranks"
    )


def write_run_files(spec: RunSpec, run_dir: Path, has_gpu: bool | None = None) -> None:
    """run_config.json, deepspeed_config.json, accelerate_config.yaml, spec.json (and the hostfile)."""
    import json

    from nexa_core.launch import RUN_CONFIG

    spec.train.write(run_dir / RUN_CONFIG)
    settings = spec.train.deepspeed_settings()
    (run_dir / DEEPSPEED_FILE).write_text(
        json.dumps(settings.deepspeed_config(settings.resolved_precision()), indent=2)
    )
    if has_gpu is None:
        from nexa_core.hardware import list_gpus

        has_gpu = bool(spec.gpus) or bool(list_gpus())
    write_launch_files(spec, run_dir, has_gpu=has_gpu)


def write_launch_files(spec: RunSpec, run_dir: Path, has_gpu: bool) -> None:
    """The launcher files of a run, into its folder: accelerate_config.yaml, the hostfile when hosts
    are given, and spec.json (the launch fields, for resume)."""
    import json

    import yaml

    from nexa_core.device_manager import DEFAULT_ACCELERATE_CONFIG
    from nexa_core.train_config import SPEC_FILE

    template = yaml.safe_load(DEFAULT_ACCELERATE_CONFIG.read_text())
    config = accelerate_config(spec, run_dir, template, has_gpu)
    (run_dir / ACCELERATE_FILE).write_text(yaml.safe_dump(config, sort_keys=False))
    if spec.hosts:
        (run_dir / HOSTFILE).write_text(hostfile_text(spec.hosts))
    (run_dir / SPEC_FILE).write_text(json.dumps(spec.to_dict()))


def launch_preview(spec: RunSpec, run_id: str, run_dir: Path, has_gpu: bool) -> dict[str, Any]:
    """What the Launch page shows before anything starts: the hostfile (None without hosts), the
    Accelerate config as YAML (None unless the accelerate mode), and the command of every node."""
    import yaml

    from nexa_core.device_manager import DEFAULT_ACCELERATE_CONFIG

    accelerate = None
    if spec.mode is LaunchMode.ACCELERATE:
        template = yaml.safe_load(DEFAULT_ACCELERATE_CONFIG.read_text())
        accelerate = yaml.safe_dump(accelerate_config(spec, run_dir, template, has_gpu), sort_keys=False)
    return {
        "hostfile": hostfile_text(spec.hosts) if spec.hosts else None,
        "accelerate_config": accelerate,
        "nodes": node_commands(spec, run_id, run_dir),
    }
