"""bf16-true against fp32 on this CPU, side by side: the same fine-tune (the packaged MiniLM on the
bundled NER sample, batches padded to the sequence length, DeepSpeed off), each its own
`nexa train` process. Prints each run's kernel peak RSS beside the planner's host estimate, the
dtypes the run really held (its `precision:` event), the loss at the start and the end, and the
validation F1.

    python benchmarks/bf16_true.py [--steps 60]
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

from nexa_core.memory import MIB  # noqa: E402
from nexa_core.planner import PlanConfig, make_plan  # noqa: E402
from nexa_core.runstore import RunStore  # noqa: E402
from nexa_core.telemetry import PEAK_RSS_METRIC  # noqa: E402

BATCH, SEQ = 16, 128


def run(precision: str, steps: int) -> dict:
    with tempfile.TemporaryDirectory() as home:
        argv = [sys.executable, "-m", "nexa_core", "train", "--task", "ner", "--precision", precision,
                "--deepspeed", "off", "--batch-size", str(BATCH), "--seq-len", str(SEQ), "--pad-to-seq-len",
                "--max-steps", str(steps), "--lr", "2e-4", "--no-save", "--json"]  # fmt: skip
        env = dict(os.environ, NEXA_HOME=home, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
        out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=3600)
        if out.returncode != 0:
            raise SystemExit(f"{precision}: {out.stderr[-2000:]}")
        result = json.loads(out.stdout.strip().splitlines()[-1])
        store = RunStore(Path(home) / "runs.sqlite")
        losses = [row[1] for row in store.metrics(result["run_id"], ["loss"])["loss"]]
        (held,) = [
            e["message"] for e in store.events(result["run_id"]) if e["message"].startswith("precision:")
        ]
        peak = max(store.metric_maxima(result["run_id"], PEAK_RSS_METRIC).values())
    plan = make_plan(PlanConfig(task="ner", precision=precision, batch_size=BATCH, seq_len=SEQ, gpus=0,
                                host_memory_gb=64))  # fmt: skip
    estimate = next(e for e in plan.estimates if e.layout.zero_stage == 0).host.total_bytes
    return {"precision": precision, "peak_rss_bytes": int(peak), "estimate_bytes": estimate, "held": held,
            "loss_first3": sum(losses[:3]) / 3, "loss_last3": sum(losses[-3:]) / 3, "f1": result.get("f1")}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--json", dest="json_out")
    args = parser.parse_args()
    rows = [run(p, args.steps) for p in ("fp32", "bf16-true")]
    print(f"MiniLM NER, batch {BATCH} × {SEQ} (padded), {args.steps} steps, DeepSpeed off, this CPU")
    print(
        f"{'precision':10s} {'peak MiB':>9s} {'estimate':>9s} {'error':>7s} {'loss 1-3':>9s} {'loss last 3':>11s} {'F1':>6s}  held"
    )
    for r in rows:
        err = r["estimate_bytes"] / r["peak_rss_bytes"] - 1
        print(f"{r['precision']:10s} {r['peak_rss_bytes'] / MIB:9.0f} {r['estimate_bytes'] / MIB:9.0f} {err:+7.1%} "
              f"{r['loss_first3']:9.3f} {r['loss_last3']:11.3f} {r['f1'] or 0:6.3f}  {r['held']}")  # fmt: skip
    print(f"peak RSS, bf16-true / fp32: {rows[1]['peak_rss_bytes'] / rows[0]['peak_rss_bytes']:.2f}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
