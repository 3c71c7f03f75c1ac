"""`nexa plan`: the memory planner from the command line."""

from __future__ import annotations

import argparse
import json
import re

from nexa_core.commands._output import print_result
from nexa_core.enums import Attention, Precision, Task

_SUFFIX = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9, "T": 10**12}


def param_count(text: str) -> int:
    """A parameter count as people write it: 1000000, 1_000_000, 1.3e9, 350M, 7B (case-insensitive)."""
    match = re.fullmatch(r"\s*([0-9][0-9_]*(?:\.[0-9]+)?(?:e[0-9]+)?)\s*([kmbgt]?)\s*", text, re.IGNORECASE)
    if match:
        value = float(match.group(1).replace("_", "")) * _SUFFIX[match.group(2).upper()]
        if value >= 1 and value == int(value):
            return int(value)
    raise argparse.ArgumentTypeError(
        f"{text!r} is not a parameter count; write e.g. 125000000, 1.3e9, 350M or 7B"
    )


def add_plan_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", help="catalogue entry, local folder with config.json, or hub id")
    p.add_argument(
        "--params",
        type=param_count,
        help="plan a hypothetical model of this many parameters: 7B, 350M, 1.3e9",
    )
    p.add_argument("--task", default=Task.NER.value, help=f"one of {', '.join(Task.values())}")
    p.add_argument("--num-labels", type=int, default=7)
    p.add_argument(
        "--precision", help=f"one of {', '.join(Precision.values())} (default: bf16 on GPU, fp32 on CPU)"
    )
    p.add_argument("--batch-size", type=int, default=8, help="micro-batch per GPU")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--lora", action="store_true")
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--gpus", type=int, help="GPUs per node (default: detected; 0 = CPU-only training)")
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--gpu-memory-gb", type=float, help="memory per GPU (default: free memory detected)")
    p.add_argument(
        "--host-memory-gb",
        type=float,
        help="host RAM per node (default: this machine's available RAM; not checked when planning for another machine)",
    )
    p.add_argument(
        "--hardware",
        help="plan for a preset machine of deployment/hardware.yaml (GPUs, GPU memory and host RAM); "
        "flags given beside it win",
    )
    p.add_argument("--list-hardware", action="store_true", help="list the hardware presets and exit")
    p.add_argument(
        "--cpu-ranks", type=int, default=1, help="processes per node of a CPU-only plan (--gpus 0)"
    )
    p.add_argument(
        "--attention",
        default=Attention.AUTO.value,
        help=f"attention implementation the run uses: one of {', '.join(Attention.values())}",
    )
    p.add_argument(
        "--random-init", action="store_true", help="the run starts from random weights (no checkpoint read)"
    )
    p.add_argument(
        "--no-zero3-init",
        dest="zero3_init",
        action="store_false",
        help="ZeRO-3 without DeepSpeed zero.Init: every rank builds the whole model before it is partitioned",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--list-models", action="store_true", help="list the catalogue and exit")


def cmd_plan(args: argparse.Namespace) -> int:
    from nexa_core import models, planner, report

    if args.list_models:
        for entry in models.catalogue().values():
            print(f"{entry.id:45s} {entry.family:8s} {entry.description}")
        return 0
    if args.list_hardware:
        from nexa_core.targets import hardware_presets

        for hw in hardware_presets().values():
            print(
                f"{hw.name:22s} {hw.gpus} × {hw.gpu_memory_gb:g} GiB, host {hw.host_memory_gb:g} GiB  {hw.description}"
            )
        return 0
    config = planner.PlanConfig(
        model=args.model if args.params is None else None,
        params=args.params,
        task=args.task,
        num_labels=args.num_labels,
        precision=args.precision,
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        gradient_checkpointing=args.gradient_checkpointing,
        lora=args.lora,
        lora_rank=args.lora_rank,
        gpus=args.gpus,
        nodes=args.nodes,
        gpu_memory_gb=args.gpu_memory_gb,
        host_memory_gb=args.host_memory_gb,
        hardware=args.hardware,
        cpu_ranks=args.cpu_ranks,
        attention=args.attention,
        random_init=args.random_init,
        zero3_init=args.zero3_init,
    )
    from nexa_core import runs

    plan = planner.make_plan(config, history=runs.local_history())
    print_result(json.dumps(plan.to_dict(), indent=2) if args.json else report.plan_text(plan))
    return 0
