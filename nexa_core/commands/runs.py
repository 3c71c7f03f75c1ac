"""`nexa launch`, `nexa presets` and `nexa runs`: the run manager from the command line."""

from __future__ import annotations

import argparse
import json
import sys

from nexa_core.commands._output import print_result
from nexa_core.commands.train import TRAIN_FIELDS, add_train_args
from nexa_core.errors import ConfigError, raise_if


def add_launch_args(p: argparse.ArgumentParser) -> None:
    from nexa_core.launch import LaunchMode

    add_train_args(p)
    # Launch fields default to None so that a preset's or a past run's values hold unless given.
    p.add_argument("--preset", help="start from this saved preset (flags given override it)")
    p.add_argument("--from-run", metavar="RUN_ID", help="start from this past run's configuration")
    p.add_argument("--mode", help=f"one of {', '.join(LaunchMode.values())} (default python)")
    p.add_argument(
        "--no-queue", action="store_true",
        help="launch: refuse while the device is busy instead of waiting in the run queue",
    )  # fmt: skip
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
    # a Slurm cluster instead of this machine (docs/SCALING.md, "Slurm"); --nodes is the job's nodes
    p.add_argument("--backend", help="local (this machine, default) or slurm (sbatch from a login node)")
    p.add_argument("--partition", help="slurm: the partition to queue in")
    p.add_argument(
        "--gpus-per-node", type=int, help="slurm: GPUs per node, one rank each (0: --nproc CPU ranks)"
    )
    p.add_argument("--time", help="slurm: the job's time limit, [D-]HH:MM:SS (default 01:00:00)")
    p.add_argument("--account", help="slurm: the account to charge")
    p.add_argument("--qos", help="slurm: the quality of service")
    p.add_argument(
        "--mem", help="slurm: memory per node (2048, 300M, 4G); default the planner's host estimate + 25%%"
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
    overrides = {k: getattr(args, k) for k in TRAIN_FIELDS if getattr(args, k) is not None}
    config = TrainConfig.from_dict({**train, **overrides})
    given = {
        "mode": args.mode, "nproc": args.nproc, "gpus": None if args.gpus is None else _parse_gpus(args.gpus),
        "master_port": args.master_port, "nodes": args.nodes, "node_rank": args.node_rank,
        "master_addr": args.master_addr, "hosts": args.host, "include": args.include, "exclude": args.exclude,
        "ssh_launcher": args.ssh_launcher,
    }  # fmt: skip
    launch = {**(base.to_dict() if base else {}), **{k: v for k, v in given.items() if v is not None}}
    return RunSpec.from_dict(config, launch)


def _launch_on_slurm(args: argparse.Namespace) -> str:
    """`nexa launch --backend slurm`: the run from the same flags, the job request from the Slurm ones
    (every problem of both reported at once)."""
    from nexa_core import runs, slurm_jobs
    from nexa_core.slurm import DEFAULT_TIME, SlurmRequest, request_problems

    problems, request, spec = [], None, None
    try:
        request = SlurmRequest(partition=args.partition or "", nodes=args.nodes or 1,
                               gpus_per_node=args.gpus_per_node or 0, time=args.time or DEFAULT_TIME,
                               account=args.account, qos=args.qos, mem_mb=args.mem)  # fmt: skip
    except ConfigError as exc:
        problems += exc.problems
    args.nodes, args.mode = None, args.mode or "torchrun"  # the job's nodes; srun starts nproc ranks per node
    try:
        spec = _spec_from_args(args)
    except ConfigError as exc:
        problems += exc.problems
    if spec is not None:
        problems += request_problems(spec, request)
    if problems or request is None or spec is None:
        raise ConfigError(problems)
    estimate = runs.estimate_for(spec, gpus_per_node=request.gpus_per_node, nodes=request.nodes)
    run_id = slurm_jobs.submit(spec, request, estimate=estimate, run_id=args.run_id)
    from nexa_core.runstore import RunStore

    job = RunStore().job(run_id) or {}
    print(f"submitted as Slurm job {job.get('job_id')} (partition {request.partition}, {request.nodes} "
          f"node(s), --mem {(job.get('request') or {}).get('mem_mb')}M)", file=sys.stderr)  # fmt: skip
    return run_id


def cmd_launch(args: argparse.Namespace) -> int:
    from nexa_core import runner, runs
    from nexa_core.slurm import Backend

    try:
        backend = Backend.parse(args.backend or "local", "backend (--backend)")
    except ValueError as exc:
        raise ConfigError([str(exc)]) from None
    queue = not getattr(args, "no_queue", False)  # Slurm runs queue in the scheduler instead
    if args.resume:
        run_id = runner.resume(args.resume, queue=queue)
    elif backend is Backend.SLURM:
        run_id = _launch_on_slurm(args)
    else:
        from nexa_core.datasets import load_run_records

        spec = _spec_from_args(args)
        if spec.train.dataset or spec.train.eval_dataset:  # as the run will read them, before it starts
            load_run_records(
                spec.train.task, spec.train.dataset, spec.train.eval_dataset, seed=spec.train.seed
            )
        run_id = runner.launch(spec, run_id=args.run_id, estimate=runs.estimate_for(spec), queue=queue)
        from nexa_core import paths, scaling

        for node in scaling.node_commands(spec, run_id, paths.run_dir(run_id)):
            if not node.by_panel:  # stderr: --json keeps stdout to one JSON line
                print(f"node {node.node_rank} ({node.host}), run there: {node.text()}", file=sys.stderr)
    from nexa_core import run_queue
    from nexa_core.runstore import RunStore

    waiting = run_queue.position(RunStore(), run_id)
    if args.json:
        print_result(json.dumps({"run_id": run_id, "queue_position": waiting}))
    elif waiting:
        print_result(f"queued {run_id}: {waiting} in the run queue, it starts when the device is free "
                     f"(nexa runs queue; nexa runs show {run_id})")  # fmt: skip
    else:
        print_result(f"launched {run_id} (nexa runs show {run_id})")
    return 0


def add_presets_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["list", "show", "save", "delete"])
    p.add_argument("preset_name", nargs="?", metavar="NAME", help="the preset's name (show, save, delete)")
    # save takes the same flags as launch (and --preset / --from-run to copy one)
    add_launch_args(p)


def cmd_presets(args: argparse.Namespace) -> int:
    from nexa_core import presets

    if getattr(args, "backend", None):
        raise ConfigError(["backend (--backend): presets keep the training and local launch settings; "
                           "give --backend slurm and its flags to `nexa launch`"])  # fmt: skip
    if args.action == "list":
        names = presets.names()
        print_result(json.dumps(names) if args.json else "\n".join(names) or "no presets saved yet")
        return 0
    if not args.preset_name:
        raise ConfigError(
            [f"name: `nexa presets {args.action}` needs a preset name (see `nexa presets list`)"]
        )
    if args.action == "show":
        print_result(
            json.dumps(presets.to_dict(presets.load(args.preset_name)), indent=None if args.json else 2)
        )
    elif args.action == "save":
        path = presets.save(args.preset_name, _spec_from_args(args))
        print_result(
            json.dumps({"preset": args.preset_name, "path": str(path)}) if args.json else f"saved {path}"
        )
    else:
        presets.delete(args.preset_name)
        print_result(
            json.dumps({"deleted": args.preset_name}) if args.json else f"deleted preset {args.preset_name}"
        )
    return 0


def add_runs_args(p: argparse.ArgumentParser) -> None:
    from nexa_core.run_queue import ACTIONS

    p.add_argument(
        "action", choices=["list", "show", "logs", "stop", "resume", "export", "wait", "tag", "note", "queue"]
    )
    p.add_argument(
        "run_id", nargs="?", help=f"the run; for queue: one of {', '.join(ACTIONS)} (default list)"
    )
    p.add_argument(
        "values", nargs="*", metavar="TAG_OR_TEXT",
        help="tag: tags to add; note: the note's text; queue: the waiting run to move or cancel",
    )  # fmt: skip
    p.add_argument("--remove", action="append", default=[], metavar="TAG", help="tag: remove this tag")
    p.add_argument(
        "--search", default="", help="list: runs whose name, id, model, task, tags or note hold it"
    )
    p.add_argument(
        "--tag", action="append", default=[], help="list: runs with this tag (repeat: all of them)"
    )
    p.add_argument("--state", action="append", default=[], help="list: runs in this state (repeat: any)")
    p.add_argument("--model", action="append", default=[], help="list: runs of this model (repeat: any)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--out", help="export: the folder to write")
    p.add_argument("--grace", type=float, default=15.0, help="stop: seconds before SIGKILL")
    p.add_argument("--timeout", type=float, default=3600.0, help="wait: seconds")


def cmd_runs(args: argparse.Namespace) -> int:
    from nexa_core import runner, runs

    store = runner.open_store()
    if args.action == "queue":
        return _queue(store, args)
    if args.action == "list":
        from nexa_core.run_history import filter_summaries
        from nexa_core.runstore import RunState

        states = [s.value for s in RunState]
        raise_if([f"state (--state): {s!r} is not a run state; choose one of {', '.join(states)}"
                  for s in args.state if s not in states])  # fmt: skip
        rows = filter_summaries((runs.summary(store, r) for r in store.list_runs()), args.search, args.tag,
                                args.state, args.model, show_bench=True)  # fmt: skip
        if args.json:
            print_result(json.dumps(rows, default=str))
        else:
            for r in rows:
                where = runs.job_label(r.get("slurm"))
                print(
                    f"{r['run_id']:45s} {r['state']:10s} step {r['step']:>6} {r['model'] or ''} {r['task'] or ''}"
                    + (f"  [{where}]" if where else "")
                    + (f"  #{' #'.join(r['tags'])}" if r["tags"] else "")
                )
        return 0
    if not args.run_id:
        raise ConfigError([f"run_id: `nexa runs {args.action}` needs a run id (see `nexa runs list`)"])
    run = store.get_run(args.run_id)
    if run is None:
        raise ConfigError([f"run_id: no run {args.run_id!r} (see `nexa runs list`)"])
    if args.action == "show":
        print_result(json.dumps(runs.summary(store, run), default=str, indent=None if args.json else 2))
    elif args.action == "logs":
        print(runner.logs(args.run_id, store=store), end="")
    elif args.action == "stop":
        print(runner.stop(args.run_id, grace_s=args.grace, store=store))
    elif args.action == "resume":
        print(runner.resume(args.run_id, store=store, queue=True))
    elif args.action in ("tag", "note"):
        _tag_or_note(store, args)
    elif args.action == "wait":
        print(runner.wait(args.run_id, timeout_s=args.timeout, store=store)["state"])
    else:
        if not args.out:
            raise ConfigError(["out (--out): export needs a folder to write"])
        from nexa_core.export import export_checkpoint

        print(f"exported to {export_checkpoint(args.run_id, args.out)}")
    return 0


def _queue(store, args: argparse.Namespace) -> int:
    """`nexa runs queue [list]`, `nexa runs queue up|down|top|bottom|cancel RUN_ID`."""
    from nexa_core import run_queue, runner

    action = args.run_id or "list"
    if action not in run_queue.ACTIONS:
        raise ConfigError([f"queue action: {action!r} is not one; choose one of {', '.join(run_queue.ACTIONS)} "
                           "(e.g. nexa runs queue up RUN_ID)"])  # fmt: skip
    if action == "list":
        rows = run_queue.describe(store, runner.busy_devices(store))
        if args.json:
            print_result(json.dumps(rows))
        else:
            print("\n".join(f"{r['position']}. {r['run_id']}  {r['name']}  on {r['devices']}  waiting for: "
                            f"{r['waiting_for']}" for r in rows) or "no run is waiting in the queue")  # fmt: skip
        return 0
    if len(args.values) != 1:
        raise ConfigError(
            [f"run_id: `nexa runs queue {action}` needs one waiting run's id (see `nexa runs queue`)"]
        )
    (run_id,) = args.values
    if action == "cancel":
        if not runner.cancel_queued(run_id, by="user", store=store):
            raise ConfigError([run_queue.not_queued(run_id)])
        print(run_queue.cancelled(run_id))
    else:
        print(run_queue.move(store, run_id, action))
    return 0


def _tag_or_note(store, args: argparse.Namespace) -> None:
    """`nexa runs tag ID [TAG ...] [--remove TAG]` and `nexa runs note ID [TEXT]`: without values and
    removals they print what the run has; `nexa runs note ID ""` clears the note."""
    from nexa_core import run_history

    if args.action == "tag":
        tags = (
            run_history.set_tags(store, args.run_id, add=args.values, remove=args.remove)
            if args.values or args.remove
            else sorted(store.get_run(args.run_id).get("tags") or [])
        )
        print_result(json.dumps(tags) if args.json else " ".join(tags) or "(no tags)")
        return
    note = (
        run_history.set_note(store, args.run_id, " ".join(args.values))
        if args.values
        else store.get_run(args.run_id).get("note")
    )
    print_result(json.dumps({"note": note}) if args.json else note or "(no note)")
