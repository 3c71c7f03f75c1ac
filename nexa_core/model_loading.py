"""Building the model a run trains: from its checkpoint or randomly initialised, in the dtype the
run's precision calls for (not the checkpoint's), with the attention implementation asked for,
sharded at creation under ZeRO-3 (DeepSpeed zero.Init) unless turned off, then gradient
checkpointing and LoRA on top."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nexa_core.enums import Attention, Precision, Task
from nexa_core.errors import ConfigError
from nexa_core.models import auto_class, lora_config, resolve_model, task_config

log = logging.getLogger("nexa.trainer")


@dataclass(frozen=True)
class ModelRequest:
    name: str
    task: Task
    num_labels: int
    label_names: list[str] | None
    random_init: bool
    dtype: Any  # torch.dtype
    attention: Attention
    gradient_checkpointing: bool
    lora_rank: int | None  # None: no LoRA


def load_dtype(precision: Precision, use_deepspeed: bool):
    """The dtype the weights are created in, whatever the checkpoint stores: the 16-bit compute
    dtype when DeepSpeed trains in it (its engine casts the module to it and keeps an fp32 master
    copy in the optimizer) and always in bf16-true, else fp32 (plain fp32 training, or Accelerate's
    autocast, which steps fp32 weights). memory.Workload.load_bytes_per_param makes the same choice."""
    import torch

    if precision is Precision.BF16_TRUE:
        return torch.bfloat16  # weights, gradients and Adam states all bf16, no fp32 copy
    if use_deepspeed and precision is not Precision.FP32:
        return {Precision.BF16: torch.bfloat16, Precision.FP16: torch.float16}[precision]
    return torch.float32


def build_model(
    request: ModelRequest, *, sharded: bool, unsharded_zero3: bool, plugin: Any, event: Callable[[str], None]
):
    """The task model, with an event saying how it was loaded. ``sharded``: ZeRO-3 creates it under
    zero.Init; ``unsharded_zero3``: ZeRO-3 with zero.Init turned off (``plugin`` registers the config
    again after the build)."""
    r = request
    resolved = resolve_model(r.name)
    config = task_config(resolved, r.task, r.num_labels)
    if r.label_names and r.task in (Task.NER, Task.CLASSIFICATION):
        config.id2label = dict(enumerate(r.label_names))
        config.label2id = {n: i for i, n in enumerate(r.label_names)}
    cls = auto_class(r.task)
    # An explicit dtype: transformers' default ("auto") would keep the checkpoint's own dtype, so a
    # bf16 checkpoint would train bf16 weights and bf16 Adam states under --precision fp32.
    kwargs: dict[str, Any] = {"dtype": r.dtype}
    if r.attention is not Attention.AUTO:
        kwargs["attn_implementation"] = r.attention.value
    pretrained = resolved.weights_dir is not None and not r.random_init
    if not pretrained and not r.random_init:
        raise ConfigError(
            [
                f"model: no weights for {r.name!r} on this machine; give a local folder with weights, "
                "the packaged sentence-transformers/all-MiniLM-L6-v2, or --random-init for a random-initialised test run"
            ]
        )
    if r.random_init:
        log.warning("model %s: RANDOM-INITIALISED weights (random_init=True)", r.name)
    with _without_zero3_init(plugin) if unsharded_zero3 else contextlib.nullcontext():
        if pretrained:
            model = cls.from_pretrained(resolved.weights_dir, config=config, **kwargs)
        else:
            model = cls.from_config(config, **kwargs)
    how = (
        "sharded at creation (DeepSpeed zero.Init), 1/N of each parameter per rank"
        if sharded
        else "one full copy per rank"
    )
    source = f"checkpoint {resolved.weights_dir}" if pretrained else "RANDOM-INITIALISED"
    event(f"model load: {how}, {str(r.dtype).removeprefix('torch.')} weights, {source}")
    # Decoders (GPT-2, Llama) have no pad token: a causal LM's labels and a sequence classifier's
    # "last real token" both need one, so padding reuses end-of-sequence (as the tokenizer does)
    if model.config.pad_token_id is None and model.config.eos_token_id is not None:
        model.config.pad_token_id = model.config.eos_token_id
    if r.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if r.lora_rank:
        from peft import get_peft_model

        model = get_peft_model(model, lora_config(r.task, r.lora_rank))
    return model


@contextlib.contextmanager
def _without_zero3_init(plugin: Any):
    """transformers builds a model under deepspeed.zero.Init whenever a ZeRO-3 DeepSpeed config is
    registered with it, and Accelerate registers one for every ZeRO-3 plugin whatever its
    zero3_init_flag says (accelerate 1.15 DeepSpeedPlugin.set_deepspeed_weakref). So "off" has to
    unregister it for the build, and register it again for what follows (saving, resizing)."""
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        plugin.set_deepspeed_weakref()
