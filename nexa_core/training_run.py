"""One training run end to end: TrainConfig -> run folder and store row -> data -> trainer -> state.

This is what `nexa train` runs in the foreground and what the run manager starts in a subprocess.
Only rank 0 writes the store row and the run files; every rank trains.
"""

from __future__ import annotations

import json
import logging
import os
import traceback
from typing import Any

from nexa_core import paths
from nexa_core.errors import ConfigError
from nexa_core.models import load_tokenizer  # (also imported from here by tests and benchmarks)
from nexa_core.train_config import RUN_CONFIG, TrainConfig

log = logging.getLogger("nexa.run")

DUPLICATE_SIGNAL_S = 2.0  # a repeat of the same signal this soon is the same stop request


def _stop_on_signals(trainer) -> None:
    """SIGTERM/SIGINT ask the trainer to checkpoint and stop at the next step boundary, instead of
    dying mid-step; a second signal gets the default action (SIGKILL always works). A repeat within
    DUPLICATE_SIGNAL_S is the same request delivered twice, not a second one: Slurm's time limit
    signals every process of a job, so a rank gets TERM both from slurmstepd and through srun (and a
    local stop signals torchrun's ranks both directly and through the agent)."""
    import signal
    import time

    first: dict[int, float] = {}

    def request_stop(signum, frame):
        trainer.stop_requested = True
        now = time.monotonic()
        if now - first.setdefault(signum, now) > DUPLICATE_SIGNAL_S:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, request_stop)


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _shared_run_id(config: TrainConfig, run_id: str | None) -> str:
    """Every rank must agree on the run id (it names the checkpoint folder)."""
    run_id = run_id or os.environ.get("NEXA_RUN_ID")
    if run_id:
        return run_id
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError(["run_id (--run-id / NEXA_RUN_ID): required when several ranks train together"])
    return paths.new_run_id(config.name)


def _launch_fields() -> dict[str, Any]:
    """How a run started by hand was launched: one process, or the ranks of a launcher the user ran."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return {
        "launch_mode": "foreground" if world == 1 else "foreground, external launcher",
        "nproc": int(os.environ.get("LOCAL_WORLD_SIZE", world)),
        "nodes": max(1, world // int(os.environ.get("LOCAL_WORLD_SIZE", world) or 1)),
    }


def _record_estimate(store: Any, run_id: str, config: TrainConfig, dataset: Any) -> None:
    """The planner's estimate for a run started by hand, for its own tokenised data, as a launch
    records it (runs.estimate_for): `nexa runs show`, Monitor and learned.py read it. Never fails a run."""
    from nexa_core import data_shapes, runs
    from nexa_core.launch import LaunchMode, RunSpec

    try:
        launch = _launch_fields()
        spec = RunSpec(config, mode=LaunchMode.PYTHON if launch["nproc"] == 1 and launch["nodes"] == 1
                       else LaunchMode.TORCHRUN, nproc=launch["nproc"])  # fmt: skip
        columns = {c: dataset[c] for c in dataset.column_names if c.endswith("input_ids")}
        lengths = data_shapes.example_lengths(columns, config.task)
        estimate = runs.estimate_for(spec, lengths=lengths)
        if launch["nodes"] > 1 and estimate is not None:
            estimate["nodes_note"] = (
                f"planned for this node's {launch['nproc']} ranks of {launch['nodes']} nodes"
            )
        store.update_run(run_id, estimate=estimate)
    except Exception as exc:  # an estimate is information; the run goes on without it
        log.warning("estimate not recorded: %s", exc)


def run_training(
    config: TrainConfig, run_id: str | None = None, resume: bool = False, progress: bool = False
) -> dict[str, Any]:
    """Train per ``config`` as run ``run_id`` (new unless resuming) and return the result summary."""
    from nexa_core import datasets as nexa_datasets
    from nexa_core.relay import job_store
    from nexa_core.runstore import RunState
    from nexa_core.trainer import DeepSpeedTrainer, RunStopped

    run_id = _shared_run_id(config, run_id)
    run_dir = paths.run_dir(run_id)
    store = job_store()  # the run store, or in a cluster job the relay files (nexa_core/relay.py)
    main = _rank() == 0
    existing = store.get_run(run_id)
    if resume and existing is None:
        raise ConfigError([f"resume (--resume): no run {run_id!r} in {paths.store_path()}"])
    # started or resumed by hand (`nexa train [--resume]`, also under a launcher the user ran): no
    # launch recorded this run's launch fields or its estimate, so this process does
    foreground = main and (existing is None or (resume and not os.environ.get("NEXA_RUN_ID")))
    if main:
        if foreground:
            # this process is the run now, on the same one-run-per-device rule as a launch (a resumed
            # row would otherwise keep the dead pid of the previous attempt, and runner.refresh would
            # call the run vanished)
            from nexa_core.runner import register_foreground

            register_foreground(
                store, run_id, name=config.name or run_id, spec={**config.to_dict(), **_launch_fields()},
                run_dir=run_dir,
            )  # fmt: skip
        run_dir.mkdir(parents=True, exist_ok=True)
        if not resume:  # (the run manager recorded its supervisor's pid, and a resume keeps its config)
            config.write(run_dir / RUN_CONFIG)
        store.set_state(run_id, RunState.RUNNING)
    try:
        tokenizer = load_tokenizer(config.model)
        data = nexa_datasets.build_dataloaders(
            config.task,
            tokenizer,
            config.dataset,
            config.eval_dataset,
            batch_size=config.batch_size,
            seq_len=config.seq_len,
            seed=config.seed,
            pad_to_seq_len=config.pad_to_seq_len,
        )
        if foreground and not (existing or {}).get("estimate"):
            _record_estimate(store, run_id, config, data.train_loader.dataset)
        trainer = DeepSpeedTrainer(
            config=config,
            label_names=data.label_names or None,
            store=store,
            run_id=run_id,
            tracker_dir=run_dir / "tracker",
            progress=progress,
        )
        _stop_on_signals(trainer)
        if main:
            (run_dir / "labels.json").write_text(json.dumps(data.label_names))
            tokenizer.save_pretrained(run_dir / "tokenizer")
        metrics = trainer.train(
            data.train_loader,
            num_epochs=config.epochs,
            output_dir=run_dir,
            eval_dataloader=data.eval_loader if config.eval else None,
            resume=resume,
        )
    except BaseException as exc:
        if main:
            stopped = isinstance(exc, (KeyboardInterrupt, RunStopped))
            summary = traceback.format_exception_only(type(exc), exc)[-1].strip()
            last = store.get_run(run_id) or {}
            store.set_state(
                run_id,
                RunState.STOPPED if stopped else RunState.FAILED,
                reason=summary[:2000],
                # a stop through NEXA has recorded who asked; a bare signal (Ctrl-C, kill) has not
                stopped_by=None if not stopped or last.get("stopped_by") else "signal",
            )
            log.info("run %s ended at step %s: %s", run_id, last.get("last_step"), summary)
        raise
    if main:
        store.update_run(run_id, last_step=metrics["steps"])
        store.set_state(run_id, RunState.SUCCEEDED, exit_code=0)
    return {"run_id": run_id, "state": "succeeded", "run_dir": str(run_dir), **metrics}
