"""Does NER fine-tuning learn? The packaged all-MiniLM-L6-v2 on the shipped utility NER set: entity F1
(seqeval) on the validation split after fine-tuning, against the same model before any learning (one
step at a learning rate of 1e-12, so the weights and the random token-classification head are as
initialised). Each run is its own `nexa train` process; wall time includes start-up.

    python benchmarks/ner_f1.py [--epochs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
COMMON = ["--model", MODEL, "--task", "ner", "--batch-size", "16", "--seq-len", "64", "--deepspeed", "off",
          "--seed", "0", "--json"]  # fmt: skip


def train(home: str, *args: str) -> tuple[dict, float]:
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "nexa_core", "train", *COMMON, *args],
        capture_output=True, text=True, check=True, env=dict(os.environ, NEXA_HOME=home, HF_HUB_OFFLINE="1"),
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1]), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        untrained, _ = train(home, "--max-steps", "1", "--lr", "1e-12", "--no-save")
        trained, seconds = train(home, "--epochs", str(args.epochs), "--lr", "2e-4", "--no-save")
    print(f"untrained (1 step at lr 1e-12): entity F1 {untrained['f1']:.3f}")
    print(
        f"fine-tuned {args.epochs} epochs (batch 16, seq 64, lr 2e-4): entity F1 {trained['f1']:.3f} "
        f"after {trained['steps']} steps, {seconds:.0f} s wall"
    )


if __name__ == "__main__":
    main()
