"""Launch specs and the pure ``build_launch(spec) -> (argv, env)``: what a run will execute, checked
without running anything (Accelerate's ``prepare_deepspeed_cmd_env`` is the model)."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from nexa_core.enums import _Choice
from nexa_core.errors import raise_if
from nexa_core.train_config import TrainConfig

PROJECT_ROOT = Path(__file__).resolve().parent.parent
RUN_CONFIG = "run_config.json"
DEEPSPEED_FILE = "deepspeed_config.json"
ACCELERATE_FILE = "accelerate_config.yaml"


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
        if not all(isinstance(g, int) and 0 <= g < 1024 for g in self.gpus) or len(set(self.gpus)) != len(
            self.gpus
        ):
            problems.append(f"gpus (--gpus): distinct GPU ids from nvidia-smi, got {self.gpus!r}")
        elif self.gpus and self.nproc > len(self.gpus):
            problems.append(f"nproc (--nproc): {self.nproc} ranks need as many GPUs; {len(self.gpus)} chosen")
        if self.master_port is not None and not 1024 <= self.master_port <= 65535:
            problems.append(
                f"master_port (--master-port): must be from 1024 to 65535, got {self.master_port}"
            )
        raise_if(problems)

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
    if mode is LaunchMode.PYTHON:
        argv = [python, *train]
    elif mode is LaunchMode.TORCHRUN:
        argv = [python, "-m", "torch.distributed.run", "--nproc_per_node", str(spec.nproc),
                "--master_addr", "127.0.0.1", "--master_port", port, *train]  # fmt: skip
    elif mode is LaunchMode.ACCELERATE:
        argv = [python, "-m", "accelerate.commands.launch", "--config_file", str(run_dir / ACCELERATE_FILE),
                "--num_processes", str(spec.nproc), "--main_process_port", port,
                "--use_deepspeed", "--deepspeed_config_file", str(run_dir / DEEPSPEED_FILE), *train]  # fmt: skip
    else:  # the deepspeed launcher; --include pins the physical GPUs itself
        argv = [python, "-m", "deepspeed.launcher.runner", "--master_addr", "127.0.0.1",
                "--master_port", port]  # fmt: skip
        argv += (
            ["--include", "localhost:" + ",".join(map(str, spec.gpus))]
            if spec.gpus
            else ["--num_gpus", str(spec.nproc)]
        )
        argv += ["--module", *train[1:]]
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
    if mode in (LaunchMode.ACCELERATE, LaunchMode.DEEPSPEED):
        env["USE_DEEPSPEED"] = "true"  # both launchers exist to run DeepSpeed
    env = {k: v for k, v in env.items() if v}
    return argv, env


def command_text(argv: list[str]) -> str:
    """The command as a user would type it (for display only; NEXA never runs a shell)."""
    import shlex

    return shlex.join(argv)
