"""ZeRO-3 with and without sharded creation (DeepSpeed zero.Init), measured side by side.

Two runs of the same 2-rank ZeRO-3 job on this machine (torchrun, gloo, CPU): a random-initialised
Llama-style decoder (SwiGLU, grouped-query attention) with LoRA adapters, fp32, micro-batch 1.
One builds the model under zero.Init (each rank creates only its half of every parameter, NEXA's
default); the other with --no-zero3-init (every rank creates the whole model, then DeepSpeed
partitions it). Each rank's peak RSS is the kernel's high-water mark (ru_maxrss), which the trainer
records per rank. The planner's host estimate for the same layout (CPU-only, 2 ranks) is printed
beside each.

LoRA freezes the base weights, so after partitioning each rank holds little besides its half of
the weights: the load is what a rank that is not sharded pays extra. DeepSpeed's default
stage3_max_live_parameters / stage3_max_reuse_distance (1e9) let a ZeRO-3 step keep every
parameter of a model below 1e9 gathered at once, which would hide the difference in the step's
peak; the benchmark sets both to --max-live (default 1e7) in the run's DeepSpeed config, and the
planner reads the same value.

    python benchmarks/zero3_sharded_init.py                     # ~1.2B parameters (the default)
    python benchmarks/zero3_sharded_init.py --hidden 1024 --layers 24   # ~0.33B
    # the figures of docs/BENCHMARKS.md of 2026-12-04 (2.02B; about 17 GiB of RAM in all):
    python benchmarks/zero3_sharded_init.py --hidden 2048 --layers 44 --vocab 8192 \
        --malloc-mmap-threshold 1048576 [--gradient-checkpointing]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nexa_core.device_manager import DEFAULT_DEEPSPEED_CONFIG  # noqa: E402
from nexa_core.memory import GIB  # noqa: E402
from nexa_core.models import DEFAULT_MODEL, resolve_model  # noqa: E402
from nexa_core.planner import PlanConfig, make_plan  # noqa: E402
from nexa_core.runstore import RunStore  # noqa: E402
from nexa_core.telemetry import PEAK_RSS_METRIC  # noqa: E402


def write_model(folder: Path, hidden: int, layers: int, vocab: int, tied: bool) -> Path:
    """A Llama-style config (no weights: the runs are --random-init); intermediate 2.75h rounded to 64."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": int(hidden * 2.75) // 64 * 64,
        "num_hidden_layers": layers,
        "num_attention_heads": hidden // 64,
        "num_key_value_heads": max(1, hidden // 256),
        "vocab_size": vocab,
        "max_position_embeddings": 2048,
        "tie_word_embeddings": tied,
    }
    (folder / "config.json").write_text(json.dumps(config))
    # NEXA falls back to the packaged MiniLM tokenizer for a folder without one; a smaller
    # vocabulary needs its own (nexa_core.models.load_tokenizer refuses it otherwise)
    if vocab < int(resolve_model(DEFAULT_MODEL).config["vocab_size"]):
        write_tokenizer(folder, vocab)
    return folder


def write_tokenizer(folder: Path, vocab: int) -> None:
    """A byte-level BPE tokenizer of at most ``vocab`` tokens, trained on the bundled causal-LM sample,
    so that a vocabulary smaller than the packaged fallback's can be benchmarked (tokenizers library)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from nexa_core.datasets import bundled_paths, load_records

    texts = [r["text"] for r in load_records(bundled_paths("causal-lm")[0], "causal-lm")]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    tokenizer.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )
    fast.save_pretrained(folder)


def write_deepspeed_config(path: Path, max_live: int) -> Path:
    config = json.loads(DEFAULT_DEEPSPEED_CONFIG.read_text())
    zero = config["zero_optimization"]
    zero["stage3_max_live_parameters"] = max_live
    zero["stage3_max_reuse_distance"] = max_live
    path.write_text(json.dumps(config, indent=2))
    return path


def train_args(seq_len: int, steps: int) -> list[str]:
    return ["--task", "causal-lm", "--random-init", "--lora", "--precision", "fp32", "--batch-size", "1",
            "--seq-len", str(seq_len), "--max-steps", str(steps), "--no-eval", "--no-save", "--deepspeed", "on",
            "--zero-stage", "3", "--offload-optimizer", "none", "--offload-param", "none"]  # fmt: skip


def run(model: Path, sharded: bool, ds_config: Path, port: int, args: argparse.Namespace) -> list[int]:
    """One 2-rank run in a fresh NEXA_HOME; each rank's kernel peak RSS in bytes."""
    with tempfile.TemporaryDirectory() as home:
        env = dict(os.environ, NEXA_HOME=home, NEXA_RUN_ID="bench", DEEPSPEED_CONFIG_FILE=str(ds_config),
                   HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")  # fmt: skip
        # glibc: freed blocks above this size go back to the kernel (docs/MEMORY.md)
        if args.malloc_mmap_threshold:
            env["MALLOC_MMAP_THRESHOLD_"] = str(args.malloc_mmap_threshold)
        torchrun = Path(sys.executable).parent / "torchrun"
        argv = [str(torchrun), "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(port),
                "-m", "nexa_core", "train", "--model", str(model), *train_args(args.seq_len, args.steps)]  # fmt: skip
        if not sharded:
            argv.append("--no-zero3-init")
        if args.gradient_checkpointing:
            argv.append("--gradient-checkpointing")
        out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=3600)
        if out.returncode != 0:
            raise SystemExit(f"run failed (sharded={sharded}):\n{out.stderr[-3000:]}")
        peaks = RunStore(Path(home) / "runs.sqlite").metric_maxima("bench", PEAK_RSS_METRIC)
        return [int(peaks[f"{PEAK_RSS_METRIC}{r}"]) for r in range(2)]


def estimate_per_rank(model: Path, sharded: bool, args: argparse.Namespace) -> tuple[int, int]:
    """(planner's host bytes per rank, exact parameter count) for this layout."""
    plan = make_plan(
        PlanConfig(model=str(model), task="causal-lm", precision="fp32", batch_size=1, seq_len=args.seq_len, lora=True,
                   gpus=0, cpu_ranks=2, random_init=True, zero3_init=sharded, host_memory_gb=1024,
                   gradient_checkpointing=args.gradient_checkpointing)
    )  # fmt: skip
    (z3,) = [e for e in plan.estimates if e.layout.zero_stage == 3 and not e.layout.offload_optimizer]
    return z3.host.total_bytes // 2, plan.size.params


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument(
        "--vocab",
        type=int,
        default=32000,
        help="vocabulary size (the embedding and LM head are the largest gathers)",
    )
    parser.add_argument(
        "--tie-embeddings", action="store_true", help="one matrix for the embedding and LM head"
    )
    parser.add_argument("--max-live", type=int, default=10**7, help="stage3_max_live_parameters (and reuse)")
    parser.add_argument(
        "--malloc-mmap-threshold", type=int, help="set glibc's MALLOC_MMAP_THRESHOLD_ for both runs (bytes)"
    )
    parser.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        help="keep one activation per layer (as LLM fine-tunes do)",
    )
    parser.add_argument("--seq-len", type=int, default=64, help="tokens per sequence (batch 1)")
    parser.add_argument("--steps", type=int, default=2, help="training steps per run")
    parser.add_argument("--json", dest="json_out", help="also write the figures to this file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = write_model(Path(tmp) / "llama", args.hidden, args.layers, args.vocab, args.tie_embeddings)
        ds_config = write_deepspeed_config(Path(tmp) / "deepspeed_config.json", args.max_live)
        os.environ["DEEPSPEED_CONFIG_FILE"] = str(ds_config)  # the planner reads the same max-live value
        rows = {}
        for sharded, port in ((True, 29611), (False, 29612)):
            estimate, params = estimate_per_rank(model, sharded, args)
            measured = run(model, sharded, ds_config, port, args)
            rows["sharded" if sharded else "whole"] = {
                "measured_per_rank": measured,
                "estimate_per_rank": estimate,
            }
    print(f"2-rank ZeRO-3 + LoRA r8, fp32, random-initialised Llama-style decoder of {params:,} parameters "
          f"(hidden {args.hidden}, {args.layers} layers, vocabulary {args.vocab:,}, "
          f"{'tied' if args.tie_embeddings else 'untied'} embeddings; gradient checkpointing "
          f"{'on' if args.gradient_checkpointing else 'off'}; sequence {args.seq_len}, {args.steps} steps); stage3_max_live_parameters {args.max_live:.0e}; MALLOC_MMAP_THRESHOLD_ "
          f"{args.malloc_mmap_threshold or 'not set (glibc default)'}")  # fmt: skip
    print(
        f"{'creation':34s} {'rank 0 GiB':>10s} {'rank 1 GiB':>10s} {'estimate GiB':>12s} {'error (worst rank)':>19s}"
    )
    for name, label in (("sharded", "sharded (zero.Init, NEXA default)"), ("whole", "whole model per rank")):
        r = rows[name]
        worst = max(abs(r["estimate_per_rank"] / m - 1) for m in r["measured_per_rank"])
        r["worst_error"] = worst
        print(f"{label:34s} {r['measured_per_rank'][0] / GIB:10.2f} {r['measured_per_rank'][1] / GIB:10.2f} "
              f"{r['estimate_per_rank'] / GIB:12.2f} {worst:19.1%}")  # fmt: skip
    ratio = max(rows["sharded"]["measured_per_rank"]) / max(rows["whole"]["measured_per_rank"])
    print(f"peak per rank, sharded / whole: {ratio:.2f} (the larger rank of each run)")
    if args.json_out:
        Path(args.json_out).write_text(
            json.dumps(
                {
                    "params": params,
                    "hidden": args.hidden,
                    "layers": args.layers,
                    "vocab": args.vocab,
                    "tied_embeddings": args.tie_embeddings,
                    "gradient_checkpointing": args.gradient_checkpointing,
                    "seq_len": args.seq_len,
                    "steps": args.steps,
                    "max_live": args.max_live,
                    "malloc_mmap_threshold": args.malloc_mmap_threshold,
                    "ratio": ratio,
                    **rows,
                },
                indent=2,
            )  # fmt: skip
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
