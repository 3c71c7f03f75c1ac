"""One training run end to end: TrainConfig -> run folder and store row -> data -> trainer -> state.

This is what `nexa train` runs in the foreground and what the run manager starts in a subprocess.
Only rank 0 writes the store row and the run files; every rank trains.
"""

from __future__ import annotations

import json
import logging
import os
import traceback
from pathlib import Path
from typing import Any

from nexa_core import paths
from nexa_core.errors import ConfigError
from nexa_core.train_config import RUN_CONFIG, TrainConfig

log = logging.getLogger("nexa.run")


def load_tokenizer(model: str):
    """The model's own tokenizer when its folder has one, else the packaged MiniLM tokenizer (for
    random-initialised test variants whose config sets a vocabulary at least that large)."""
    from transformers import AutoTokenizer

    from nexa_core.models import _packaged_minilm_dir, resolve_model

    resolved = resolve_model(model)
    for folder in (resolved.weights_dir, Path(model) if Path(model).is_dir() else None):
        if folder is not None and any(
            (folder / f).exists() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json")
        ):
            return AutoTokenizer.from_pretrained(folder)
    fallback = _packaged_minilm_dir()
    if fallback is None:
        raise ConfigError(
            [f"model: no tokenizer found for {model!r} and the packaged MiniLM is not installed"]
        )
    tokenizer = AutoTokenizer.from_pretrained(fallback)
    vocab = int(resolved.config.get("vocab_size") or resolved.config.get("n_vocab") or 0)
    if vocab and vocab < len(tokenizer):
        raise ConfigError(
            [
                f"model: {model!r} has no tokenizer and its vocab_size {vocab} is smaller than the fallback tokenizer's {len(tokenizer)}"
            ]
        )
    log.warning("tokenizer: %s has none; using the packaged all-MiniLM-L6-v2 tokenizer", model)
    return tokenizer


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
    if main:
        if existing is None or (resume and not os.environ.get("NEXA_RUN_ID")):
            # started or resumed by hand (`nexa train [--resume]`): this process is the run now, on
            # the same one-run-per-device rule as a launch (a resumed row would otherwise keep the
            # dead pid of the previous attempt, and runner.refresh would call the run vanished)
            from nexa_core.runner import register_foreground

            register_foreground(
                store, run_id, name=config.name or run_id, spec=config.to_dict(), run_dir=run_dir
            )
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
        trainer = DeepSpeedTrainer(
            config.model,
            task=config.task,
            num_labels=config.num_labels or (len(data.label_names) if data.label_names else None),
            zero_stage=config.zero_stage,
            offload_optimizer=config.offload_optimizer,
            offload_params=config.offload_param,
            gradient_checkpointing=config.gradient_checkpointing,
            use_lora=config.lora,
            lora_rank=config.lora_rank,
            precision=config.precision,
            use_deepspeed={"on": True, "off": False}.get(str(config.deepspeed)),
            learning_rate=config.lr,
            weight_decay=config.weight_decay,
            warmup_steps=config.warmup_steps,
            gradient_accumulation_steps=config.gradient_accumulation,
            max_steps=config.max_steps,
            save_every=config.save_every,
            eval_every=config.eval_every,
            keep_last=config.keep_last,
            seed=config.seed,
            label_names=data.label_names or None,
            random_init=config.random_init,
            store=store,
            run_id=run_id,
            tracker=config.tracker,
            tracker_dir=run_dir / "tracker",
            progress=progress,
            save=config.save,
            zero3_init=config.zero3_init,
            attention=config.attention,
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
