"""TrainConfig: everything one training run needs, validated at once. It is also the run-config
file (``run_config.json`` in the run folder) that the app writes and ``nexa train --config`` reads."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from nexa_core.device_manager import DeepSpeedSettings
from nexa_core.enums import Attention, DeepSpeedMode, Offload, Precision, Task
from nexa_core.errors import ConfigError, int_problems, raise_if
from nexa_core.models import DEFAULT_MODEL, seq_len_problems, validate_model_name
from nexa_core.paths import text_problems

# A run folder keeps its configuration in two halves: the training config and the launch fields.
RUN_CONFIG = "run_config.json"
SPEC_FILE = "spec.json"
TRACKERS = ("tensorboard", "mlflow", "wandb", "aim", "comet_ml", "clearml", "dvclive")
# The seed guide's DeepSpeedTrainer keyword -> this config's field (TrainConfig.from_seed_kwargs)
_SEED_NAMES = {
    "offload_params": "offload_param",
    "use_lora": "lora",
    "learning_rate": "lr",
    "use_deepspeed": "deepspeed",
    "gradient_accumulation_steps": "gradient_accumulation",
}
_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._- ")


@dataclass
class TrainConfig:
    model: str = DEFAULT_MODEL
    task: Task | str = Task.NER
    num_labels: int | None = None  # None: from the dataset's labels
    dataset: str | None = None  # training file (CSV/JSONL); None: the task's bundled sample
    eval_dataset: str | None = None
    deepspeed: DeepSpeedMode | str = DeepSpeedMode.AUTO
    zero_stage: int | None = None  # None: DEEPSPEED_ZERO_STAGE, else the DeepSpeed config file (ZeRO-3)
    offload_optimizer: Offload | str | None = None
    offload_param: Offload | str | None = None
    precision: Precision | str | None = None
    batch_size: int = 8
    seq_len: int = 128
    gradient_accumulation: int | None = None
    lr: float = 5e-5
    weight_decay: float = 0.0
    warmup_steps: int = 0
    epochs: int = 1
    max_steps: int | None = None
    lora: bool = False
    lora_rank: int = 8
    gradient_checkpointing: bool = False
    save_every: int | None = None  # steps between checkpoints; one is always written at the end
    keep_last: int = 2
    seed: int = 0
    name: str | None = None
    random_init: bool = False  # train from random weights (tiny test variants; clearly labelled)
    tracker: str | None = None  # also log through an Accelerate tracker
    eval: bool = True
    eval_every: int | None = None  # steps between validation passes (curves); None: only the final one
    save: bool = True  # write checkpoints (a memory probe needs none)
    pad_to_seq_len: bool = False  # pad every batch to seq_len: memory probes measure the worst case
    zero3_init: bool = True  # ZeRO-3: create the model sharded (DeepSpeed zero.Init); off: whole per rank
    attention: Attention | str = Attention.AUTO  # transformers' attn_implementation; auto: its default

    def __post_init__(self) -> None:
        problems: list[str] = []
        # Text checks first: validate_model_name expects a str, and an existing folder named like an
        # option ('-x') must still be refused.
        bad_model = text_problems("model (--model)", self.model, 1024) or validate_model_name(self.model)
        problems += bad_model
        for name, enum in (("task", Task), ("deepspeed", DeepSpeedMode), ("attention", Attention)):
            try:
                setattr(self, name, enum.parse(getattr(self, name), f"{name} (--{name})"))
            except ValueError as exc:
                problems.append(str(exc))
        for name, low, high in (
            ("batch_size", 1, 65_536),
            ("seq_len", 8, 131_072),
            ("epochs", 1, 10_000),
            ("lora_rank", 1, 4096),
            ("keep_last", 1, 1000),
            ("seed", 0, 2**31 - 1),
            ("warmup_steps", 0, 10**9),
        ):
            problems += int_problems(name, getattr(self, name), low, high)
        if not bad_model and not int_problems("seq_len", self.seq_len, 8, 131_072):
            problems += seq_len_problems(self.model, self.seq_len)
        for name, low, high in (
            ("num_labels", 1, 10_000), ("max_steps", 1, 10**9), ("save_every", 1, 10**9), ("eval_every", 1, 10**9)
        ):  # fmt: skip
            if getattr(self, name) is not None:
                problems += int_problems(name, getattr(self, name), low, high)
        if not isinstance(self.lr, (int, float)) or isinstance(self.lr, bool) or not 0 < self.lr < 1:
            problems.append(f"lr (--lr): must be a number between 0 and 1, got {self.lr!r}")
        if not isinstance(self.weight_decay, (int, float)) or not 0 <= self.weight_decay < 1:
            problems.append(f"weight_decay (--weight-decay): must be in [0, 1), got {self.weight_decay!r}")
        if self.name is not None and (
            not isinstance(self.name, str)
            or len(self.name) > 80
            or not set(self.name) <= _NAME_CHARS
            or self.name.startswith("-")
        ):
            problems.append(
                "name (--name): up to 80 letters, digits, spaces, '.', '_' or '-', not starting with '-'"
            )
        if self.tracker is not None and self.tracker not in TRACKERS:
            problems.append(
                f"tracker (--tracker): {self.tracker!r} is not allowed; choose one of {', '.join(TRACKERS)}"
            )
        elif self.tracker is not None and not _tracker_installed(self.tracker):
            problems.append(
                f"tracker (--tracker): {self.tracker} is not installed here; pip install {self.tracker}"
            )
        problems += self._resolve_sample()
        for name in ("dataset", "eval_dataset"):
            value, flag = getattr(self, name), f"{name} (--{name.replace('_', '-')})"
            bad_text = text_problems(flag, value, 4096) if value is not None else []
            problems += bad_text
            if value is not None and not bad_text:
                problems += _file_problems(flag, value)
        try:
            self.deepspeed_settings()
        except ConfigError as exc:
            problems += exc.problems
        raise_if(problems)

    def _resolve_sample(self) -> list[str]:
        """``--dataset sample:<name>``: a bundled sample's training file, and its validation file
        unless one is given (datasets.SAMPLES)."""
        from nexa_core.datasets import SAMPLE_PREFIX, bundled_paths, resolve_sample

        if not isinstance(self.dataset, str) or not self.dataset.startswith(SAMPLE_PREFIX):
            return []
        name = self.dataset.removeprefix(SAMPLE_PREFIX)
        path, problems = resolve_sample(self.dataset, self.task)
        if path is None:
            self.dataset = None
            return problems
        self.dataset = path
        if self.eval_dataset is None:
            self.eval_dataset = str(bundled_paths(self.task, name)[1])
        return []

    def deepspeed_settings(self) -> DeepSpeedSettings:
        # auto defers to the seed's USE_DEEPSPEED when it is set (a deployment's default), else to
        # the hardware: on with a GPU, off on CPU.
        return DeepSpeedSettings.from_env(
            mode=None if DeepSpeedMode(self.deepspeed) is DeepSpeedMode.AUTO else self.deepspeed,
            zero_stage=self.zero_stage,
            offload_optimizer=self.offload_optimizer,
            offload_param=self.offload_param,
            precision=self.precision,
            gradient_accumulation_steps=self.gradient_accumulation,
            zero3_init=None if self.zero3_init else False,  # off here wins; on defers to the environment
        )

    def layout(self, has_gpu: bool) -> tuple[int, Offload, Offload]:
        """(ZeRO stage, optimizer offload, parameter offload) the run trains with: the DeepSpeed
        settings' layout (explicit choices over the config file's), or ZeRO-0 without offload when
        DeepSpeed is off (``auto`` on a machine without a GPU)."""
        settings = self.deepspeed_settings()
        if not settings.deepspeed_enabled(has_gpu=has_gpu):
            return 0, Offload.NONE, Offload.NONE
        return settings.layout()

    def to_dict(self) -> dict[str, Any]:
        return {k: (str(v) if hasattr(v, "value") else v) for k, v in asdict(self).items()}

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                [f"run config: unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(known))}"]
            )
        return cls(**data)

    @classmethod
    def from_seed_kwargs(cls, model_name: str, **seed: Any) -> TrainConfig:
        """The seed guide's DeepSpeedTrainer keywords as a TrainConfig: its names
        (``offload_params``, ``use_lora``, ``learning_rate``, ``use_deepspeed``,
        ``gradient_accumulation_steps``) and its booleans for offload and DeepSpeed mapped to this
        config's fields; any other keyword is a field of the same name. Unknown names are refused
        with the allowed ones."""
        data: dict[str, Any] = {"model": model_name}
        for key, value in seed.items():
            name = _SEED_NAMES.get(key, key)
            if name in ("offload_optimizer", "offload_param") and isinstance(value, bool):
                value = Offload.CPU if value else Offload.NONE
            elif name == "deepspeed" and isinstance(value, bool):
                value = DeepSpeedMode.ON if value else DeepSpeedMode.OFF
            elif name == "deepspeed" and value is None:
                continue  # the seed's "decide for me": auto
            data[name] = value
        return cls.from_dict(data)

    @classmethod
    def load(cls, path: Path) -> TrainConfig:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError([f"config (--config): cannot read {str(path)!r}: {exc}"]) from None
        if not isinstance(data, dict):
            raise ConfigError([f"config (--config): {str(path)!r} must hold a JSON object"])
        return cls.from_dict(data)


def _file_problems(flag: str, value: str) -> list[str]:
    """A data file must be a regular file: say what it is instead (a folder, /dev/zero, a pipe)."""
    path = Path(value)
    if path.is_file():
        return []
    if path.is_dir():
        return [f"{flag}: {value!r} is a folder, not a file; give a CSV or JSONL file"]
    if path.exists():
        return [
            f"{flag}: {value!r} is not a regular file (a device, pipe or socket); give a CSV or JSONL file"
        ]
    return [f"{flag}: {value!r} does not exist"]


def _tracker_installed(name: str) -> bool:
    import importlib.util

    if name == "tensorboard":  # Accelerate accepts either writer
        return any(importlib.util.find_spec(m) for m in ("tensorboard", "tensorboardX"))
    return importlib.util.find_spec(name) is not None
