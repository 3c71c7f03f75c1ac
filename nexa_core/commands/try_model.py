"""`nexa try`: a run's latest checkpoint (or an exported folder) on text of one's own."""

from __future__ import annotations

import argparse
import json

from nexa_core.commands._output import print_result
from nexa_core.enums import Task
from nexa_core.errors import ConfigError


def add_try_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_id", nargs="?", metavar="RUN_ID", help="the run to try (its latest checkpoint)")
    p.add_argument("text", nargs="*", help="the text; embedding: two texts to compare")
    p.add_argument("--folder", help="an exported model folder instead of a run (safetensors)")
    p.add_argument("--task", help=f"one of {', '.join(Task.values())} (default: from the folder's model)")
    p.add_argument("--instruction", action="store_true", help="causal-lm: end the prompt with '\\nAnswer:'")
    p.add_argument(
        "--max-new-tokens", type=int, default=40, help="causal-lm: tokens to generate (default 40)"
    )
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")


def cmd_try(args: argparse.Namespace) -> int:
    from nexa_core import try_model

    texts = list(args.text)
    if args.folder:  # no run id then: every positional is text
        texts = [args.run_id, *texts] if args.run_id else texts
        folder = args.folder
    elif not args.run_id:
        raise ConfigError(["run_id: give a run id (see `nexa runs list`) or --folder PATH, then the text"])
    else:
        folder = try_model.run_folder(args.run_id)
    if not texts:
        raise ConfigError(["text: give the text to try the model on, in quotes"])
    model = try_model.load(folder, args.task)
    result = try_model.predict(
        model, texts[0], texts[1] if len(texts) > 1 else None, args.max_new_tokens, args.instruction
    )
    print_result(json.dumps(result) if args.json else try_model.as_text(result))
    return 0
