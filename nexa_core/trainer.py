"""DeepSpeedTrainer: fine-tuning on Accelerate (with DeepSpeed when on), for the four tasks.

Accelerate does the distributed work, gradient accumulation, mixed precision and state saving;
transformers gives the models and schedulers; peft the LoRA adapters. This file holds the loop,
the per-task loss and evaluation and telemetry; checkpoints.py saves and resumes the state.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from nexa_core import task_metrics
from nexa_core.checkpoints import StepInfo, latest_checkpoint, load_latest_state, save_state
from nexa_core.device_manager import get_accelerator
from nexa_core.enums import Attention, Task
from nexa_core.model_loading import ModelRequest, build_model, load_dtype
from nexa_core.models import DEFAULT_MODEL
from nexa_core.run_facts import engine_report, engine_text, precision_report, precision_text
from nexa_core.train_config import TrainConfig
from nexa_core.train_loop import Schedule, ThroughputWindow, batches, due, epochs_from

log = logging.getLogger("nexa.trainer")


@dataclass(frozen=True)
class _Prepared:
    """What Accelerate/DeepSpeed returned for the run, and its schedule."""

    model: Any
    optimizer: Any
    scheduler: Any
    train_loader: Any
    eval_loader: Any
    schedule: Schedule


class RunStopped(Exception):
    """Training ended early on request (SIGTERM/SIGINT); a checkpoint was written when possible."""


class DeepSpeedTrainer:
    """Fine-tune ``model_name`` for ``task``; the seed guide's constructor, plus run bookkeeping."""

    def __init__(
        self,
        model_name: str | None = None,
        *,
        config: TrainConfig | None = None,
        label_names: list[str] | None = None,
        store: Any = None,
        run_id: str | None = None,
        tracker_dir: str | Path | None = None,
        progress: bool = False,
        **seed_kwargs: Any,
    ) -> None:
        """``config``: the run's validated TrainConfig (what `nexa train` and the run manager pass).
        Or the seed guide's form, ``DeepSpeedTrainer(model_name=..., zero_stage=3,
        offload_optimizer=True, offload_params=True, gradient_checkpointing=True)``, which
        TrainConfig.from_seed_kwargs turns into the same config (the one place that maps its names)."""
        from accelerate.utils import DataLoaderConfiguration, set_seed

        if config is None:
            config = TrainConfig.from_seed_kwargs(model_name or DEFAULT_MODEL, **seed_kwargs)
        elif model_name is not None or seed_kwargs:
            raise TypeError("DeepSpeedTrainer: give config=, or the seed guide's keywords, not both")
        self.config = config
        self.task = Task(config.task)
        self.label_names = label_names
        self.num_labels = config.num_labels or (len(label_names) if label_names else 7)
        self.store = store
        self.run_id = run_id
        self.progress = progress
        self.settings = config.deepspeed_settings()
        kwargs: dict[str, Any] = {}
        if config.tracker:
            kwargs["log_with"] = config.tracker
            # File-based trackers (tensorboard) refuse to start without a logging folder.
            kwargs["project_dir"] = str(tracker_dir or Path("nexa-tracker-logs"))
        # Seedable sampler: the shuffle order depends only on (seed, epoch), so a resumed run sees
        # the same batches as an uninterrupted one.
        kwargs["dataloader_config"] = DataLoaderConfiguration(use_seedable_sampler=True)
        self.accelerator = get_accelerator(settings=self.settings, **kwargs)
        self.use_deepspeed = self.accelerator.state.deepspeed_plugin is not None
        self.precision = self.settings.resolved_precision()
        set_seed(config.seed)
        self.model = self._build_model()
        self.stop_requested = False  # set from a signal handler; acted on at the next step boundary

    # ----------------------------------------------------------------- model
    def sharded_init(self) -> bool:
        """ZeRO-3 with zero.Init: each rank creates only its partition of every parameter."""
        stage, _, _ = self.settings.layout()
        return self.use_deepspeed and stage == 3 and self.settings.zero3_init

    def _build_model(self):
        stage, _, _ = self.settings.layout()
        return build_model(
            ModelRequest(
                self.config.model, self.task, self.num_labels, self.label_names, self.config.random_init,
                load_dtype(self.precision, self.use_deepspeed), Attention(self.config.attention), self.config.gradient_checkpointing,
                self.config.lora_rank if self.config.lora else None,
            ),
            sharded=self.sharded_init(),
            unsharded_zero3=self.use_deepspeed and stage == 3 and not self.settings.zero3_init,
            plugin=self.accelerator.state.deepspeed_plugin,
            event=self._event,
        )  # fmt: skip

    # ----------------------------------------------------------- memory log
    def _log_memory_state(self, tag: str) -> dict[str, Any]:
        """GPU allocated/reserved per device when present, process RSS, ZeRO stage and offload."""
        import torch

        state: dict[str, Any] = {"tag": tag, "rss_bytes": psutil.Process().memory_info().rss}
        if torch.cuda.is_available():
            state["gpus"] = [
                {
                    "device": i,
                    "allocated_bytes": torch.cuda.memory_allocated(i),
                    "reserved_bytes": torch.cuda.memory_reserved(i),
                }
                for i in range(torch.cuda.device_count())
            ]
        stage, off_opt, off_param = self.settings.layout()
        state["deepspeed"] = (
            {"zero_stage": stage, "offload_optimizer": str(off_opt), "offload_param": str(off_param)}
            if self.use_deepspeed
            else None
        )
        gpu_text = "".join(
            f" GPU{g['device']} allocated {g['allocated_bytes'] / 2**30:.2f}GB reserved {g['reserved_bytes'] / 2**30:.2f}GB"
            for g in state.get("gpus", [])
        )
        ds_text = (
            f"DeepSpeed ZeRO stage {stage}, offload optimizer={off_opt} params={off_param}"
            if self.use_deepspeed
            else "DeepSpeed off"
        )
        log.info("[%s] RSS %.2fGB%s | %s", tag, state["rss_bytes"] / 2**30, gpu_text, ds_text)
        if self.store is not None and self.run_id and self.accelerator.is_main_process:
            self.store.add_event(
                self.run_id, f"{tag}: RSS {state['rss_bytes'] / 2**30:.2f} GB{gpu_text}; {ds_text}"
            )
        return state

    # ------------------------------------------------------------- training
    def _optimizer_and_scheduler(self, total_steps: int):
        import torch
        from accelerate.utils import DummyOptim, DummyScheduler
        from transformers import get_linear_schedule_with_warmup

        params = [p for p in self.model.parameters() if p.requires_grad]
        ds_config = self.accelerator.state.deepspeed_plugin.deepspeed_config if self.use_deepspeed else {}
        if "optimizer" in ds_config:
            # The DeepSpeed config owns the optimizer (CPU Adam with offload): Accelerate's DummyOptim
            # carries lr/weight decay into its "auto" fields.
            optimizer = DummyOptim(params, lr=self.config.lr, weight_decay=self.config.weight_decay)
        else:
            optimizer = torch.optim.AdamW(params, lr=self.config.lr, weight_decay=self.config.weight_decay)
        if "scheduler" in ds_config:
            scheduler = DummyScheduler(
                optimizer, total_num_steps=total_steps, warmup_num_steps=self.config.warmup_steps
            )
        else:
            scheduler = get_linear_schedule_with_warmup(optimizer, self.config.warmup_steps, total_steps)
        return optimizer, scheduler

    def train(
        self,
        train_dataloader,
        num_epochs: int = 1,
        output_dir: str | Path = "nexa_output",
        eval_dataloader=None,
        resume: bool = False,
    ) -> dict[str, Any]:
        """Train, checkpoint into ``output_dir/checkpoints`` and return final metrics.

        The named steps: prepare (Accelerate/DeepSpeed wrap the model, optimizer and loaders),
        resume (the newest complete checkpoint), the loop (one optimizer step at a time: record,
        periodic checkpoint and evaluation, the stop protocol), and finish (last checkpoint, final
        evaluation)."""
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        run = self._prepare(train_dataloader, eval_dataloader, num_epochs)
        start = self._resume_state(output_dir) if resume else StepInfo(0, 0, 0)
        sampler = _Sampler(self) if self.store is not None and self.run_id else None
        if sampler:
            sampler.start()
        progress = self._progress_bar(run.schedule.total_steps, start.step)
        self.position = start  # the last optimizer step reached, also when the loop raises
        try:
            at, loss_value = self._loop(run, start, output_dir, sampler, progress)
            return self._finish(run, start, at, loss_value, output_dir)
        finally:
            if progress:
                progress.close()
            if sampler:
                sampler.stop(self.position.step)
            if self.config.tracker:
                self.accelerator.end_training()

    # -- prepare
    def _prepare(self, train_dataloader, eval_dataloader, num_epochs: int) -> _Prepared:
        acc = self.accelerator
        accumulation = self.settings.gradient_accumulation_steps
        schedule = Schedule.of(len(train_dataloader), accumulation, num_epochs, self.config.max_steps)
        optimizer, scheduler = self._optimizer_and_scheduler(schedule.total_steps)
        prepared = acc.prepare(
            self.model,
            optimizer,
            train_dataloader,
            scheduler,
            *([eval_dataloader] if eval_dataloader else []),
        )
        model, optimizer, train_loader, scheduler = prepared[:4]
        self.model = model
        if self.config.tracker:
            acc.init_trackers(
                self.run_id or "nexa", config={"model": self.config.model, "task": str(self.task)}
            )
        self._log_memory_state("after prepare")
        self._event("engine: " + engine_text(engine_report(model, optimizer)))
        if self.store is not None and self.run_id and acc.is_main_process:
            self.store.update_run(self.run_id, total_steps=schedule.total_steps)  # progress and ETA
        return _Prepared(
            model, optimizer, scheduler, train_loader, prepared[4] if eval_dataloader else None, schedule
        )

    def _progress_bar(self, total_steps: int, initial: int):
        if not (self.progress and self.accelerator.is_local_main_process):
            return None
        from tqdm.auto import tqdm

        return tqdm(total=total_steps, initial=initial, desc="training", unit="step")

    # -- the loop
    def _loop(
        self, run: _Prepared, start: StepInfo, output_dir: Path, sampler, progress
    ) -> tuple[StepInfo, float]:
        """Optimizer steps until the schedule's last one (or a stop); returns where it ended."""
        acc, total = self.accelerator, run.schedule.total_steps
        run.model.train()
        window = ThroughputWindow()
        at, loss_value = start, float("nan")
        for epoch in epochs_from(start.epoch, start.step, run.schedule):
            run.train_loader.set_epoch(epoch)
            skip = start.batches_into_epoch if epoch == start.epoch else 0
            at = StepInfo(at.step, epoch, skip)
            for seen, batch in batches(run.train_loader, skip, acc.skip_first_batches):
                loss, grad_norm = self._train_step(run, batch)
                window.add(batch)
                at = StepInfo(at.step, epoch, seen)
                if not acc.sync_gradients:
                    continue  # still accumulating: no optimizer step yet
                at = self.position = StepInfo(at.step + 1, epoch, seen)
                loss_value = self._after_step(run, at, loss, grad_norm, window, start, sampler, progress)
                self._periodic(run, at, output_dir)
                self._stop_if_requested(at, total, output_dir)
                if at.step >= total:
                    return at, loss_value
        return at, loss_value

    def _train_step(self, run: _Prepared, batch) -> tuple[Any, Any]:
        """Forward, backward and (on a synchronising batch) the optimizer step; the loss and, when
        Accelerate clips, the gradient norm."""
        acc = self.accelerator
        with acc.accumulate(run.model):
            loss = self._loss(run.model, batch)
            acc.backward(loss)
            grad_norm = None
            if acc.sync_gradients and not self.use_deepspeed:
                grad_norm = acc.clip_grad_norm_(run.model.parameters(), 1.0)
            run.optimizer.step()
            run.scheduler.step()
            run.optimizer.zero_grad()
        return loss, grad_norm

    def _after_step(
        self, run: _Prepared, at: StepInfo, loss, grad_norm, window, start, sampler, progress
    ) -> float:
        """Record the step (loss over all ranks, learning rate, gradient norm, throughput), the dtypes
        held after the first step, the progress bar; a non-finite loss ends the run."""
        acc = self.accelerator
        loss_value = acc.gather(loss.detach()).float().mean().item()
        if self.use_deepspeed:
            grad_norm = run.model.get_global_grad_norm()
        row = {
            "loss": loss_value,
            "lr": run.optimizer.param_groups[0]["lr"],
            "epoch": at.epoch + at.batches_into_epoch / max(len(run.train_loader), 1),
            "grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
            **window.close(acc.num_processes),
        }
        self._record(at.step, row, sampler)
        if at.step == start.step + 1:  # optimizer states exist from the first step on
            self._event("precision: " + precision_text(precision_report(run.model, run.optimizer)))
        if progress:
            progress.update(1)
            progress.set_postfix(loss=f"{loss_value:.4f}")
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"loss is {loss_value} at step {at.step}")
        return loss_value

    def _periodic(self, run: _Prepared, at: StepInfo, output_dir: Path) -> None:
        """The checkpoint and the evaluation that fall on this step (--save-every, --eval-every)."""
        total = run.schedule.total_steps
        if self.config.save and due(at.step, self.config.save_every, total):
            self.save_checkpoint(output_dir, at)
        if run.eval_loader is not None and due(at.step, self.config.eval_every, total):
            self._record(at.step, _store_names(self.evaluate(run.eval_loader)), None)

    def _stop_if_requested(self, at: StepInfo, total_steps: int, output_dir: Path) -> None:
        """The stop protocol: when any rank was asked to stop (SIGTERM/SIGINT), every rank
        checkpoints at this same step and the run ends with RunStopped."""
        if at.step < total_steps and self._any_rank_stopping():
            if self.config.save:
                self.save_checkpoint(output_dir, at)
            raise RunStopped(f"stopped at step {at.step} of {total_steps}")

    # -- finish
    def _finish(
        self, run: _Prepared, start: StepInfo, at: StepInfo, loss_value: float, output_dir: Path
    ) -> dict:
        """The last checkpoint (when the run trained at all) and the final evaluation."""
        if self.config.save and at.step > start.step:
            self.save_checkpoint(output_dir, at)
        metrics: dict[str, Any] = {"steps": at.step, "final_loss": loss_value, "epochs": at.epoch + 1}
        if run.eval_loader is not None:
            final = self.evaluate(run.eval_loader)
            metrics.update(final)
            self._record(at.step, _store_names(final), None)
        latest = latest_checkpoint(output_dir)
        metrics["checkpoint_dir"] = str(latest) if latest else None
        self._log_memory_state("end of training")
        return metrics

    def _any_rank_stopping(self) -> bool:
        """A stop must be seen by every rank at the same step, or the collective checkpoint hangs."""
        if self.accelerator.num_processes == 1:
            return self.stop_requested
        import torch

        flag = torch.tensor([1.0 if self.stop_requested else 0.0], device=self.accelerator.device)
        return bool(self.accelerator.reduce(flag, reduction="sum").item() > 0)

    def _loss(self, model, batch):
        return task_metrics.loss(self.task, model, batch)

    def _record(self, step: int, row: dict[str, float], sampler) -> None:
        if sampler:
            sampler.step(step)
        if not self.accelerator.is_main_process:
            return
        if self.store is not None and self.run_id:
            self.store.log_metrics(self.run_id, step, row)
        if self.config.tracker:
            self.accelerator.log(row, step=step)

    def _event(self, message: str, level: str = "info") -> None:
        log.log(logging.WARNING if level == "warning" else logging.INFO, message)
        if self.store is not None and self.run_id and self.accelerator.is_main_process:
            self.store.add_event(self.run_id, message, level=level)

    # ---------------------------------------------------------- checkpoints
    def save_checkpoint(self, output_dir: Path, info: StepInfo) -> Path:
        """Write ``step-N`` atomically and keep the last ``keep_last`` (checkpoints.save_state)."""
        return save_state(self.accelerator, output_dir, info, self.config.keep_last, self._event)

    def _resume_state(self, output_dir: Path) -> StepInfo:
        """The newest complete checkpoint that loads (checkpoints.load_latest_state); the store's
        progress goes back to its step, or to 0 (with a warning) when there is none."""
        info = load_latest_state(self.accelerator, output_dir, self._event)
        self._reset_progress(info.step)
        return info

    def _reset_progress(self, step: int) -> None:
        """The store's progress goes back to the step training continues from (metric rows after
        it are rewritten as the run reaches those steps again)."""
        if self.store is not None and self.run_id and self.accelerator.is_main_process:
            self.store.update_run(self.run_id, last_step=step)

    # ----------------------------------------------------------- evaluation
    def evaluate(self, eval_loader) -> dict[str, float]:
        labels = self.label_names or [str(i) for i in range(self.num_labels)]
        return task_metrics.evaluate(self.task, self.model, eval_loader, self.accelerator, labels)


def _store_names(evaluation: dict[str, float]) -> dict[str, float]:
    """Validation metrics as the run store names them: eval_loss, eval_f1, eval_accuracy, eval_perplexity."""
    return {(k if k.startswith("eval") else f"eval_{k}"): v for k, v in evaluation.items()}


class _Sampler:
    """Telemetry glue: a MemorySampler writing into the run store, tagged with this rank."""

    def __init__(self, trainer: DeepSpeedTrainer) -> None:
        from nexa_core.telemetry import MemorySampler

        self._sampler = MemorySampler(trainer.store, trainer.run_id, rank=trainer.accelerator.process_index)

    def start(self) -> None:
        self._sampler.start()

    def step(self, step: int) -> None:
        self._sampler.set_step(step)
        self._sampler.sample_now()

    def stop(self, step: int) -> None:
        """Last samples, then this rank's kernel peak RSS as a metric (every rank writes its own)."""
        self._sampler.stop()
        try:
            self._sampler.store.log_metrics(self._sampler.run_id, step, self._sampler.peak_metric())
        except Exception as exc:  # telemetry never fails a run (a busy or read-only store)
            log.warning("peak RSS not recorded: %s", exc)
