"""`nexa ops`: build DeepSpeed's C++ ops ahead of the first run (nexa_core/deepspeed_ops.py)."""

from __future__ import annotations

import argparse
import json

from nexa_core.commands._output import print_result


def add_ops_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the outcome of each op as JSON")


def cmd_ops(args: argparse.Namespace) -> int:
    """Exit 0 when every op this machine's runs load is ready, 1 otherwise (the run would build it)."""
    from nexa_core.deepspeed_ops import build_ops

    results = build_ops()
    if args.json:
        print_result(json.dumps([{"op": r.op, "ready": r.ready, "detail": r.detail} for r in results]))
    else:
        for r in results:
            print_result(r.line())
    return 0 if all(r.ready for r in results) else 1
