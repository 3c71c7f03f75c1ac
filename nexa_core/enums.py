"""Closed choices as ``str`` enums: the same values feed selectboxes, CLI choices and errors."""

from __future__ import annotations

from enum import Enum


class _Choice(str, Enum):
    @classmethod
    def values(cls) -> list[str]:
        return [m.value for m in cls]

    @classmethod
    def parse(cls, value: object, field: str) -> _Choice:
        """Turn user input into a member, or raise ValueError naming the field and choices."""
        if isinstance(value, cls):
            return value
        text = str(value).strip().lower()
        for member in cls:
            if member.value == text:
                return member
        raise ValueError(f"{field}: {value!r} is not allowed; choose one of {', '.join(cls.values())}")

    def __str__(self) -> str:  # so f-strings and argparse show "bf16", not "Precision.BF16"
        return self.value


class Task(_Choice):
    NER = "ner"
    CLASSIFICATION = "classification"
    EMBEDDING = "embedding"
    CAUSAL_LM = "causal-lm"


class Precision(_Choice):
    """fp16 and bf16 are mixed precision: 16-bit compute with an fp32 master copy and fp32 Adam
    states. bf16-true (Lightning's and litgpt's name) keeps weights, gradients and Adam states all
    in bf16, with no fp32 copy: half the model-state memory, at bf16's rounding of every update."""

    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"
    BF16_TRUE = "bf16-true"

    @property
    def bytes_per_value(self) -> int:
        return 4 if self is Precision.FP32 else 2

    @property
    def master_bytes_per_value(self) -> int:
        """Bytes of each value the optimizer steps and keeps (master weights, their gradients, each
        Adam moment): fp32 except in bf16-true."""
        return 2 if self is Precision.BF16_TRUE else 4


class Offload(_Choice):
    NONE = "none"
    CPU = "cpu"


class DeepSpeedMode(_Choice):
    AUTO = "auto"  # on when a GPU is present, off on CPU (the seed's behaviour)
    ON = "on"
    OFF = "off"


class Attention(_Choice):
    """The attention implementation a run uses (transformers' ``attn_implementation``).

    auto: transformers' default for the model (SDPA where the model supports it, else eager)."""

    AUTO = "auto"
    EAGER = "eager"
    SDPA = "sdpa"
    FLASH = "flash_attention_2"


class Weights(_Choice):
    """Where a run's weights come from: a checkpoint (read from disk) or random initialisation."""

    PRETRAINED = "pretrained"
    RANDOM = "random"
