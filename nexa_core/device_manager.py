"""Device manager (the seed's ``ml_device_utils``): DeepSpeed settings from the seed's environment
variables, the per-run DeepSpeed config, and ``get_accelerator(use_deepspeed=...)``.

Environment variables (the seed guide's names): USE_DEEPSPEED, DEEPSPEED_CONFIG_FILE,
DEEPSPEED_ZERO_STAGE, DEEPSPEED_OFFLOAD_OPTIMIZER, DEEPSPEED_OFFLOAD_PARAM,
DEEPSPEED_CPU_CHECKPOINTING, ENABLE_MIXED_PRECISION, GRADIENT_ACCUMULATION_STEPS.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nexa_core.enums import DeepSpeedMode, Offload, Precision
from nexa_core.errors import raise_if
from nexa_core.paths import deployment_file

DEFAULT_DEEPSPEED_CONFIG = deployment_file("deepspeed_config.json")
DEFAULT_ACCELERATE_CONFIG = deployment_file("accelerate_config.yaml")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
log = logging.getLogger(__name__)


def gpu_available() -> bool:
    import torch

    return torch.cuda.is_available()


@dataclass
class DeepSpeedSettings:
    """The DeepSpeed choices of one run. ``from_env`` fills defaults from the seed's variables."""

    mode: DeepSpeedMode | str = DeepSpeedMode.AUTO
    # None: as the DeepSpeed config file says (deployment/deepspeed_config.json: ZeRO-3, both offloads)
    zero_stage: int | None = None
    offload_optimizer: Offload | str | None = None
    offload_param: Offload | str | None = None
    cpu_checkpointing: bool = False
    precision: Precision | str | None = None  # None: bf16 (or fp16 without bf16 support) on GPU, fp32 on CPU
    gradient_accumulation_steps: int = 1
    # ZeRO-3 only: build the model under deepspeed.zero.Init, so each rank creates just its 1/N of
    # every parameter (Accelerate's zero3_init_flag; env ACCELERATE_DEEPSPEED_ZERO3_INIT)
    zero3_init: bool = True
    config_file: str | None = None  # template; default deployment/deepspeed_config.json
    problems: list[str] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        problems = list(self.problems)
        for name, enum, flag in (
            ("mode", DeepSpeedMode, "--deepspeed / USE_DEEPSPEED"),
            ("offload_optimizer", Offload, "--offload-optimizer / DEEPSPEED_OFFLOAD_OPTIMIZER"),
            ("offload_param", Offload, "--offload-param / DEEPSPEED_OFFLOAD_PARAM"),
        ):
            if getattr(self, name) is None:
                continue
            try:
                setattr(self, name, enum.parse(getattr(self, name), f"{name} ({flag})"))
            except ValueError as exc:
                problems.append(str(exc))
        if self.config_file is not None and not Path(self.config_file).is_file():
            problems.append(f"config_file (DEEPSPEED_CONFIG_FILE): {self.config_file!r} does not exist")
            self.config_file = None
        if self.precision is not None:
            try:
                self.precision = Precision.parse(self.precision, "precision (--precision)")
            except ValueError as exc:
                problems.append(str(exc))
        if self.zero_stage is not None and self.zero_stage not in (0, 1, 2, 3):
            problems.append(
                f"zero_stage (--zero-stage / DEEPSPEED_ZERO_STAGE): must be 0, 1, 2 or 3, got {self.zero_stage!r}"
            )
        elif not problems:
            stage, off_opt, off_param = self.layout()
            if off_opt is Offload.CPU and stage == 0:
                problems.append("offload_optimizer (--offload-optimizer): cpu needs ZeRO stage 1, 2 or 3")
            if off_param is Offload.CPU and stage != 3:
                problems.append("offload_param (--offload-param): cpu needs ZeRO stage 3")
            if self.precision is Precision.BF16_TRUE and stage == 0 and self.mode is DeepSpeedMode.ON:
                problems.append(
                    "precision (--precision): bf16-true with DeepSpeed needs ZeRO stage 1, 2 or 3 "
                    "(DeepSpeed keeps bf16 master weights only there); use --deepspeed off for stage 0"
                )
        if (
            not isinstance(self.gradient_accumulation_steps, int)
            or not 1 <= self.gradient_accumulation_steps <= 4096
        ):
            problems.append(
                "gradient_accumulation_steps (--gradient-accumulation / GRADIENT_ACCUMULATION_STEPS): "
                f"must be a whole number from 1 to 4096, got {self.gradient_accumulation_steps!r}"
            )
        self.problems = []
        raise_if(problems)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> DeepSpeedSettings:
        """Seed variables first, explicit overrides (CLI flags, page fields) on top."""
        env = os.environ if env is None else env
        problems: list[str] = []
        values: dict[str, Any] = {}
        use = env.get("USE_DEEPSPEED")
        if use is not None:
            values["mode"] = (
                DeepSpeedMode.ON
                if use.lower() in _TRUE
                else DeepSpeedMode.OFF
                if use.lower() in _FALSE
                else use
            )
        for var, key in (
            ("DEEPSPEED_ZERO_STAGE", "zero_stage"),
            ("GRADIENT_ACCUMULATION_STEPS", "gradient_accumulation_steps"),
        ):
            if env.get(var):
                try:
                    values[key] = int(env[var])
                except ValueError:
                    problems.append(f"{key} ({var}): must be a whole number, got {env[var]!r}")
        for var, key in (
            ("DEEPSPEED_OFFLOAD_OPTIMIZER", "offload_optimizer"),
            ("DEEPSPEED_OFFLOAD_PARAM", "offload_param"),
        ):
            if env.get(var):
                values[key] = env[var]
        if env.get("ACCELERATE_DEEPSPEED_ZERO3_INIT"):
            values["zero3_init"] = env["ACCELERATE_DEEPSPEED_ZERO3_INIT"].lower() in _TRUE
        if env.get("DEEPSPEED_CPU_CHECKPOINTING"):
            values["cpu_checkpointing"] = env["DEEPSPEED_CPU_CHECKPOINTING"].lower() in _TRUE
        mixed = env.get("ENABLE_MIXED_PRECISION")
        if mixed is not None and mixed.lower() in _FALSE:
            values["precision"] = Precision.FP32
        # `accelerate launch --use_deepspeed --deepspeed_config_file F` passes these two on.
        if env.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true" and use is None:
            values["mode"] = DeepSpeedMode.ON
        config_file = env.get("DEEPSPEED_CONFIG_FILE") or env.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
        if config_file:
            values["config_file"] = config_file
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values, problems=problems)

    def deepspeed_enabled(self, has_gpu: bool | None = None) -> bool:
        """auto: on with a GPU, off on CPU (the seed's behaviour); on/off force it."""
        if self.mode is DeepSpeedMode.AUTO:
            return gpu_available() if has_gpu is None else has_gpu
        return self.mode is DeepSpeedMode.ON

    def resolved_precision(self, has_gpu: bool | None = None) -> Precision:
        if self.precision is not None:
            return self.precision  # type: ignore[return-value]
        has_gpu = gpu_available() if has_gpu is None else has_gpu
        if not has_gpu:
            return Precision.FP32
        import torch

        return Precision.BF16 if torch.cuda.is_bf16_supported() else Precision.FP16

    def template(self) -> dict[str, Any]:
        path = Path(self.config_file) if self.config_file else DEFAULT_DEEPSPEED_CONFIG
        return json.loads(path.read_text())

    def layout(self) -> tuple[int, Offload, Offload]:
        """(stage, optimizer offload, parameter offload): explicit choices over the config file's."""
        zero = self.template().get("zero_optimization", {})

        stage = self.zero_stage if self.zero_stage is not None else int(zero.get("stage", 0))

        def offload(choice: Offload | str | None, key: str, min_stage: int) -> Offload:
            if choice is not None:
                return Offload(choice)
            # The file's offload applies only where the chosen stage allows it (a user who picks
            # ZeRO-2 over the ZeRO-3 template means "no parameter offload", not an error).
            in_file = zero.get(key, {}).get("device", "none") == "cpu"
            return Offload.CPU if in_file and stage >= min_stage else Offload.NONE

        return (
            stage,
            offload(self.offload_optimizer, "offload_optimizer", 1),
            offload(self.offload_param, "offload_param", 3),
        )

    def deepspeed_config(self, precision: Precision) -> dict[str, Any]:
        """The per-run DeepSpeed config: the template with this run's stage, offload and precision.
        "auto" values stay for Accelerate to fill from the dataloader, optimizer and model."""
        config = copy.deepcopy(self.template())
        stage, off_opt, off_param = self.layout()
        zero = config.setdefault("zero_optimization", {})
        zero["stage"] = stage
        pin = not _cpu_only()  # pinned host memory only helps (and only works) with a GPU
        for key, choice in (("offload_optimizer", off_opt), ("offload_param", off_param)):
            if choice is Offload.CPU:
                zero[key] = {**zero.get(key, {}), "device": "cpu", "pin_memory": pin}
            else:
                zero.pop(key, None)
        config.setdefault("fp16", {})["enabled"] = precision is Precision.FP16
        bf16 = config.setdefault("bf16", {})
        bf16["enabled"] = precision in (Precision.BF16, Precision.BF16_TRUE)
        # bf16-true: DeepSpeed keeps its master copy, gradients and optimizer states in bf16 too
        # (ZeRO 1-3 only; DeepSpeedSettings refuses stage 0)
        for key in ("bf16_master_weights_and_grads", "bf16_optimizer_states"):
            if precision is Precision.BF16_TRUE:
                bf16[key] = True
            else:
                bf16.pop(key, None)
        config["gradient_accumulation_steps"] = self.gradient_accumulation_steps
        config.setdefault("activation_checkpointing", {})["cpu_checkpointing"] = self.cpu_checkpointing
        if off_opt is Offload.NONE and _cpu_only():
            # DeepSpeed's FusedAdam on the CPU accelerator is a JIT-built op; the torch AdamW it
            # wraps is the same maths, so CPU runs without offload use the client optimizer.
            config.pop("optimizer", None)
            config.pop("scheduler", None)
        return config


def _cpu_only() -> bool:
    return not gpu_available()


def ensure_distributed_env() -> None:
    """A process started without a launcher has no rank variables, and DeepSpeed then tries MPI
    discovery; a single-rank world on loopback is what the user meant."""
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:
        os.environ["MASTER_PORT"] = str(_free_port())


def deepspeed_arch_list(value: str) -> str:
    """TORCH_CUDA_ARCH_LIST as DeepSpeed's JIT op builder can read it.

    DeepSpeed 0.19.8 (op_builder/builder.py, ``compute_capability_args``) reads every entry as
    integers, so the architecture-specific suffixes CUDA 12+ images set ("9.0a", Hopper's wgmma;
    "10.0f") fail with "invalid literal for int() with base 10: '0a'" and FusedAdam never builds.
    Measured: every GPU-optimizer case of benchmarks/gpu_validation.py failed so on an H200 image
    with TORCH_CUDA_ARCH_LIST=9.0a (2026-12-04). Dropping the suffix builds the ops for the plain
    architecture, which Adam's kernels need nothing beyond; "+PTX" is kept."""
    return re.sub(r"(\d+\.\d+)[a-z]+", r"\1", value)


def ensure_deepspeed_arch_list(environ: dict[str, str] | None = None) -> str | None:
    """Rewrite TORCH_CUDA_ARCH_LIST in ``environ`` (default: this process's) for DeepSpeed's JIT
    builder (see ``deepspeed_arch_list``); returns the new value when it changed, else None."""
    environ = os.environ if environ is None else environ
    old = environ.get("TORCH_CUDA_ARCH_LIST")
    if not old or deepspeed_arch_list(old) == old:
        return None
    environ["TORCH_CUDA_ARCH_LIST"] = new = deepspeed_arch_list(old)
    log.warning(
        "TORCH_CUDA_ARCH_LIST %r read as %r: DeepSpeed's op builder cannot parse the suffix", old, new
    )
    return new


# How long a JIT build lock may sit, with nothing in its op's folder changing, before it is taken for
# stale. Assumed: DeepSpeed's CPU ops build here in under a minute (2 cores) and each compile step
# writes its object file and .ninja_log entry; five minutes of silence leaves a wide margin.
STALE_BUILD_LOCK_S = 300.0


def stale_build_locks(root: Path, now: float, max_age_s: float = STALE_BUILD_LOCK_S) -> list[Path]:
    """JIT build locks under ``root`` that no process is using: the lock and every file beside it
    unchanged for ``max_age_s``.

    torch's extension loader (cpp_extension ``FileBaton``) creates ``<op>/lock`` whenever a process
    loads a DeepSpeed op, built or not, and every other loader polls until the file is gone. A process
    killed while holding it (a rank the kernel or Slurm killed for memory during start-up, a kill -9)
    leaves the file, and every later DeepSpeed process on the machine then waits forever: seen here,
    both ranks of a run idle for minutes behind ``deepspeed_shm_comm/lock``."""
    found = []
    for lock in [*root.glob("*/lock"), *root.glob("*/*/lock")]:
        try:
            newest = max(entry.stat().st_mtime for entry in lock.parent.iterdir())
        except (FileNotFoundError, ValueError):  # released or emptied meanwhile
            continue
        if now - newest > max_age_s:
            found.append(lock)
    return found


def extension_root() -> Path:
    """torch's extension folder: TORCH_EXTENSIONS_DIR, else torch's default root (under which torch
    adds a ``py311_cpu``-style level)."""
    env = os.environ.get("TORCH_EXTENSIONS_DIR")
    if env:
        return Path(env)
    from torch.utils.cpp_extension import get_default_build_root

    return Path(get_default_build_root())


def clear_stale_build_locks(root: Path | None = None) -> list[Path]:
    """Remove stale JIT build locks (``stale_build_locks``) from torch's extension folder
    (``extension_root``) before DeepSpeed loads its ops."""
    root = extension_root() if root is None else root
    removed = []
    for lock in stale_build_locks(root, time.time()):
        try:
            lock.unlink()
        except FileNotFoundError:
            continue
        log.warning(
            "removed %s: a JIT build lock no process has touched for %.0f s", lock, STALE_BUILD_LOCK_S
        )
        removed.append(lock)
    return removed


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_accelerator(
    use_deepspeed: bool | None = None, settings: DeepSpeedSettings | None = None, **accelerator_kwargs: Any
):
    """An ``accelerate.Accelerator``, with a ``DeepSpeedPlugin`` when DeepSpeed is on.

    ``use_deepspeed=None`` follows the settings' mode (USE_DEEPSPEED; auto = on with a GPU).
    """
    from accelerate import Accelerator
    from accelerate.utils import DeepSpeedPlugin

    settings = settings or DeepSpeedSettings.from_env()
    enabled = settings.deepspeed_enabled() if use_deepspeed is None else use_deepspeed
    precision = settings.resolved_precision()
    # bf16-true has no autocast: the weights themselves are bf16 (the trainer creates them so)
    mixed = {Precision.FP32: "no", Precision.FP16: "fp16", Precision.BF16: "bf16", Precision.BF16_TRUE: "no"}[
        precision
    ]
    if not enabled:
        if not gpu_available():
            # Without CUDA, Accelerate joins the ranks a launcher started (gloo, MULTI_CPU) only when
            # told cpu=True; otherwise every rank would train alone as a world of one.
            accelerator_kwargs.setdefault("cpu", True)
        return Accelerator(
            mixed_precision=mixed,
            gradient_accumulation_steps=settings.gradient_accumulation_steps,
            **accelerator_kwargs,
        )
    ensure_distributed_env()
    ensure_deepspeed_arch_list()  # before DeepSpeed JIT-builds FusedAdam / CPUAdam
    clear_stale_build_locks()  # before DeepSpeed loads its ops, or it waits on a dead process's lock
    stage, _, _ = settings.layout()
    plugin = DeepSpeedPlugin(
        hf_ds_config=settings.deepspeed_config(precision),
        zero3_init_flag=stage == 3 and settings.zero3_init,
    )
    if not gpu_available():
        # Without CUDA, Accelerate finds no backend for a launched rank and records a world of one
        # process, while DeepSpeed joins all ranks: train_batch_size is then computed for 1 process
        # and DeepSpeed's batch check fails with several ranks. Naming gloo makes Accelerate take
        # the world size from the process group DeepSpeed initialises (accelerate/state.py).
        from accelerate.utils import InitProcessGroupKwargs

        handlers = list(accelerator_kwargs.pop("kwargs_handlers", []))
        handlers.append(InitProcessGroupKwargs(backend="gloo"))
        accelerator_kwargs["kwargs_handlers"] = handlers
    return Accelerator(mixed_precision=mixed, deepspeed_plugin=plugin, **accelerator_kwargs)
