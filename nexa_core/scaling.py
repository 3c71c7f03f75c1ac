"""Scale-out helpers, all pure: the hosts of a multi-node run, DeepSpeed's hostfile and
``--include/--exclude`` filters, the multi-machine Accelerate config, the command each node runs,
and the global-batch check. The formats follow the launchers' own parsers
(``deepspeed.launcher.runner._parse_hostfile`` / ``parse_inclusion_exclusion`` and Accelerate's
``ClusterConfig``); tests/test_scaling.py checks them with those parsers."""

from __future__ import annotations

import copy
import ipaddress
import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nexa_core.errors import ConfigError, raise_if

if TYPE_CHECKING:
    from nexa_core.launch import RunSpec

HOSTFILE = "hostfile"
MAX_SLOTS = 64
# RFC 1123: labels of letters, digits and '-', 1-63 characters, not starting or ending with '-'.
_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_HOST_LINE = re.compile(r"^(\S+)\s+slots=(\S+)$")
HOST_RULE = "an RFC 1123 host name (letters, digits, '-' and '.', no leading '-') or an IPv4 address"


def host_problem(name: object, field: str) -> str | None:
    """None when ``name`` is a usable host name or IPv4 address, else a message naming ``field``.
    IPv6 is refused: hostfile filters and pdsh use ':' to separate a host from its slots."""
    text = str(name) if isinstance(name, str) else ""
    if text:
        try:
            ipaddress.IPv4Address(text)
            return None
        except ValueError:
            pass
        labels = text.split(".")
        numeric = re.fullmatch(r"[0-9.]+", text) is not None  # 300.1.2.3 is a bad address, not a name
        if len(text) <= 253 and not numeric and all(_LABEL.match(label) for label in labels):
            return None
    return f"{field}: {name!r} is not {HOST_RULE}"


def address_problem(value: object, field: str) -> str | None:
    """Like ``host_problem`` but IPv6 is fine (a master address is never split on ':')."""
    if isinstance(value, str):
        try:
            ipaddress.ip_address(value)
            return None
        except ValueError:
            pass
    problem = host_problem(value, field)
    return problem and problem.replace("or an IPv4 address", "or an IP address")


@dataclass(frozen=True)
class Host:
    """One machine of a multi-node run: its name or address and its slots (GPUs, or ranks on a CPU)."""

    name: str
    slots: int = 1

    def __post_init__(self) -> None:
        problems = [p for p in (host_problem(self.name, "hosts (--host)"),) if p]
        if (
            not isinstance(self.slots, int)
            or isinstance(self.slots, bool)
            or not 1 <= self.slots <= MAX_SLOTS
        ):
            problems.append(
                f"hosts (--host): slots for {self.name!r} must be a whole number from 1 to {MAX_SLOTS}, "
                f"got {self.slots!r}"
            )
        raise_if(problems)


def parse_hosts(text: str) -> list[Host]:
    """Hosts from hostfile-style lines (``name slots=N``; ``name`` alone means one slot). Blank
    lines and ``#`` comments are skipped; every bad line is reported at once."""
    hosts, problems = [], []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = _HOST_LINE.match(line)
        name, slots_text = (match.group(1), match.group(2)) if match else (line, "1")
        if not match and len(line.split()) != 1:
            problems.append(f"hosts (--host): line {number} {raw.strip()!r} is not 'name slots=N'")
            continue
        slots: Any = int(slots_text) if slots_text.isdigit() else slots_text
        try:
            hosts.append(Host(name, slots))
        except ConfigError as exc:
            problems += [f"{p} (line {number})" for p in exc.problems]
    raise_if(problems)
    return hosts


def hosts_problems(hosts: list[Host]) -> list[str]:
    names = [h.name for h in hosts]
    dupes = sorted({n for n in names if names.count(n) > 1})
    return [f"hosts (--host): {', '.join(dupes)} listed more than once"] if dupes else []


def hostfile_text(hosts: list[Host]) -> str:
    """DeepSpeed's (MPI-style) hostfile: one ``host slots=N`` line per machine."""
    return "".join(f"{h.name} slots={h.slots}\n" for h in hosts)


def _parse_filter(text: str, field: str) -> tuple[dict[str, list[int]], list[str]]:
    """``NODE_SPEC[@NODE_SPEC ...]`` with ``NODE_SPEC = NAME[:SLOT[,SLOT ...]]`` (DeepSpeed's
    --include/--exclude grammar) as {host: slots}; an empty slot list means the whole host."""
    out: dict[str, list[int]] = {}
    problems = []
    for spec in text.split("@"):
        name, _, slots = spec.partition(":")
        problem = host_problem(name, field) if name != "localhost" else None
        if problem:
            problems.append(problem)
            continue
        parsed = [int(s) for s in slots.split(",") if s.strip().isdigit()] if slots else []
        if slots and len(parsed) != len(slots.split(",")):
            problems.append(f"{field}: slots in {spec!r} must be whole numbers, as in host:0,1")
            continue
        out.setdefault(name, [])
        out[name] = sorted(set(out[name] + parsed))
    return out, problems


def active_resources(
    hosts: list[Host], include: str = "", exclude: str = ""
) -> tuple[OrderedDict[str, list[int]], list[str]]:
    """The slots each host contributes after --include/--exclude, in hostfile order, and the problems
    (the same rules DeepSpeed's ``parse_resource_filter`` enforces, as messages naming the field)."""
    pool = OrderedDict((h.name, list(range(h.slots))) for h in hosts)
    if include and exclude:
        return pool, ["include (--include) / exclude (--exclude): give one or the other, not both"]
    field, text = ("include (--include)", include) if include else ("exclude (--exclude)", exclude)
    if not text:
        return pool, []
    wanted, problems = _parse_filter(text, field)
    for name, slots in wanted.items():
        if name not in pool:
            problems.append(f"{field}: host {name!r} is not in hosts ({', '.join(pool) or 'none given'})")
        elif [s for s in slots if s not in pool[name]]:
            problems.append(f"{field}: {name} has slots 0 to {len(pool[name]) - 1}, got {slots}")
    if problems:
        return pool, problems
    if include:
        kept = OrderedDict((n, wanted[n] or pool[n]) for n in pool if n in wanted)
    else:
        kept = OrderedDict(
            (n, [s for s in pool[n] if n not in wanted or (wanted[n] and s not in wanted[n])]) for n in pool
        )
    return OrderedDict((n, s) for n, s in kept.items() if s), []


def accelerate_config(
    spec: RunSpec, run_dir: Path, template: dict[str, Any], has_gpu: bool
) -> dict[str, Any]:
    """The run's Accelerate config from the deployment template: process and machine counts, the
    rendezvous address, and for DeepSpeed the multi-node launcher (``pdsh`` with the run's hostfile
    when the panel starts the other nodes over ssh, ``standard`` (torchrun on each node) otherwise)."""
    from nexa_core.launch import DEEPSPEED_FILE

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

    from nexa_core.launch import build_launch

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


def write_launch_files(spec: RunSpec, run_dir: Path, has_gpu: bool) -> None:
    """The launcher files of a run, into its folder: accelerate_config.yaml, the hostfile when hosts
    are given, and spec.json (the launch fields, for resume)."""
    import json

    import yaml

    from nexa_core.device_manager import DEFAULT_ACCELERATE_CONFIG
    from nexa_core.launch import ACCELERATE_FILE
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
    from nexa_core.launch import LaunchMode

    accelerate = None
    if spec.mode is LaunchMode.ACCELERATE:
        template = yaml.safe_load(DEFAULT_ACCELERATE_CONFIG.read_text())
        accelerate = yaml.safe_dump(accelerate_config(spec, run_dir, template, has_gpu), sort_keys=False)
    return {
        "hostfile": hostfile_text(spec.hosts) if spec.hosts else None,
        "accelerate_config": accelerate,
        "nodes": node_commands(spec, run_id, run_dir),
    }
