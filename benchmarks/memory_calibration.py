"""Measure peak host memory of real short CPU training runs and compare with the planner.

Each case is one `nexa train` process (3 optimizer steps, batches padded to --seq-len, no
checkpoint), so peaks never mix; its peak RSS comes from the kernel (wait4's ru_maxrss). The
planner's CPU-only estimate for the same configuration is printed beside it with the error.

    python benchmarks/memory_calibration.py                # measure every case, print the table
    python benchmarks/memory_calibration.py --quick        # four cases
    python benchmarks/memory_calibration.py --fit          # also fit the CPU calibration constants
    python benchmarks/memory_calibration.py --from FILE    # re-use saved measurements

Measurements are saved to benchmarks/results/memory_calibration.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nexa_core.enums import Precision, Task, Weights  # noqa: E402
from nexa_core.memory import DEFAULT_CALIBRATION, MIB, Calibration, Layout, Workload, per_rank_estimate  # noqa: E402
from nexa_core.models import size_model  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "memory_calibration.json"
MINILM = "sentence-transformers/all-MiniLM-L6-v2"


@dataclass(frozen=True)
class Case:
    name: str
    model: str = MINILM
    task: str = "ner"
    batch_size: int = 8
    seq_len: int = 128
    gradient_checkpointing: bool = False
    lora: bool = False
    deepspeed: bool = False
    zero_stage: int = 0
    offload_optimizer: bool = False
    offload_param: bool = False
    random_init: bool = False  # no offline weights: a random-initialised model of the real shape


CASES = [
    Case("minilm b8 s128"),
    Case("minilm b32 s128", batch_size=32),
    Case("minilm b8 s512", seq_len=512),
    Case("minilm b32 s256 ckpt", batch_size=32, seq_len=256, gradient_checkpointing=True),
    Case("minilm b16 s256 lora", batch_size=16, seq_len=256, lora=True),
    Case("minilm embedding b16 s128", task="embedding", batch_size=16),
    Case("minilm zero1", deepspeed=True, zero_stage=1),
    Case("minilm zero2", deepspeed=True, zero_stage=2),
    Case("minilm zero3", deepspeed=True, zero_stage=3),
    Case("minilm zero2 offload", deepspeed=True, zero_stage=2, offload_optimizer=True),
    Case(
        "minilm zero3 offload both", deepspeed=True, zero_stage=3, offload_optimizer=True, offload_param=True
    ),
    Case(
        "distilbert b16 s256", model="distilbert-base-uncased", batch_size=16, seq_len=256, random_init=True
    ),
    Case("bert-base cls b8 s128", model="bert-base-uncased", task="classification", random_init=True),
    Case(
        "bert-base zero2 b8 s256",
        model="bert-base-uncased",
        seq_len=256,
        deepspeed=True,
        zero_stage=2,
        random_init=True,
    ),
    Case("gpt2 lm b4 s256", model="gpt2", task="causal-lm", batch_size=4, seq_len=256, random_init=True),
    Case(
        "gpt2 lm b4 s256 ckpt zero3",
        model="gpt2",
        task="causal-lm",
        batch_size=4,
        seq_len=256,
        gradient_checkpointing=True,
        deepspeed=True,
        zero_stage=3,
        random_init=True,
    ),
    Case("bert-large ner b4 s128", model="bert-large-uncased", batch_size=4, random_init=True),
]
# Not used by --fit: measured after the constants were fixed, to check the fit out of sample.
HOLDOUT = [
    Case("holdout minilm cls b64 s64", task="classification", batch_size=64, seq_len=64),
    Case(
        "holdout gpt2 lora b8 s128", model="gpt2", task="causal-lm", batch_size=8, lora=True, random_init=True
    ),
    Case(
        "holdout distilbert zero2 offload b8",
        model="distilbert-base-uncased",
        deepspeed=True,
        zero_stage=2,
        offload_optimizer=True,
        random_init=True,
    ),
    Case(
        "holdout bert-base embedding b8 s64 ckpt",
        model="bert-base-uncased",
        task="embedding",
        seq_len=64,
        gradient_checkpointing=True,
        random_init=True,
    ),  # fmt: skip
]
QUICK = ["minilm b8 s128", "minilm b8 s512", "minilm zero2", "gpt2 lm b4 s256"]


def train_argv(case: Case) -> list[str]:
    argv = [sys.executable, "-m", "nexa_core", "train", "--model", case.model, "--task", case.task]
    argv += ["--batch-size", str(case.batch_size), "--seq-len", str(case.seq_len), "--max-steps", "3"]
    argv += ["--precision", "fp32", "--no-eval", "--no-save", "--pad-to-seq-len", "--json"]
    argv += ["--deepspeed", "on" if case.deepspeed else "off", "--zero-stage", str(case.zero_stage)]
    argv += ["--offload-optimizer", "cpu" if case.offload_optimizer else "none"]
    argv += ["--offload-param", "cpu" if case.offload_param else "none"]
    if case.gradient_checkpointing:
        argv.append("--gradient-checkpointing")
    if case.lora:
        argv.append("--lora")
    if case.random_init:
        argv.append("--random-init")
    return argv


def measure(case: Case, home: Path) -> dict:
    """Run the case in its own process; peak RSS from the kernel once it exits."""
    env = dict(os.environ, NEXA_HOME=str(home), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    start = time.perf_counter()
    proc = subprocess.Popen(
        train_argv(case), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    out, err = proc.communicate()
    # communicate() reaped the child; its rusage is in RUSAGE_CHILDREN only as a running max, so
    # each case runs in a fresh helper process (see main) and reads the max from there.
    if proc.returncode != 0:
        raise RuntimeError(f"{case.name}: exit {proc.returncode}\n{err[-2000:]}")
    import resource

    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"peak_rss_bytes": peak_kib * 1024, "wall_s": round(time.perf_counter() - start, 1)}


def estimate_bytes(case: Case, calibration: Calibration) -> int:
    """The planner's CPU-only host total for the case's own layout (the same function make_plan uses)."""
    size = size_model(case.model, Task(case.task), 7, 8 if case.lora else None)
    stage = case.zero_stage if case.deepspeed else 0
    layout = Layout(stage, case.offload_optimizer, case.offload_param, 0, 1)
    workload = Workload(
        size.params,
        size.trainable_params,
        size.largest_layer_params,
        size.architecture,
        Precision.FP32,
        batch_size=case.batch_size,
        seq_len=case.seq_len,
        gradient_checkpointing=case.gradient_checkpointing,
        task=Task(case.task),
        num_labels=7,
        weights=Weights.RANDOM if case.random_init else Weights.PRETRAINED,
    )
    _, host = per_rank_estimate(workload, layout, calibration)
    return host.total_bytes


def errors(rows: list[dict], calibration: Calibration) -> list[float]:
    out = []
    for row in rows:
        est = estimate_bytes(Case(**row["case"]), calibration)
        out.append((est - row["peak_rss_bytes"]) / row["peak_rss_bytes"])
    return out


def fit(rows: list[dict]) -> Calibration:
    """Grid search over the CPU constants: the smallest worst-case error among those whose median
    absolute error is within 10 % (the project's goal: median <= 10 %, no case worse than 20 %)."""
    best, best_score = DEFAULT_CALIBRATION, (True, float("inf"), float("inf"))
    grid = itertools.product(
        [int(x * MIB) for x in range(500, 1001, 25)],  # process baseline
        [int(x * MIB) for x in range(0, 401, 50)],  # DeepSpeed runtime
        [x / 10 for x in range(10, 31)],  # activation factor
        [x / 100 for x in range(0, 31, 5)],  # fragmentation
    )
    for base, ds, factor, frag in grid:
        cal = replace(
            DEFAULT_CALIBRATION,
            process_baseline_bytes=base,
            deepspeed_host_bytes=ds,
            cpu_activation_factor=factor,
            host_fragmentation=frag,
        )
        errs = [abs(e) for e in errors(rows, cal)]
        median = statistics.median(errs)
        score = (median > 0.10, round(max(errs), 3), median)
        if score < best_score:
            best, best_score = cal, score
    return best


def table(rows: list[dict], calibration: Calibration) -> str:
    lines = [f"{'case':32s} {'measured MiB':>13s} {'estimate MiB':>13s} {'error':>8s} {'wall s':>7s}"]
    errs = errors(rows, calibration)
    for row, err in zip(rows, errs):
        est = estimate_bytes(Case(**row["case"]), calibration)
        lines.append(
            f"{row['case']['name']:32s} {row['peak_rss_bytes'] / MIB:13.0f} {est / MIB:13.0f} {err:+8.1%} {row['wall_s']:7.1f}"
        )
    abs_errs = [abs(e) for e in errs]
    lines.append(
        f"median absolute error {statistics.median(abs_errs):.1%}, worst {max(abs_errs):.1%} over {len(rows)} cases"
    )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--fit", action="store_true")
    parser.add_argument("--holdout", action="store_true", help="measure the held-out cases instead")
    parser.add_argument("--from", dest="source", help="saved measurements to re-use instead of measuring")
    parser.add_argument("--case", help="(internal) measure one case by name and print JSON")
    args = parser.parse_args()
    by_name = {c.name: c for c in CASES + HOLDOUT}
    if args.case:  # child mode: a fresh process, so RUSAGE_CHILDREN holds only this case
        with tempfile.TemporaryDirectory() as home:
            print(json.dumps(measure(by_name[args.case], Path(home))))
        return 0
    if args.source:
        rows = json.loads(Path(args.source).read_text())["rows"]
    else:
        cases = HOLDOUT if args.holdout else [by_name[n] for n in QUICK] if args.quick else CASES
        rows = []
        for case in cases:
            out = subprocess.run(
                [sys.executable, __file__, "--case", case.name], capture_output=True, text=True
            )
            if out.returncode != 0:
                print(f"{case.name}: FAILED\n{out.stderr[-1500:]}", file=sys.stderr)
                continue
            rows.append({"case": asdict(case), **json.loads(out.stdout.strip().splitlines()[-1])})
            print(
                f"measured {case.name}: {rows[-1]['peak_rss_bytes'] / MIB:.0f} MiB in {rows[-1]['wall_s']} s",
                flush=True,
            )
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        out_file = RESULTS.with_name("memory_holdout.json") if args.holdout else RESULTS
        out_file.write_text(json.dumps({"measured_at": time.strftime("%Y-%m-%d"), "rows": rows}, indent=1))
    print(table(rows, DEFAULT_CALIBRATION))
    if args.fit:
        cal = fit(rows)
        print(
            f"\nfitted: process_baseline_bytes={cal.process_baseline_bytes // MIB} MiB, "
            f"deepspeed_host_bytes={cal.deepspeed_host_bytes // MIB} MiB, "
            f"cpu_activation_factor={cal.cpu_activation_factor}, host_fragmentation={cal.host_fragmentation}"
        )
        print(table(rows, cal))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
