"""Launch specs and the pure ``build_launch(spec) -> (argv, env)``: what a run will execute, checked
without running anything (Accelerate's ``prepare_deepspeed_cmd_env`` is the model)."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from nexa_core.enums import _Choice
from nexa_core.errors import ConfigError, int_problems, raise_if
from nexa_core.hosts import HOSTFILE, Host, active_resources, address_problem, hosts_problems, parse_hosts
from nexa_core.train_config import RUN_CONFIG, TrainConfig

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEEPSPEED_FILE = "deepspeed_config.json"
ACCELERATE_FILE = "accelerate_config.yaml"
MAX_NODES = 1024
_ACCELERATE_MULTI_CPU = (
    "mode (--mode): accelerate without DeepSpeed starts several processes only on chosen GPUs "
    "(on CPUs Accelerate needs mpirun); pick gpus, set deepspeed to auto or on, or use torchrun"
)


class LaunchMode(_Choice):
    PYTHON = "python"  # one process: `python -m nexa_core train`
    ACCELERATE = "accelerate"  # `accelerate launch` with the deployment configs
    DEEPSPEED = "deepspeed"  # the `deepspeed` launcher
    TORCHRUN = "torchrun"  # `torchrun --nproc_per_node N`


@dataclass
class RunSpec:
    """One run to start: the training config plus how and where to launch it."""

    train: TrainConfig
    mode: LaunchMode | str = LaunchMode.PYTHON
    nproc: int = 1  # ranks on this node
    gpus: list[int] = field(default_factory=list)  # physical NVML ids; empty: CPU, or all GPUs
    master_port: int | None = None  # None: a free port on 127.0.0.1, chosen at launch
    resume: bool = False
    # Multi-node (docs/SCALING.md). The panel starts node ``node_rank`` on this machine; the other
    # nodes run the commands scaling.node_commands gives, unless ``ssh_launcher`` lets the DeepSpeed
    # launcher start them itself over ssh/pdsh from the run's hostfile.
    nodes: int = 1
    node_rank: int = 0
    master_addr: str | None = None  # None: 127.0.0.1 on one node, else the first host
    hosts: list[Host] = field(default_factory=list)  # the hostfile: name or address, slots
    include: str = ""  # deepspeed --include, e.g. "worker-0@worker-1:0,2"
    exclude: str = ""  # deepspeed --exclude, same grammar
    ssh_launcher: bool = False

    def __post_init__(self) -> None:
        problems = []
        try:
            self.mode = LaunchMode.parse(self.mode, "mode (--mode)")
        except ValueError as exc:
            problems.append(str(exc))
        if not isinstance(self.nproc, int) or isinstance(self.nproc, bool) or not 1 <= self.nproc <= 64:
            problems.append(f"nproc (--nproc): must be a whole number from 1 to 64, got {self.nproc!r}")
        elif self.mode is LaunchMode.PYTHON and self.nproc != 1:
            problems.append(
                "nproc (--nproc): the python mode runs one process; use torchrun, deepspeed or accelerate"
            )
        ids_ok = isinstance(self.gpus, list) and all(type(g) is int and 0 <= g < 1024 for g in self.gpus)
        if not ids_ok or len(set(self.gpus)) != len(self.gpus):
            problems.append(f"gpus (--gpus): distinct GPU ids from nvidia-smi, got {self.gpus!r}")
        elif self.gpus and isinstance(self.nproc, int) and self.nproc > len(self.gpus):
            problems.append(f"nproc (--nproc): {self.nproc} ranks need as many GPUs; {len(self.gpus)} chosen")
        if self.master_port is not None and (
            not isinstance(self.master_port, int)
            or isinstance(self.master_port, bool)
            or not 1024 <= self.master_port <= 65535
        ):
            problems.append(
                f"master_port (--master-port): must be from 1024 to 65535, got {self.master_port}"
            )
        problems += self._node_problems()
        raise_if(problems)

    def _node_problems(self) -> list[str]:
        """Multi-node fields: each checked on its own, then against the launch mode."""
        problems = int_problems("nodes", self.nodes, 1, MAX_NODES)
        if problems:
            return problems
        problems += int_problems("node_rank", self.node_rank, 0, self.nodes - 1)
        hosts: list[Host] = []
        lines = "\n".join(h for h in self.hosts if isinstance(h, str))  # "name slots=N" lines (CLI, page)
        try:
            hosts += parse_hosts(lines)
            for host in self.hosts:  # Host objects, or {"name", "slots"} from spec.json
                if not isinstance(host, str):
                    hosts.append(host if isinstance(host, Host) else Host(**host))
        except (ConfigError, TypeError) as exc:
            problems += getattr(exc, "problems", [f"hosts (--host): {exc}; give a name and slots"])
        self.hosts = hosts
        problems += hosts_problems(hosts)
        if self.master_addr is not None:
            problems += [p for p in (address_problem(self.master_addr, "master_addr (--master-addr)"),) if p]
        mode, multi = self.mode, self.nodes > 1
        if mode is LaunchMode.PYTHON and (multi or hosts or self.ssh_launcher):
            problems.append(
                "mode (--mode): python runs one process on one machine; use torchrun, deepspeed or "
                "accelerate for several nodes"
            )
            return problems
        if multi and self.master_port is None:
            problems.append(
                "master_port (--master-port): required with several nodes (every node must use it)"
            )
        if multi and self.master_addr is None and not hosts:
            problems.append(
                "master_addr (--master-addr): required with several nodes: the address of node 0 "
                "that every node can reach (or list the hosts)"
            )
        uses_filter = bool(self.include or self.exclude)
        if uses_filter or self.ssh_launcher:
            ds_path = mode is LaunchMode.DEEPSPEED or (mode is LaunchMode.ACCELERATE and self.ssh_launcher)
            if not ds_path:
                what = "include/exclude" if uses_filter else "ssh_launcher"
                problems.append(
                    f"{what} (--{what.split('/')[0].replace('_', '-')}): only for the deepspeed launcher "
                    "(mode deepspeed, or accelerate with ssh_launcher); allowed modes: deepspeed, accelerate"
                )
            if not hosts:
                problems.append(
                    "hosts (--host): include/exclude and ssh_launcher need the hosts (the hostfile)"
                )
        if self.ssh_launcher and (not multi or self.node_rank != 0):
            problems.append(
                "ssh_launcher (--ssh-launcher): starts every node from node 0; needs nodes > 1 and node_rank 0"
            )
        if mode is LaunchMode.DEEPSPEED and uses_filter and self.gpus:
            problems.append("gpus (--gpus): pick GPUs with include/exclude when a hostfile is used, not both")
        if mode is LaunchMode.ACCELERATE and not self.accelerate_uses_deepspeed and not self.gpus:
            if multi or self.nproc > 1:
                problems.append(_ACCELERATE_MULTI_CPU)
        if problems or not hosts:
            return problems
        used, filter_problems = active_resources(hosts, self.include, self.exclude)
        problems += filter_problems
        if not filter_problems and len(used) != self.nodes:
            problems.append(
                f"nodes (--nodes): {len(used)} host(s) take part ({', '.join(used)}), got nodes={self.nodes}; "
                "list one host per node, or narrow them with include/exclude"
            )
        elif not filter_problems and not uses_filter:
            short = [h.name for h in hosts if h.slots < self.nproc]
            if short:
                problems.append(
                    f"nproc (--nproc): {self.nproc} ranks per node, but {', '.join(short)} has fewer slots"
                )
        return problems

    @property
    def accelerate_uses_deepspeed(self) -> bool:
        """The accelerate mode launches DeepSpeed unless the run turns it off."""
        return str(self.train.deepspeed) != "off"

    @property
    def master_address(self) -> str:
        """Where every node meets: the given address, else the first host, else loopback."""
        return self.master_addr or (self.hosts[0].name if self.hosts and self.nodes > 1 else "127.0.0.1")

    @property
    def world_size(self) -> int:
        """Data-parallel ranks across all nodes."""
        if self.mode is LaunchMode.PYTHON:
            return 1
        if self.mode is LaunchMode.DEEPSPEED and self.hosts and (self.include or self.exclude):
            used, _ = active_resources(self.hosts, self.include, self.exclude)
            return sum(len(slots) for slots in used.values())
        return self.nproc * self.nodes

    def to_dict(self) -> dict[str, Any]:
        """The launch fields (not the training config) as JSON-ready values: spec.json in the run folder."""
        return {
            "mode": str(self.mode), "nproc": self.nproc, "gpus": self.gpus, "master_port": self.master_port,
            "nodes": self.nodes, "node_rank": self.node_rank, "master_addr": self.master_addr,
            "hosts": [{"name": h.name, "slots": h.slots} for h in self.hosts], "include": self.include,
            "exclude": self.exclude, "ssh_launcher": self.ssh_launcher,
        }  # fmt: skip

    @classmethod
    def from_dict(cls, train: TrainConfig, data: dict[str, Any], resume: bool = False) -> RunSpec:
        """Inverse of ``to_dict`` (an older spec.json without the node fields means one node)."""
        known = {f.name for f in fields(cls)} - {"train", "resume"}
        return cls(train, resume=resume, **{k: v for k, v in data.items() if k in known})

    @property
    def devices(self) -> list[str]:
        """What the run occupies, for the one-run-per-device rule: GPU ids, or the CPU."""
        return [f"gpu{g}" for g in self.gpus] if self.gpus else ["cpu"]


def build_launch(
    spec: RunSpec, run_id: str, run_dir: Path, python: str = sys.executable
) -> tuple[list[str], dict[str, str]]:
    """The argv (never a shell string) and the extra environment for ``spec``. The run's files
    (run_config.json, deepspeed_config.json, accelerate_config.yaml) are expected in ``run_dir``.
    A spec without a master port gets 29500 here; the runner picks a free one before calling."""
    port = str(spec.master_port or 29500)
    train = [
        "-m",
        "nexa_core",
        "train",
        "--config",
        str(run_dir / RUN_CONFIG),
        "--run-id",
        run_id,
        "--json",
    ]
    if spec.resume:
        train = ["-m", "nexa_core", "train", "--resume", run_id, "--json"]
    mode = spec.mode
    addr, multi = spec.master_address, spec.nodes > 1
    if mode is LaunchMode.PYTHON:
        argv = [python, *train]
    elif mode is LaunchMode.TORCHRUN:
        argv = [python, "-m", "torch.distributed.run"]
        if multi:  # static rendezvous: node 0 hosts the store at master_addr:master_port
            argv += ["--nnodes", str(spec.nodes), "--node_rank", str(spec.node_rank)]
        argv += ["--nproc_per_node", str(spec.nproc), "--master_addr", addr, "--master_port", port, *train]
    elif mode is LaunchMode.ACCELERATE:
        # The generated config holds the machine count, rank and rendezvous; the flags repeat the
        # per-node values so one config serves every node (only --machine_rank differs).
        argv = [python, "-m", "accelerate.commands.launch", "--config_file", str(run_dir / ACCELERATE_FILE),
                "--num_processes", str(spec.world_size), "--main_process_port", port]  # fmt: skip
        if multi:
            argv += ["--num_machines", str(spec.nodes), "--machine_rank", str(spec.node_rank),
                     "--main_process_ip", addr]  # fmt: skip
        if spec.accelerate_uses_deepspeed:
            argv += ["--use_deepspeed", "--deepspeed_config_file", str(run_dir / DEEPSPEED_FILE)]
        argv += train
    else:  # the deepspeed launcher
        argv = [python, "-m", "deepspeed.launcher.runner"]
        if spec.hosts:
            argv += ["--hostfile", str(run_dir / HOSTFILE)]
            if spec.include or spec.exclude:
                argv += ["--include", spec.include] if spec.include else ["--exclude", spec.exclude]
            elif spec.gpus:
                argv += [
                    "--include",
                    "@".join(f"{h.name}:" + ",".join(map(str, spec.gpus)) for h in spec.hosts),
                ]
            else:  # the first `nodes` hosts, `nproc` slots on each
                argv += ["--num_nodes", str(spec.nodes), "--num_gpus", str(spec.nproc)]
            if not spec.ssh_launcher:  # each node starts its own ranks; no ssh between them
                argv += ["--no_ssh", "--node_rank", str(spec.node_rank)]
        elif spec.gpus:  # --include pins the physical GPUs itself
            argv += ["--include", "localhost:" + ",".join(map(str, spec.gpus))]
        else:
            argv += ["--num_gpus", str(spec.nproc)]
        # LOCAL_RANK comes in the environment; `nexa train` takes no --local_rank argument
        argv += ["--master_addr", addr, "--master_port", port, "--no_local_rank", "--module", *train[1:]]
    env = {
        "NEXA_RUN_ID": run_id,
        "NEXA_HOME": os.environ.get("NEXA_HOME", ""),
        "PYTHONUNBUFFERED": "1",
        # NVML numbers GPUs by PCI bus; CUDA by speed unless told otherwise. With PCI_BUS_ID the
        # ids the user picked (as NEXA and nvidia-smi show them) are the ids CUDA sees.
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
    }
    if spec.gpus and mode is not LaunchMode.DEEPSPEED:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, spec.gpus))
    if mode is LaunchMode.DEEPSPEED or (mode is LaunchMode.ACCELERATE and spec.accelerate_uses_deepspeed):
        env["USE_DEEPSPEED"] = "true"  # both launchers exist to run DeepSpeed
    env = {k: v for k, v in env.items() if v}
    return argv, env


def command_text(argv: list[str]) -> str:
    """The command as a user would type it (for display only; NEXA never runs a shell)."""
    import shlex

    return shlex.join(argv)


# TrainConfig booleans as `nexa train/launch` flags: those off by default take a flag that turns
# them on, those on by default one that turns them off (commands/train.py defines the same flags).
_ON_FLAGS = {"lora": "--lora", "gradient_checkpointing": "--gradient-checkpointing",
             "random_init": "--random-init", "pad_to_seq_len": "--pad-to-seq-len"}  # fmt: skip
_OFF_FLAGS = {"eval": "--no-eval", "save": "--no-save", "zero3_init": "--no-zero3-init"}


def _train_flags(train: TrainConfig) -> list[str]:
    """The flags that rebuild ``train`` on top of TrainConfig's defaults (fields left at their
    default are not repeated; a bundled sample is named as the sample)."""
    from nexa_core.datasets import SAMPLE_PREFIX, SAMPLES, bundled_paths

    default, argv = TrainConfig().to_dict(), []
    values = train.to_dict()
    for name, (task, _) in SAMPLES.items():
        sample_files = [str(p) for p in bundled_paths(task, name)]
        if str(train.task) == str(task) and [train.dataset, train.eval_dataset] == sample_files:
            values["dataset"], values["eval_dataset"] = SAMPLE_PREFIX + name, None
    for f in fields(TrainConfig):
        value = values[f.name]
        if value == default[f.name]:
            continue
        if f.name in _ON_FLAGS:
            argv += [_ON_FLAGS[f.name]] if value else []
        elif f.name in _OFF_FLAGS:
            argv += [] if value else [_OFF_FLAGS[f.name]]
        elif value is not None:
            argv += [f"--{f.name.replace('_', '-')}", repr(value) if isinstance(value, float) else str(value)]
    return argv


def launch_command(spec: RunSpec, request: Any = None) -> str:
    """The `nexa launch` command that starts ``spec`` as the panel would (a new run: run id, folder
    and master port are assigned when it starts), or submits it to Slurm with ``request`` (a
    slurm.SlurmRequest; not imported here, slurm.py imports this module); for the user to copy."""
    import shlex

    argv = ["nexa", "launch", *_train_flags(spec.train)]
    if request is not None:
        argv += ["--backend", "slurm", "--partition", request.partition, "--nodes", str(request.nodes),
                 "--gpus-per-node", str(request.gpus_per_node), "--time", request.time]  # fmt: skip
        argv += [
            x for k in ("account", "qos") if getattr(request, k) for x in (f"--{k}", getattr(request, k))
        ]
        argv += ["--mem", str(request.mem_mb)] if request.mem_mb is not None else []
        argv += ["--nproc", str(spec.nproc)] if spec.nproc != 1 else []
        return shlex.join(argv)
    launch, default = spec.to_dict(), RunSpec(spec.train).to_dict()
    flags = {"mode": "--mode", "nproc": "--nproc", "master_port": "--master-port", "nodes": "--nodes",
             "node_rank": "--node-rank", "master_addr": "--master-addr", "include": "--include",
             "exclude": "--exclude"}  # fmt: skip
    for key, flag in flags.items():
        if launch[key] != default[key] and launch[key] is not None:
            argv += [flag, str(launch[key])]
    if spec.gpus:
        argv += ["--gpus", ",".join(map(str, spec.gpus))]
    for host in spec.hosts:
        argv += ["--host", f"{host.name} slots={host.slots}"]
    if spec.ssh_launcher:
        argv.append("--ssh-launcher")
    return shlex.join(argv)
