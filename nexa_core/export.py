"""Export a checkpoint to a standard Hugging Face folder (safetensors, config, tokenizer).

DeepSpeed checkpoints are consolidated with DeepSpeed's own zero_to_fp32 utilities; plain
Accelerate checkpoints hold ``model.safetensors`` already. LoRA adapters are merged into the base
weights (``merge=True``) or saved as a peft adapter folder next to the base config.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from nexa_core import paths
from nexa_core.enums import Task
from nexa_core.errors import ConfigError, raise_if
from nexa_core.train_config import TrainConfig


def _locate(run_or_checkpoint: str) -> tuple[Path, Path]:
    """(run folder, checkpoint folder) from a run id, a run folder or a checkpoint folder."""
    from nexa_core.checkpoints import COMPLETE_MARKER, latest_checkpoint

    candidate = Path(run_or_checkpoint).expanduser()
    if candidate.is_dir() and (candidate / COMPLETE_MARKER).exists():
        return candidate.parent.parent, candidate
    run_dir = candidate if candidate.is_dir() else paths.run_dir(run_or_checkpoint)
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        raise ConfigError(
            [
                f"run: no complete checkpoint found for {run_or_checkpoint!r} (looked in {run_dir / 'checkpoints'})"
            ]
        )
    return run_dir, ckpt


def _state_dict(ckpt: Path) -> dict:
    deepspeed_dirs = [p for p in ckpt.iterdir() if p.is_dir() and any(p.glob("*model_states.pt"))]
    if deepspeed_dirs:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        tag = deepspeed_dirs[0].name
        from nexa_core.safe_load import weights_only_torch_load

        with weights_only_torch_load():  # zero_to_fp32 would unpickle anything a *.pt file holds
            return get_fp32_state_dict_from_zero_checkpoint(str(ckpt), tag=tag)
    from safetensors.torch import load_file

    files = sorted(ckpt.glob("model*.safetensors"))
    if not files:
        raise ConfigError([f"checkpoint: {ckpt} has neither DeepSpeed states nor model.safetensors"])
    state: dict = {}
    for f in files:
        state.update(load_file(str(f)))
    return state


def _out_problems(out: Path) -> list[str]:
    """Why ``out`` cannot take an export (it must be a new or an empty folder); [] when it can."""
    try:
        if out.exists() and not out.is_dir():
            return [f"out (--out): {out} is a file; give a folder that is new or empty"]
        if out.is_dir() and any(out.iterdir()):
            return [f"out (--out): {out} exists and is not empty"]
    except OSError as exc:
        return [f"out (--out): cannot read {out} ({exc.strerror})"]
    return []


def export_checkpoint(run_or_checkpoint: str, out_dir: str | Path, merge_lora: bool = True) -> Path:
    """Write a folder that ``AutoModelFor<task>.from_pretrained(out_dir)`` loads."""
    import torch

    from nexa_core.models import auto_class, lora_config, resolve_model, task_config

    problems = _out_problems(Path(out_dir))
    try:
        run_dir, ckpt = _locate(run_or_checkpoint)
    except ConfigError as exc:
        problems += exc.problems
    raise_if(problems)  # both checked, and before anything is loaded
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # e.g. a folder above it is a file, or no permission
        raise ConfigError([f"out (--out): cannot create {out} ({exc.strerror})"]) from None
    config = TrainConfig.load(run_dir / "run_config.json")
    labels = json.loads((run_dir / "labels.json").read_text()) if (run_dir / "labels.json").exists() else []
    task = Task.parse(config.task, "task")
    resolved = resolve_model(config.model)
    model_config = task_config(resolved, task, config.num_labels or len(labels) or 7)
    if labels and task in (Task.NER, Task.CLASSIFICATION):
        model_config.id2label = dict(enumerate(labels))
        model_config.label2id = {n: i for i, n in enumerate(labels)}
    model = auto_class(task).from_config(model_config)
    if config.lora:
        from peft import get_peft_model

        model = get_peft_model(model, lora_config(task, config.lora_rank))
    state = _state_dict(ckpt)
    missing, unexpected = model.load_state_dict(state, strict=False)
    # Tied weights (e.g. GPT-2's lm_head) are saved once; anything else missing is an error.
    tied = {k for k in missing if k.endswith("lm_head.weight") or "decoder.weight" in k}
    if set(missing) - tied or unexpected:
        raise ConfigError(
            [
                f"checkpoint: weights do not match the model: missing {sorted(set(missing) - tied)[:5]}, unexpected {unexpected[:5]}"
            ]
        )
    if config.lora and not merge_lora:
        # The adapter alone (peft format) in adapter/, the untouched base beside it, so both load
        # offline: AutoModel*.from_pretrained(out) and PeftModel.from_pretrained(base, out/"adapter").
        model.save_pretrained(out / "adapter", safe_serialization=True)
        model = model.unload()
    elif config.lora:
        model = model.merge_and_unload()
    model = model.to(torch.float32)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer_dir = run_dir / "tokenizer"
    if tokenizer_dir.is_dir():
        for f in tokenizer_dir.iterdir():
            shutil.copy2(f, out / f.name)
    return out
