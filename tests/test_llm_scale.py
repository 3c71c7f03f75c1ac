"""LLM-scale training behaviour on CPU with small random-initialised Llama-style models (labelled:
--random-init): the chosen precision wins over the checkpoint's stored dtype, ZeRO-3 creates the
model sharded unless told not to, and instruction tuning trains on the completion only."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nexa_core.runstore import RunStore

pytestmark = pytest.mark.slow


def tiny_llama(folder: Path, stored_dtype: str = "bfloat16", weights: bool = True) -> Path:
    """A 2-layer Llama (GQA: 4 query heads, 2 key/value heads) saved with weights in ``stored_dtype``;
    vocabulary 30522 so the packaged MiniLM tokenizer fits it."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(
        "llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=30522, max_position_embeddings=256, dtype=stored_dtype,
    )  # fmt: skip
    if weights:
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(config).to(getattr(torch, stored_dtype)).save_pretrained(folder)
    else:
        folder.mkdir(parents=True)
        config.save_pretrained(folder)
    return folder


def nexa_train(home: Path, *args: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "nexa_core", "train", *args, "--json"],
        capture_output=True, text=True, timeout=600, env=dict(os.environ, NEXA_HOME=str(home)),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def events(home: Path, run_id: str, prefix: str) -> list[str]:
    return [
        e["message"] for e in RunStore(home / "runs.sqlite").events(run_id) if e["message"].startswith(prefix)
    ]


FAST = [
    "--task",
    "causal-lm",
    "--max-steps",
    "2",
    "--batch-size",
    "2",
    "--seq-len",
    "32",
    "--no-eval",
    "--no-save",
]


def test_fp32_run_of_a_bf16_checkpoint_trains_fp32_weights_and_adam_states(nexa_home, tmp_path):
    model = tiny_llama(tmp_path / "llama-bf16")
    assert json.loads((model / "config.json").read_text())["dtype"] == "bfloat16"
    result = nexa_train(nexa_home, "--model", str(model), *FAST, "--precision", "fp32", "--deepspeed", "off")
    assert events(nexa_home, result["run_id"], "precision:") == [
        "precision: weights=fp32 optimizer_params=fp32 optimizer_states=fp32"
    ]
    assert "fp32" in " ".join(events(nexa_home, result["run_id"], "model load:"))


def test_bf16_deepspeed_run_of_an_fp32_checkpoint_keeps_an_fp32_master_and_states(nexa_home, tmp_path):
    model = tiny_llama(tmp_path / "llama-fp32", stored_dtype="float32")
    result = nexa_train(nexa_home, "--model", str(model), *FAST, "--precision", "bf16", "--deepspeed", "on",
                        "--zero-stage", "2")  # fmt: skip
    # DeepSpeed's bf16 mixed precision: 16-bit weights in the module, the optimizer steps an fp32
    # master copy with fp32 Adam states
    assert events(nexa_home, result["run_id"], "precision:") == [
        "precision: weights=bf16 optimizer_params=fp32 optimizer_states=fp32"
    ]
    assert math.isfinite(result["final_loss"])


def test_zero3_without_zero3_init_builds_the_whole_model_per_rank(nexa_home, tmp_path):
    model = tiny_llama(tmp_path / "llama", weights=False)
    sharded = nexa_train(nexa_home, "--model", str(model), "--random-init", *FAST, "--deepspeed", "on",
                         "--zero-stage", "3")  # fmt: skip
    whole = nexa_train(nexa_home, "--model", str(model), "--random-init", *FAST, "--deepspeed", "on",
                       "--zero-stage", "3", "--no-zero3-init")  # fmt: skip
    assert (
        "sharded at creation (DeepSpeed zero.Init)" in events(nexa_home, sharded["run_id"], "model load:")[0]
    )
    assert "one full copy per rank" in events(nexa_home, whole["run_id"], "model load:")[0]
    assert math.isfinite(whole["final_loss"]) and math.isfinite(sharded["final_loss"])


def test_instruction_tuning_on_the_bundled_sample_learns_the_answers(nexa_home, tmp_path):
    """The bundled prompt/completion sample on a small random-initialised Llama: only completion
    tokens are targets (checked on the training batches), and the loss falls to well below its start."""
    from nexa_core import datasets as nd
    from nexa_core.training_run import load_tokenizer

    model = tiny_llama(tmp_path / "llama", weights=False)
    tokenizer = load_tokenizer(str(model))
    data = nd.build_dataloaders("causal-lm", tokenizer, *nd.bundled_paths("causal-lm", "instructions"),
                                batch_size=8, seq_len=128)  # fmt: skip
    batch = next(iter(data.train_loader))
    answer_at = [row.index(tokenizer.convert_tokens_to_ids("answer")) for row in batch["input_ids"].tolist()]
    for labels, start in zip(batch["labels"].tolist(), answer_at):
        assert all(x == -100 for x in labels[: start + 2]), "prompt tokens (through 'answer :') carry no loss"
        assert any(x != -100 for x in labels[start + 2 :])
    result = nexa_train(
        nexa_home, "--model", str(model), "--random-init", "--task", "causal-lm", "--dataset", "sample:instructions",
        "--max-steps", "40", "--batch-size", "8", "--seq-len", "128", "--lr", "3e-3", "--deepspeed", "off",
        "--no-save",
    )  # fmt: skip
    losses = [
        row[1] for row in RunStore(nexa_home / "runs.sqlite").metrics(result["run_id"], ["loss"])["loss"]
    ]
    assert len(losses) == 40
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:3]) / 3, losses  # about 10.1 -> 5.3 with seed 0
    assert "eval_perplexity" in result


def test_bf16_true_trains_bf16_weights_and_adam_states_and_the_loss_falls(nexa_home, tmp_path):
    model = tiny_llama(tmp_path / "llama-fp32", stored_dtype="float32")
    result = nexa_train(nexa_home, "--model", str(model), "--task", "causal-lm", "--dataset", "sample:instructions",
                        "--max-steps", "20", "--batch-size", "8", "--seq-len", "128", "--lr", "3e-3",
                        "--precision", "bf16-true", "--deepspeed", "on", "--zero-stage", "2", "--no-save")  # fmt: skip
    assert events(nexa_home, result["run_id"], "precision:") == [
        "precision: weights=bf16 optimizer_params=bf16 optimizer_states=bf16"
    ]
    losses = [
        row[1] for row in RunStore(nexa_home / "runs.sqlite").metrics(result["run_id"], ["loss"])["loss"]
    ]
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3, losses


def test_bf16_true_with_deepspeed_stage_0_is_refused_with_the_alternative(nexa_home, tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "nexa_core", "train", "--precision", "bf16-true", "--deepspeed", "on",
         "--zero-stage", "0", "--max-steps", "1"],
        capture_output=True, text=True, timeout=300, env=dict(os.environ, NEXA_HOME=str(nexa_home)),
    )  # fmt: skip
    assert out.returncode == 2
    assert (
        "bf16-true with DeepSpeed needs ZeRO stage 1, 2 or 3" in out.stderr
        and "--deepspeed off" in out.stderr
    )


def test_a_decoder_trains_a_sequence_classifier_with_padded_batches(nexa_home, tmp_path):
    """Llama has no pad token: classifying padded batches needs one (found by the calibration)."""
    model = tiny_llama(tmp_path / "llama", weights=False)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "eos_token_id": 102}))  # MiniLM's [SEP]
    result = nexa_train(nexa_home, "--model", str(model), "--random-init", "--task", "classification",
                        "--max-steps", "2", "--batch-size", "4", "--seq-len", "32", "--deepspeed", "off")  # fmt: skip
    assert result["steps"] == 2 and math.isfinite(result["final_loss"]) and "accuracy" in result
