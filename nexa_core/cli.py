"""The `nexa` command: the parser and the error handling; each subcommand lives in nexa_core/commands."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from nexa_core.commands._output import stdout_reserved_for_result
from nexa_core.commands.bench import (
    add_bench_args,
    add_cost_args,
    add_probe_args,
    cmd_bench,
    cmd_cost,
    cmd_probe,
)
from nexa_core.commands.ops import add_ops_args, cmd_ops
from nexa_core.commands.plan import add_plan_args, cmd_plan
from nexa_core.commands.runs import (
    add_launch_args,
    add_presets_args,
    add_runs_args,
    cmd_launch,
    cmd_presets,
    cmd_runs,
)
from nexa_core.commands.serve import add_serve_args, cmd_serve
from nexa_core.commands.train import add_export_args, add_train_args, cmd_export, cmd_train
from nexa_core.commands.try_model import add_try_args, cmd_try
from nexa_core.errors import ConfigError

# Tests and CI must never reach the hub; users who want hub ids online can set HF_HUB_OFFLINE=0.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


COMMANDS: dict[
    str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int], str]
] = {
    "plan": (add_plan_args, cmd_plan, "estimate memory for every ZeRO stage and recommend one"),
    "train": (add_train_args, cmd_train, "run one training in the foreground"),
    "export": (add_export_args, cmd_export, "write a checkpoint as a Hugging Face model folder"),
    "launch": (add_launch_args, cmd_launch, "start a run in the background and print its id"),
    "runs": (add_runs_args, cmd_runs, "list, show, follow, stop, resume or export runs"),
    "bench": (add_bench_args, cmd_bench, "measure techniques side by side and report the savings"),
    "probe": (
        add_probe_args,
        cmd_probe,
        "measure a planned configuration's real peak; find the batch size that fits",
    ),
    "cost": (add_cost_args, cmd_cost, "which instances can run a plan, and what the run costs"),
    "try": (
        add_try_args,
        cmd_try,
        "try a run's model (or an exported folder) on text: entities, labels, similarity, text",
    ),
    "presets": (add_presets_args, cmd_presets, "save, list, show and delete named launch configurations"),
    "ops": (
        add_ops_args,
        cmd_ops,
        "build DeepSpeed's C++ ops (CPU Adam, FusedAdam on GPUs) ahead of the first run",
    ),
    "serve": (add_serve_args, cmd_serve, "start the panel (refuses unsafe exposure; see docs/SECURITY.md)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nexa", description="NEXA training control panel, from the command line"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (add_args, func, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_args(p)
        p.set_defaults(func=func)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if getattr(args, "json", False):
            with stdout_reserved_for_result():
                return args.func(args)
        return args.func(args)
    except ConfigError as exc:
        # Expected mistakes: every problem on its own line, no traceback.
        for problem in exc.problems:
            print(f"nexa {args.command}: error: {problem}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
