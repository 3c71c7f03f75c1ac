"""`nexa train` (one run in the foreground) and `nexa export`."""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys

from nexa_core.commands._output import print_result
from nexa_core.enums import Attention, Precision, Task
from nexa_core.errors import ConfigError


def add_train_args(p: argparse.ArgumentParser) -> None:
    from nexa_core.enums import DeepSpeedMode, Offload

    p.add_argument(
        "--config", help="a run-config JSON file (the form the app writes); flags given override it"
    )
    p.add_argument(
        "--model", help="catalogue entry, local folder or hub id (default: packaged all-MiniLM-L6-v2)"
    )
    p.add_argument("--task", help=f"one of {', '.join(Task.values())}")
    p.add_argument("--num-labels", type=int)
    p.add_argument("--dataset", help="training data, CSV or JSONL (default: the task's bundled sample)")
    p.add_argument("--eval-dataset")
    p.add_argument("--deepspeed", help=f"one of {', '.join(DeepSpeedMode.values())} (auto: on with a GPU)")
    p.add_argument("--zero-stage", type=int)
    p.add_argument("--offload-optimizer", help=f"one of {', '.join(Offload.values())}")
    p.add_argument("--offload-param", help=f"one of {', '.join(Offload.values())}")
    p.add_argument("--precision", help=f"one of {', '.join(Precision.values())}")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--seq-len", type=int)
    p.add_argument("--gradient-accumulation", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--warmup-steps", type=int)
    p.add_argument("--epochs", type=int)
    p.add_argument("--max-steps", type=int)
    p.add_argument("--lora", action="store_true", default=None)
    p.add_argument("--lora-rank", type=int)
    p.add_argument("--gradient-checkpointing", action="store_true", default=None)
    p.add_argument("--save-every", type=int)
    p.add_argument("--keep-last", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--name")
    p.add_argument("--random-init", action="store_true", default=None, help="random weights (test variants)")
    p.add_argument("--tracker", help="also log to an Accelerate tracker (tensorboard, mlflow, ...)")
    p.add_argument("--no-eval", dest="eval", action="store_false", default=None)
    p.add_argument(
        "--eval-every",
        type=int,
        help="also evaluate every N steps (validation curves); default: at the end only",
    )
    p.add_argument("--no-save", dest="save", action="store_false", default=None, help="write no checkpoint")
    p.add_argument("--pad-to-seq-len", action="store_true", default=None, help="pad every batch to --seq-len")
    p.add_argument(
        "--no-zero3-init",
        dest="zero3_init",
        action="store_false",
        default=None,
        help="ZeRO-3 without DeepSpeed zero.Init: every rank builds the whole model before it is partitioned",
    )
    p.add_argument("--attention", help=f"attention implementation: one of {', '.join(Attention.values())}")
    p.add_argument("--run-id", help="use this run id (the run manager passes it)")
    p.add_argument("--resume", metavar="RUN_ID", help="resume this run from its latest checkpoint")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object on the last line")


TRAIN_FIELDS = (
    "model task num_labels dataset eval_dataset deepspeed zero_stage offload_optimizer offload_param precision "
    "batch_size seq_len gradient_accumulation lr weight_decay warmup_steps epochs max_steps lora lora_rank gradient_checkpointing save_every "
    "keep_last seed name random_init tracker eval eval_every save pad_to_seq_len zero3_init attention"
).split()


def cmd_train(args: argparse.Namespace) -> int:
    from nexa_core import paths
    from nexa_core.train_config import TrainConfig
    from nexa_core.trainer import RunStopped
    from nexa_core.training_run import RUN_CONFIG, run_training

    overrides = {k: getattr(args, k) for k in TRAIN_FIELDS if getattr(args, k) is not None}
    if args.resume:
        base = TrainConfig.load(paths.run_dir(args.resume) / RUN_CONFIG).to_dict()
    elif args.config:
        base = TrainConfig.load(args.config).to_dict()
    else:
        base = {}
    config = TrainConfig.from_dict({**base, **overrides})
    rank = _rank_tag()
    if rank:
        # exits.failed_rank reads these: under the DeepSpeed launcher, a rank killed by a signal is
        # the one that started and never said how it ended (that launcher names no rank)
        print(
            f"nexa train: rank {os.environ['RANK']} of {os.environ['WORLD_SIZE']} started on "
            f"{socket.gethostname()} (pid {os.getpid()})",
            file=sys.stderr,
            flush=True,
        )
    try:
        result = run_training(
            config, run_id=args.resume or args.run_id, resume=bool(args.resume), progress=not args.json
        )
    except ConfigError:
        raise
    except RunStopped as exc:
        # "stopped (rank N): ..." under a launcher: exits.failed_rank counts this rank as ended
        print(f"nexa train: stopped{rank}: {exc}; resume with: nexa train --resume <run id>", file=sys.stderr)
        if args.json:
            print_result(json.dumps({"state": "stopped", "reason": str(exc)}))
        return 143  # 128 + SIGTERM, as a shell reports a terminated command
    except Exception as exc:  # a failed run: say why in one line; the run store has the details
        # with several ranks, say which one: the run's summary names the rank that failed first
        print(f"nexa train: failed{rank}: {type(exc).__name__}: {exc}", file=sys.stderr)
        if args.json:
            print_result(json.dumps({"state": "failed", "error": f"{type(exc).__name__}: {exc}"}))
        return 1
    if os.environ.get("RANK", "0") != "0":  # under a launcher every rank runs this; rank 0 reports
        return 0
    if args.json:
        print_result(json.dumps(result, default=str))
    else:
        print(
            f"run {result['run_id']} succeeded: {result['steps']} steps, final loss {result['final_loss']:.4f}"
        )
        print(f"checkpoint: {result['checkpoint_dir']}")
    return 0


def _rank_tag() -> str:
    """' (rank N)' when several ranks train together, else ''."""
    return f" (rank {os.environ.get('RANK', '?')})" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""


def add_export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN_ID_OR_CHECKPOINT_DIR")
    p.add_argument("--out", required=True, help="folder to write (must be new or empty)")
    p.add_argument("--no-merge", action="store_true", help="keep LoRA adapters separate instead of merging")


def cmd_export(args: argparse.Namespace) -> int:
    from nexa_core.export import export_checkpoint

    out = export_checkpoint(args.run, args.out, merge_lora=not args.no_merge)
    print(f"exported to {out}")
    return 0
