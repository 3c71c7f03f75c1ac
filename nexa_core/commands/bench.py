"""`nexa bench`, `nexa probe` and `nexa cost`: measured comparisons, probe runs, the cost view."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from nexa_core.commands._output import print_result
from nexa_core.commands.plan import add_plan_args
from nexa_core.commands.train import TRAIN_FIELDS, add_train_args
from nexa_core.enums import Task
from nexa_core.errors import ConfigError, raise_if
from nexa_core.paths import output_problems


def add_bench_args(p: argparse.ArgumentParser) -> None:
    from nexa_core.bench import DEFAULT_STEPS, MIN_TIMED_STEPS, SKIP_STEPS, TECHNIQUES

    p.add_argument(
        "model",
        nargs="?",
        default="sentence-transformers/all-MiniLM-L6-v2",
        help="catalogue entry or local folder; without weights it is random-initialised (default: %(default)s)",
    )
    p.add_argument("--task", default=Task.NER.value, help=f"one of {', '.join(Task.values())}")
    p.add_argument(
        "--techniques",
        default="baseline,zero2,zero3,zero3-offload,lora",
        help=f"comma-separated, from {', '.join(TECHNIQUES)} (default: %(default)s)",
    )
    p.add_argument(
        "--steps", type=int, default=DEFAULT_STEPS,
        help=f"steps per technique (default %(default)s); the first {SKIP_STEPS} are not timed, and step-time "
             f"ratios from fewer than {MIN_TIMED_STEPS} timed steps are marked too noisy",
    )  # fmt: skip
    p.add_argument("--batch-size", type=int, default=8, help="micro-batch (default: %(default)s)")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per sample (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print one JSON object with `rows`")
    p.add_argument("--report", help="also write a self-contained HTML report here")
    p.add_argument("--csv", help="also write the table as CSV here")
    p.add_argument("--png-dir", help="also write the charts as PNG images (memory.png, slowdown.png) here")
    p.add_argument("--save-as", help="the comparison's id (default: a new one; the Compare page lists it)")


def cmd_bench(args: argparse.Namespace) -> int:
    from nexa_core.bench import BenchConfig
    from nexa_core.bench_report import (
        CHARTS,
        PNG_NEEDS_A_BROWSER,
        png_browser,
        table_rows,
        to_csv,
        to_html,
        to_png,
    )
    from nexa_core.comparisons import start_comparison, wait_comparison

    config = BenchConfig(
        model=args.model,
        task=args.task,
        techniques=tuple(t.strip() for t in args.techniques.split(",") if t.strip()),
        steps=args.steps,
        batch_size=args.batch_size,
        seq_len=args.seq_len,
    )
    if args.png_dir and png_browser() is None:  # say so before minutes of measuring, not after
        raise ConfigError([PNG_NEEDS_A_BROWSER])
    outputs = [("report (--report)", args.report, False), ("csv (--csv)", args.csv, False),
               ("png_dir (--png-dir)", args.png_dir, True)]  # fmt: skip
    raise_if(
        [p for field, value, folder in outputs if value for p in output_problems(field, Path(value), folder)]
    )
    comparison_id, _ = start_comparison(config, comparison_id=args.save_as)
    print(f"comparison {comparison_id}: one queued run per technique (nexa runs queue; the Compare page "
          "shows it too); stopping this command leaves them running", file=sys.stderr, flush=True)  # fmt: skip

    def report(state: dict) -> None:
        p = state["progress"]
        print(f"[{p['done']}/{p['total']}] {p['current']}: {p['phase']}", file=sys.stderr, flush=True)

    state = wait_comparison(comparison_id, report=report)
    result = state["result"] if "result" in state else None
    if result is None:  # an older comparison's bench never wrote one
        raise ConfigError([f"comparison {comparison_id}: {state.get('reason')}"])
    if args.report:
        Path(args.report).write_text(to_html(result), encoding="utf-8")
    if args.csv:
        Path(args.csv).write_text(to_csv(result), encoding="utf-8")
    if args.png_dir:
        for chart in CHARTS:
            (Path(args.png_dir) / f"{chart}.png").write_bytes(to_png(result, chart))
    if args.json:
        print_result(json.dumps(result, default=str))
    else:
        for row in table_rows(result):
            print(" | ".join(f"{k}: {v}" for k, v in row.items() if v is not None))
    if state["state"] == "failed":
        print(f"nexa bench: error: {state['reason']}", file=sys.stderr)
        return 1
    return 0


def add_probe_args(p: argparse.ArgumentParser) -> None:
    add_train_args(p)
    p.add_argument(
        "--find-batch-size", action="store_true", help="search the largest micro-batch under --budget-gb"
    )
    p.add_argument("--budget-gb", type=float, help="memory budget (GiB): host RSS on CPU, per GPU with GPUs")
    p.add_argument("--max-batch", type=int, default=256)


def cmd_probe(args: argparse.Namespace) -> int:
    from nexa_core.hardware import list_gpus
    from nexa_core.probe import find_batch_size, probe
    from nexa_core.train_config import TrainConfig

    overrides = {k: getattr(args, k) for k in TRAIN_FIELDS if getattr(args, k) is not None}
    base = TrainConfig.load(args.config).to_dict() if args.config else {}
    config = TrainConfig.from_dict({**base, **overrides})
    on_gpu = bool(list_gpus())
    budget = int(args.budget_gb * 2**30) if args.budget_gb else None
    if args.find_batch_size:
        if budget is None:
            raise ConfigError(["budget_gb (--budget-gb): --find-batch-size needs a memory budget"])

        def report(p) -> None:
            if not args.json:
                peak = (p.peak_gpu_bytes if on_gpu else p.peak_host_rss_bytes) or 0
                print(
                    f"batch {p.batch_size}: {'fits' if p.fits else 'does not fit'} (peak {peak / 2**30:.2f} GiB, {p.state})",
                    file=sys.stderr,
                )

        result = find_batch_size(config, budget, max_batch=args.max_batch, on_gpu=on_gpu, progress=report)
    else:
        result = probe(config, budget, on_gpu).__dict__
    print_result(json.dumps(result, default=str) if args.json else json.dumps(result, default=str, indent=2))
    if result.get("error"):
        print(f"nexa probe: error: the search stopped: {result['error']}", file=sys.stderr)
        return 1
    return 0


def add_cost_args(p: argparse.ArgumentParser) -> None:
    add_plan_args(p)
    p.add_argument(
        "--tokens", type=int, required=True, help="training tokens (samples × sequence length × epochs)"
    )
    p.add_argument(
        "--samples-per-s", type=float,
        help="a throughput measured on one device (needs --measured-on); instances of other device types "
             "use the FLOPs model",
    )  # fmt: skip
    p.add_argument(
        "--measured-on",
        help="the device --samples-per-s was measured on: cpu, or a GPU name as nvidia-smi shows it",
    )
    p.add_argument("--instances", help="instance catalogue YAML (default deployment/instances.yaml)")


def cmd_cost(args: argparse.Namespace) -> int:
    from nexa_core.costs import DEFAULT_INSTANCES, Measured, cost_view, device_choices
    from nexa_core.planner import PlanConfig

    catalogue = args.instances or DEFAULT_INSTANCES
    measured = None
    if (args.samples_per_s is None) != (args.measured_on is None):
        raise ConfigError([f"samples_per_s (--samples-per-s) and measured_on (--measured-on): give both or "
                           f"neither; --measured-on is one of {', '.join(device_choices(catalogue))} (or another "
                           "GPU name as nvidia-smi shows it)"])  # fmt: skip
    if args.samples_per_s is not None:
        if not args.samples_per_s > 0:
            raise ConfigError([f"samples_per_s (--samples-per-s): must be above 0, got {args.samples_per_s}"])
        measured = Measured(args.samples_per_s, args.measured_on.strip())

    config = PlanConfig(
        model=args.model if args.params is None else None, params=args.params, task=args.task,
        num_labels=args.num_labels, precision=args.precision, batch_size=args.batch_size, seq_len=args.seq_len,
        gradient_checkpointing=args.gradient_checkpointing, lora=args.lora, lora_rank=args.lora_rank, nodes=args.nodes,
    )  # fmt: skip
    rows = cost_view(config, args.tokens, measured, catalogue)
    if args.json:
        print_result(json.dumps(rows))
    else:
        for r in rows:
            cost = f"${r['cost']:.2f}" if r["cost"] is not None else "n/a"
            print(
                f"{r['instance']:16s} {cost:>10s}  recommended: {r['recommended'] or 'nothing fits'}  ({r['throughput_source']})"
            )
    return 0
