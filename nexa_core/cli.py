"""The `nexa` command: one small function per subcommand, all logic in nexa_core modules."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TextIO

from nexa_core.enums import Precision, Task
from nexa_core.errors import ConfigError

# Tests and CI must never reach the hub; users who want hub ids online can set HF_HUB_OFFLINE=0.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


_RESULT_OUT: TextIO | None = None  # where --json documents go; None: sys.stdout


def _print_result(text: str) -> None:
    print(text, file=_RESULT_OUT or sys.stdout, flush=True)


@contextmanager
def _stdout_reserved_for_result() -> Iterator[None]:
    """With --json, stdout carries the JSON document only. DeepSpeed logs to stdout when imported
    ("Setting accelerator to CPU") and child processes inherit fd 1, so during the command both fd 1
    and sys.stdout point at stderr, and the result is written to the saved stdout."""
    global _RESULT_OUT
    if sys.stdout is not sys.__stdout__:  # an in-process caller (a test) already captures stdout
        yield
        return
    sys.stdout.flush()
    saved_fd = os.dup(1)
    os.dup2(2, 1)
    _RESULT_OUT, sys.stdout = os.fdopen(saved_fd, "w"), sys.stderr
    try:
        yield
    finally:
        _RESULT_OUT.flush()
        os.dup2(saved_fd, 1)
        _RESULT_OUT.close()
        _RESULT_OUT, sys.stdout = None, sys.__stdout__


def _add_plan_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", help="catalogue entry, local folder with config.json, or hub id")
    p.add_argument("--params", type=int, help="plan a hypothetical model of this many parameters")
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
    p.add_argument("--host-memory-gb", type=float, help="host RAM per node (default: available RAM)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--list-models", action="store_true", help="list the catalogue and exit")


def cmd_plan(args: argparse.Namespace) -> int:
    from nexa_core import models, planner, report

    if args.list_models:
        for entry in models.catalogue().values():
            print(f"{entry.id:45s} {entry.family:8s} {entry.description}")
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
    )
    plan = planner.make_plan(config)
    _print_result(json.dumps(plan.to_dict(), indent=2) if args.json else report.plan_text(plan))
    return 0


def _add_train_args(p: argparse.ArgumentParser) -> None:
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
    p.add_argument("--no-save", dest="save", action="store_false", default=None, help="write no checkpoint")
    p.add_argument("--pad-to-seq-len", action="store_true", default=None, help="pad every batch to --seq-len")
    p.add_argument("--run-id", help="use this run id (the run manager passes it)")
    p.add_argument("--resume", metavar="RUN_ID", help="resume this run from its latest checkpoint")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object on the last line")


_TRAIN_FIELDS = (
    "model task num_labels dataset eval_dataset deepspeed zero_stage offload_optimizer offload_param precision "
    "batch_size seq_len gradient_accumulation lr epochs max_steps lora lora_rank gradient_checkpointing save_every "
    "keep_last seed name random_init tracker eval save pad_to_seq_len"
).split()


def cmd_train(args: argparse.Namespace) -> int:
    from nexa_core import paths
    from nexa_core.train_config import TrainConfig
    from nexa_core.trainer import RunStopped
    from nexa_core.training_run import RUN_CONFIG, run_training

    overrides = {k: getattr(args, k) for k in _TRAIN_FIELDS if getattr(args, k) is not None}
    if args.resume:
        base = TrainConfig.load(paths.run_dir(args.resume) / RUN_CONFIG).to_dict()
    elif args.config:
        base = TrainConfig.load(args.config).to_dict()
    else:
        base = {}
    config = TrainConfig.from_dict({**base, **overrides})
    try:
        result = run_training(
            config, run_id=args.resume or args.run_id, resume=bool(args.resume), progress=not args.json
        )
    except ConfigError:
        raise
    except RunStopped as exc:
        print(f"nexa train: {exc}; resume with: nexa train --resume <run id>", file=sys.stderr)
        if args.json:
            _print_result(json.dumps({"state": "stopped", "reason": str(exc)}))
        return 143  # 128 + SIGTERM, as a shell reports a terminated command
    except Exception as exc:  # a failed run: say why in one line; the run store has the details
        # with several ranks, say which one: the run's summary names the rank that failed first
        rank = f" (rank {os.environ.get('RANK', '?')})" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
        print(f"nexa train: failed{rank}: {type(exc).__name__}: {exc}", file=sys.stderr)
        if args.json:
            _print_result(json.dumps({"state": "failed", "error": f"{type(exc).__name__}: {exc}"}))
        return 1
    if os.environ.get("RANK", "0") != "0":  # under a launcher every rank runs this; rank 0 reports
        return 0
    if args.json:
        _print_result(json.dumps(result, default=str))
    else:
        print(
            f"run {result['run_id']} succeeded: {result['steps']} steps, final loss {result['final_loss']:.4f}"
        )
        print(f"checkpoint: {result['checkpoint_dir']}")
    return 0


def _add_export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN_ID_OR_CHECKPOINT_DIR")
    p.add_argument("--out", required=True, help="folder to write (must be new or empty)")
    p.add_argument("--no-merge", action="store_true", help="keep LoRA adapters separate instead of merging")


def cmd_export(args: argparse.Namespace) -> int:
    from nexa_core.export import export_checkpoint

    out = export_checkpoint(args.run, args.out, merge_lora=not args.no_merge)
    print(f"exported to {out}")
    return 0


def _add_launch_args(p: argparse.ArgumentParser) -> None:
    from nexa_core.launch import LaunchMode

    _add_train_args(p)
    # Launch fields default to None so that a preset's or a past run's values hold unless given.
    p.add_argument("--preset", help="start from this saved preset (flags given override it)")
    p.add_argument("--from-run", metavar="RUN_ID", help="start from this past run's configuration")
    p.add_argument("--mode", help=f"one of {', '.join(LaunchMode.values())} (default python)")
    p.add_argument("--nproc", type=int, help="ranks on this node (torchrun, deepspeed, accelerate)")
    p.add_argument("--gpus", help="physical GPU ids as nvidia-smi shows them, e.g. 0,2")
    p.add_argument("--master-port", type=int, help="rendezvous port (default: a free one)")
    # several machines (docs/SCALING.md); the other nodes' commands are printed at launch
    p.add_argument("--nodes", type=int, help="machines taking part (default 1)")
    p.add_argument("--node-rank", type=int, help="which node this machine is (default 0)")
    p.add_argument("--master-addr", help="address of node 0 that every node reaches")
    p.add_argument("--host", action="append", help="'name slots=N' (repeat per machine)")
    p.add_argument("--include", help="deepspeed --include filter, e.g. worker-0@worker-1:0,2")
    p.add_argument("--exclude", help="deepspeed --exclude filter")
    p.add_argument(
        "--ssh-launcher", action="store_true", default=None, help="deepspeed starts every node over ssh/pdsh"
    )


def _parse_gpus(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError([f"gpus (--gpus): comma-separated GPU ids like 0,1; got {text!r}"]) from None


def _spec_from_args(args: argparse.Namespace):
    """The RunSpec that `nexa launch` / `nexa presets save` flags describe, on top of a preset, a
    past run (--from-run) or a run-config file when one is named."""
    from nexa_core import paths, presets
    from nexa_core.launch import RunSpec
    from nexa_core.train_config import TrainConfig

    sources = [f for f in ("config", "preset", "from_run") if getattr(args, f)]
    if len(sources) > 1:
        raise ConfigError([f"{', '.join(sources)}: start from one of --config, --preset, --from-run"])
    base = None
    if args.preset:
        base = presets.load(args.preset)
    elif args.from_run:
        base = presets.of_run(paths.run_dir(args.from_run), args.from_run)
    train = base.train.to_dict() if base else TrainConfig.load(args.config).to_dict() if args.config else {}
    overrides = {k: getattr(args, k) for k in _TRAIN_FIELDS if getattr(args, k) is not None}
    config = TrainConfig.from_dict({**train, **overrides})
    given = {
        "mode": args.mode, "nproc": args.nproc, "gpus": None if args.gpus is None else _parse_gpus(args.gpus),
        "master_port": args.master_port, "nodes": args.nodes, "node_rank": args.node_rank,
        "master_addr": args.master_addr, "hosts": args.host, "include": args.include, "exclude": args.exclude,
        "ssh_launcher": args.ssh_launcher,
    }  # fmt: skip
    launch = {**(base.to_dict() if base else {}), **{k: v for k, v in given.items() if v is not None}}
    return RunSpec.from_dict(config, launch)


def cmd_launch(args: argparse.Namespace) -> int:
    from nexa_core import runner, runs

    if args.resume:
        run_id = runner.resume(args.resume)
    else:
        spec = _spec_from_args(args)
        run_id = runner.launch(spec, run_id=args.run_id, estimate=runs.estimate_for(spec))
        from nexa_core import paths, scaling

        for node in scaling.node_commands(spec, run_id, paths.run_dir(run_id)):
            if not node.by_panel:  # stderr: --json keeps stdout to one JSON line
                print(f"node {node.node_rank} ({node.host}), run there: {node.text()}", file=sys.stderr)
    _print_result(
        json.dumps({"run_id": run_id}) if args.json else f"launched {run_id} (nexa runs show {run_id})"
    )
    return 0


def _add_presets_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["list", "show", "save", "delete"])
    p.add_argument("preset_name", nargs="?", metavar="NAME", help="the preset's name (show, save, delete)")
    # save takes the same flags as launch (and --preset / --from-run to copy one)
    _add_launch_args(p)


def cmd_presets(args: argparse.Namespace) -> int:
    from nexa_core import presets

    if args.action == "list":
        names = presets.names()
        _print_result(json.dumps(names) if args.json else "\n".join(names) or "no presets saved yet")
        return 0
    if not args.preset_name:
        raise ConfigError(
            [f"name: `nexa presets {args.action}` needs a preset name (see `nexa presets list`)"]
        )
    if args.action == "show":
        _print_result(
            json.dumps(presets.to_dict(presets.load(args.preset_name)), indent=None if args.json else 2)
        )
    elif args.action == "save":
        path = presets.save(args.preset_name, _spec_from_args(args))
        _print_result(
            json.dumps({"preset": args.preset_name, "path": str(path)}) if args.json else f"saved {path}"
        )
    else:
        presets.delete(args.preset_name)
        _print_result(
            json.dumps({"deleted": args.preset_name}) if args.json else f"deleted preset {args.preset_name}"
        )
    return 0


def _add_runs_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["list", "show", "logs", "stop", "resume", "export", "wait"])
    p.add_argument("run_id", nargs="?")
    p.add_argument("--json", action="store_true")
    p.add_argument("--out", help="export: the folder to write")
    p.add_argument("--grace", type=float, default=15.0, help="stop: seconds before SIGKILL")
    p.add_argument("--timeout", type=float, default=3600.0, help="wait: seconds")


def cmd_runs(args: argparse.Namespace) -> int:
    from nexa_core import runner, runs
    from nexa_core.runstore import RunStore

    store = RunStore()
    runner.refresh(store)
    if args.action == "list":
        rows = [runs.summary(store, r) for r in store.list_runs()]
        if args.json:
            _print_result(json.dumps(rows, default=str))
        else:
            for r in rows:
                print(
                    f"{r['run_id']:45s} {r['state']:10s} step {r['step']:>6} {r['model'] or ''} {r['task'] or ''}"
                )
        return 0
    if not args.run_id:
        raise ConfigError([f"run_id: `nexa runs {args.action}` needs a run id (see `nexa runs list`)"])
    run = store.get_run(args.run_id)
    if run is None:
        raise ConfigError([f"run_id: no run {args.run_id!r} (see `nexa runs list`)"])
    if args.action == "show":
        _print_result(json.dumps(runs.summary(store, run), default=str, indent=None if args.json else 2))
    elif args.action == "logs":
        print(runner.logs(args.run_id, store=store), end="")
    elif args.action == "stop":
        print(runner.stop(args.run_id, grace_s=args.grace, store=store))
    elif args.action == "resume":
        print(runner.resume(args.run_id, store=store))
    elif args.action == "wait":
        print(runner.wait(args.run_id, timeout_s=args.timeout, store=store)["state"])
    else:
        if not args.out:
            raise ConfigError(["out (--out): export needs a folder to write"])
        from nexa_core.export import export_checkpoint

        print(f"exported to {export_checkpoint(args.run_id, args.out)}")
    return 0


def _add_bench_args(p: argparse.ArgumentParser) -> None:
    from nexa_core.bench import TECHNIQUES

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
    p.add_argument("--steps", type=int, default=6, help="steps per technique; steps 1-2 are not timed")
    p.add_argument("--batch-size", type=int, default=8, help="micro-batch (default: %(default)s)")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per sample (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print one JSON object with `rows`")
    p.add_argument("--report", help="also write a self-contained HTML report here")
    p.add_argument("--csv", help="also write the table as CSV here")
    p.add_argument("--png-dir", help="also write the charts as PNG images (memory.png, slowdown.png) here")
    p.add_argument("--save-as", help="store the result as this comparison id (the Compare page reopens it)")


def cmd_bench(args: argparse.Namespace) -> int:
    from pathlib import Path

    from nexa_core.bench import BenchConfig, run_bench, save_comparison, save_progress
    from nexa_core.bench_report import (
        CHARTS,
        PNG_NEEDS_A_BROWSER,
        png_browser,
        table_rows,
        to_csv,
        to_html,
        to_png,
    )

    config = BenchConfig(
        model=args.model,
        task=args.task,
        techniques=tuple(t.strip() for t in args.techniques.split(",") if t.strip()),
        steps=args.steps,
        batch_size=args.batch_size,
        seq_len=args.seq_len,
    )

    def progress(i: int, total: int, technique: str) -> None:
        if args.save_as:
            save_progress(args.save_as, i, total, technique)
        if not args.json:
            print(f"[{i}/{total}] {technique}", file=sys.stderr, flush=True)

    if args.png_dir and png_browser() is None:  # say so before minutes of measuring, not after
        raise ConfigError([PNG_NEEDS_A_BROWSER])
    try:
        result = run_bench(config, progress)
    except Exception as exc:
        if args.save_as:  # the Compare page shows why instead of waiting forever
            save_progress(args.save_as, 0, len(config.techniques), f"failed: {type(exc).__name__}: {exc}")
        raise
    if args.save_as:
        save_comparison(args.save_as, result)
    if args.report:
        Path(args.report).write_text(to_html(result), encoding="utf-8")
    if args.csv:
        Path(args.csv).write_text(to_csv(result), encoding="utf-8")
    if args.png_dir:
        Path(args.png_dir).mkdir(parents=True, exist_ok=True)
        for chart in CHARTS:
            (Path(args.png_dir) / f"{chart}.png").write_bytes(to_png(result, chart))
    if args.json:
        _print_result(json.dumps(result, default=str))
    else:
        for row in table_rows(result):
            print(" | ".join(f"{k}: {v}" for k, v in row.items() if v is not None))
    return 0


def _add_probe_args(p: argparse.ArgumentParser) -> None:
    _add_train_args(p)
    p.add_argument(
        "--find-batch-size", action="store_true", help="search the largest micro-batch under --budget-gb"
    )
    p.add_argument("--budget-gb", type=float, help="memory budget (GiB): host RSS on CPU, per GPU with GPUs")
    p.add_argument("--max-batch", type=int, default=256)


def cmd_probe(args: argparse.Namespace) -> int:
    from nexa_core.hardware import list_gpus
    from nexa_core.probe import find_batch_size, probe
    from nexa_core.train_config import TrainConfig

    overrides = {k: getattr(args, k) for k in _TRAIN_FIELDS if getattr(args, k) is not None}
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
    _print_result(json.dumps(result, default=str) if args.json else json.dumps(result, default=str, indent=2))
    if result.get("error"):
        print(f"nexa probe: error: the search stopped: {result['error']}", file=sys.stderr)
        return 1
    return 0


def _add_cost_args(p: argparse.ArgumentParser) -> None:
    _add_plan_args(p)
    p.add_argument(
        "--tokens", type=int, required=True, help="training tokens (samples × sequence length × epochs)"
    )
    p.add_argument(
        "--samples-per-s", type=float, help="measured throughput per instance-equivalent (else FLOP-based)"
    )
    p.add_argument("--instances", help="instance catalogue YAML (default deployment/instances.yaml)")


def cmd_cost(args: argparse.Namespace) -> int:
    from nexa_core.costs import DEFAULT_INSTANCES, cost_view
    from nexa_core.planner import PlanConfig

    config = PlanConfig(
        model=args.model if args.params is None else None, params=args.params, task=args.task,
        num_labels=args.num_labels, precision=args.precision, batch_size=args.batch_size, seq_len=args.seq_len,
        gradient_checkpointing=args.gradient_checkpointing, lora=args.lora, lora_rank=args.lora_rank, nodes=args.nodes,
    )  # fmt: skip
    rows = cost_view(config, args.tokens, args.samples_per_s, args.instances or DEFAULT_INSTANCES)
    if args.json:
        _print_result(json.dumps(rows))
    else:
        for r in rows:
            cost = f"${r['cost']:.2f}" if r["cost"] is not None else "n/a"
            print(
                f"{r['instance']:16s} {cost:>10s}  recommended: {r['recommended'] or 'nothing fits'}  ({r['throughput_source']})"
            )
    return 0


def _add_serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", help="listen here (default: $NEXA_ADDRESS, else 127.0.0.1)")
    p.add_argument("--port", help="port (default: $NEXA_PORT, else 8501)")


def cmd_serve(args: argparse.Namespace) -> int:
    """Check how the panel would be exposed, refuse (exit 2) when unsafe, else exec Streamlit."""
    from pathlib import Path

    from nexa_core import security

    root = Path(__file__).resolve().parent.parent
    flags = {security.ADDRESS_ENV: args.address, security.PORT_ENV: args.port}
    env = {**os.environ, **{k: v for k, v in flags.items() if v is not None}}
    settings = security.serve_settings(root, env)
    problems = security.exposure_problems(settings)
    if problems:
        raise ConfigError(["refusing to start the panel", *problems])
    argv = security.serve_argv(settings, root / "app.py", sys.executable)
    if os.environ.get("NEXA_HOME"):  # the project folder becomes the working directory below
        os.environ["NEXA_HOME"] = str(Path(os.environ["NEXA_HOME"]).expanduser().resolve())
    os.chdir(root)  # Streamlit reads the project's .streamlit/config.toml from the working directory
    sys.stdout.flush()
    os.execv(argv[0], argv)  # same pid: supervisors and tests see the server itself
    return 0  # not reached


COMMANDS: dict[
    str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int], str]
] = {
    "plan": (_add_plan_args, cmd_plan, "estimate memory for every ZeRO stage and recommend one"),
    "train": (_add_train_args, cmd_train, "run one training in the foreground"),
    "export": (_add_export_args, cmd_export, "write a checkpoint as a Hugging Face model folder"),
    "launch": (_add_launch_args, cmd_launch, "start a run in the background and print its id"),
    "runs": (_add_runs_args, cmd_runs, "list, show, follow, stop, resume or export runs"),
    "bench": (_add_bench_args, cmd_bench, "measure techniques side by side and report the savings"),
    "probe": (
        _add_probe_args,
        cmd_probe,
        "measure a planned configuration's real peak; find the batch size that fits",
    ),
    "cost": (_add_cost_args, cmd_cost, "which instances can run a plan, and what the run costs"),
    "presets": (_add_presets_args, cmd_presets, "save, list, show and delete named launch configurations"),
    "serve": (_add_serve_args, cmd_serve, "start the panel (refuses unsafe exposure; see docs/SECURITY.md)"),
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
            with _stdout_reserved_for_result():
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
