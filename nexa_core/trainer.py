"""DeepSpeedTrainer: fine-tuning on Accelerate (with DeepSpeed when on), for the four tasks.

Accelerate does the distributed work, gradient accumulation, mixed precision and state saving;
transformers gives the models and schedulers; peft the LoRA adapters. This file holds the loop,
the per-task loss and evaluation and telemetry; checkpoints.py saves and resumes the state.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import psutil

from nexa_core import task_metrics
from nexa_core.checkpoints import StepInfo, latest_checkpoint, load_latest_state, save_state
from nexa_core.device_manager import DeepSpeedSettings, get_accelerator
from nexa_core.enums import Attention, Offload, Precision, Task
from nexa_core.errors import ConfigError
from nexa_core.models import auto_class, lora_config, resolve_model, task_config

log = logging.getLogger("nexa.trainer")


class RunStopped(Exception):
    """Training ended early on request (SIGTERM/SIGINT); a checkpoint was written when possible."""


class DeepSpeedTrainer:
    """Fine-tune ``model_name`` for ``task``; the seed guide's constructor, plus run bookkeeping."""

    def __init__(
        self,
        model_name: str,
        task: Task | str = Task.NER,
        num_labels: int | None = None,
        zero_stage: int | None = None,
        offload_optimizer: bool | str | None = None,
        offload_params: bool | str | None = None,
        gradient_checkpointing: bool = False,
        use_lora: bool = False,
        lora_rank: int = 8,
        precision: Precision | str | None = None,
        use_deepspeed: bool | None = None,
        learning_rate: float = 5e-5,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        gradient_accumulation_steps: int | None = None,
        max_steps: int | None = None,
        save_every: int | None = None,
        eval_every: int | None = None,
        keep_last: int = 2,
        seed: int = 0,
        label_names: list[str] | None = None,
        random_init: bool = False,
        store: Any = None,
        run_id: str | None = None,
        tracker: str | None = None,
        tracker_dir: str | Path | None = None,
        progress: bool = False,
        save: bool = True,
        zero3_init: bool = True,
        attention: Attention | str = Attention.AUTO,
    ) -> None:
        from accelerate.utils import set_seed

        self.task = Task.parse(task, "task")
        self.model_name = model_name
        self.label_names = label_names
        self.num_labels = num_labels or (len(label_names) if label_names else 7)
        self.gradient_checkpointing = gradient_checkpointing
        self.use_lora = use_lora
        self.lora_rank = lora_rank
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.warmup_steps = warmup_steps
        self.max_steps = max_steps
        self.save_every = save_every
        self.eval_every = eval_every
        self.keep_last = keep_last
        self.seed = seed
        self.random_init = random_init
        self.store = store
        self.run_id = run_id
        self.tracker = tracker
        self.progress = progress
        self.save = save
        self.attention = Attention.parse(attention, "attention (--attention)")
        self.settings = DeepSpeedSettings.from_env(
            mode=None if use_deepspeed is None else ("on" if use_deepspeed else "off"),
            zero_stage=zero_stage,
            offload_optimizer=_offload(offload_optimizer),
            offload_param=_offload(offload_params),
            precision=precision,
            gradient_accumulation_steps=gradient_accumulation_steps,
            zero3_init=None if zero3_init else False,
        )
        kwargs: dict[str, Any] = {}
        if tracker:
            kwargs["log_with"] = tracker
            # File-based trackers (tensorboard) refuse to start without a logging folder.
            kwargs["project_dir"] = str(tracker_dir or Path("nexa-tracker-logs"))
        from accelerate.utils import DataLoaderConfiguration

        # Seedable sampler: the shuffle order depends only on (seed, epoch), so a resumed run sees
        # the same batches as an uninterrupted one.
        kwargs["dataloader_config"] = DataLoaderConfiguration(use_seedable_sampler=True)
        self.accelerator = get_accelerator(settings=self.settings, **kwargs)
        self.use_deepspeed = self.accelerator.state.deepspeed_plugin is not None
        self.precision = self.settings.resolved_precision()
        set_seed(seed)
        self.model = self._build_model()
        self.stop_requested = False  # set from a signal handler; acted on at the next step boundary

    # ----------------------------------------------------------------- model
    def load_dtype(self):
        """The dtype the weights are created in, whatever the checkpoint stores: the 16-bit compute
        dtype when DeepSpeed trains in it (its engine casts the module to it and keeps an fp32
        master copy in the optimizer), else fp32 (plain fp32 training, or Accelerate's autocast,
        which steps fp32 weights). memory.Workload.load_bytes_per_param makes the same choice."""
        import torch

        if self.precision is Precision.BF16_TRUE:
            return torch.bfloat16  # weights, gradients and Adam states all bf16, no fp32 copy
        if self.use_deepspeed and self.precision is not Precision.FP32:
            return {Precision.BF16: torch.bfloat16, Precision.FP16: torch.float16}[self.precision]
        return torch.float32

    def sharded_init(self) -> bool:
        """ZeRO-3 with zero.Init: each rank creates only its partition of every parameter."""
        stage, _, _ = self.settings.layout()
        return self.use_deepspeed and stage == 3 and self.settings.zero3_init

    def _build_model(self):
        resolved = resolve_model(self.model_name)
        config = task_config(resolved, self.task, self.num_labels)
        if self.label_names and self.task in (Task.NER, Task.CLASSIFICATION):
            config.id2label = dict(enumerate(self.label_names))
            config.label2id = {n: i for i, n in enumerate(self.label_names)}
        cls = auto_class(self.task)
        dtype = self.load_dtype()
        # An explicit dtype: transformers' default ("auto") would keep the checkpoint's own dtype, so a
        # bf16 checkpoint would train bf16 weights and bf16 Adam states under --precision fp32.
        kwargs: dict[str, Any] = {"dtype": dtype}
        if self.attention is not Attention.AUTO:
            kwargs["attn_implementation"] = self.attention.value
        pretrained = resolved.weights_dir is not None and not self.random_init
        if not pretrained and not self.random_init:
            raise ConfigError(
                [
                    f"model: no weights for {self.model_name!r} on this machine; give a local folder with weights, "
                    "the packaged sentence-transformers/all-MiniLM-L6-v2, or --random-init for a random-initialised test run"
                ]
            )
        if self.random_init:
            log.warning("model %s: RANDOM-INITIALISED weights (random_init=True)", self.model_name)
        with self._zero3_init_context():
            if pretrained:
                model = cls.from_pretrained(resolved.weights_dir, config=config, **kwargs)
            else:
                model = cls.from_config(config, **kwargs)
        self._event(
            f"model load: {'sharded at creation (DeepSpeed zero.Init), 1/N of each parameter per rank' if self.sharded_init() else 'one full copy per rank'}, "
            f"{str(dtype).removeprefix('torch.')} weights, "
            f"{'checkpoint ' + str(resolved.weights_dir) if pretrained else 'RANDOM-INITIALISED'}"
        )
        if self.task is Task.CAUSAL_LM and model.config.pad_token_id is None:
            model.config.pad_token_id = model.config.eos_token_id
        if self.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if self.use_lora:
            from peft import get_peft_model

            model = get_peft_model(model, lora_config(self.task, self.lora_rank))
        return model

    def _zero3_init_context(self):
        """transformers builds a model under deepspeed.zero.Init whenever a ZeRO-3 DeepSpeed config is
        registered with it, and Accelerate registers one for every ZeRO-3 plugin whatever its
        zero3_init_flag says (accelerate 1.15 DeepSpeedPlugin.set_deepspeed_weakref). So "off" has to
        unregister it for the build, and register it again for what follows (saving, resizing)."""
        import contextlib

        stage, _, _ = self.settings.layout()
        if not self.use_deepspeed or stage != 3 or self.settings.zero3_init:
            return contextlib.nullcontext()

        @contextlib.contextmanager
        def unsharded():
            from transformers.integrations.deepspeed import unset_hf_deepspeed_config

            unset_hf_deepspeed_config()
            try:
                yield
            finally:
                self.accelerator.state.deepspeed_plugin.set_deepspeed_weakref()

        return unsharded()

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
            optimizer = DummyOptim(params, lr=self.learning_rate, weight_decay=self.weight_decay)
        else:
            optimizer = torch.optim.AdamW(params, lr=self.learning_rate, weight_decay=self.weight_decay)
        if "scheduler" in ds_config:
            scheduler = DummyScheduler(
                optimizer, total_num_steps=total_steps, warmup_num_steps=self.warmup_steps
            )
        else:
            scheduler = get_linear_schedule_with_warmup(optimizer, self.warmup_steps, total_steps)
        return optimizer, scheduler

    def train(
        self,
        train_dataloader,
        num_epochs: int = 1,
        output_dir: str | Path = "nexa_output",
        eval_dataloader=None,
        resume: bool = False,
    ) -> dict[str, Any]:
        """Train, checkpoint into ``output_dir/checkpoints`` and return final metrics."""
        acc = self.accelerator
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        steps_per_epoch = max(1, math.ceil(len(train_dataloader) / self.settings.gradient_accumulation_steps))
        total_steps = self.max_steps or steps_per_epoch * num_epochs
        num_epochs = math.ceil(total_steps / steps_per_epoch)
        optimizer, scheduler = self._optimizer_and_scheduler(total_steps)
        prepared = acc.prepare(
            self.model,
            optimizer,
            train_dataloader,
            scheduler,
            *([eval_dataloader] if eval_dataloader else []),
        )
        model, optimizer, train_loader, scheduler = prepared[:4]
        eval_loader = prepared[4] if eval_dataloader else None
        self.model = model
        if self.tracker:
            acc.init_trackers(
                self.run_id or "nexa", config={"model": self.model_name, "task": str(self.task)}
            )
        self._log_memory_state("after prepare")
        self._event("engine: " + engine_text(engine_report(model, optimizer)))
        if self.store is not None and self.run_id and acc.is_main_process:
            self.store.update_run(
                self.run_id, total_steps=total_steps
            )  # progress and ETA for epoch-based runs

        start = self._resume_state(output_dir) if resume else StepInfo(0, 0, 0)

        sampler = _Sampler(self) if self.store is not None and self.run_id else None
        if sampler:
            sampler.start()
        metrics: dict[str, Any] = {}
        step = start.step
        progress = None
        if self.progress and acc.is_local_main_process:
            from tqdm.auto import tqdm

            progress = tqdm(total=total_steps, initial=step, desc="training", unit="step")
        try:
            model.train()
            loss_value = float("nan")
            window_start, window_samples, window_tokens = time.perf_counter(), 0, 0
            epoch, batches = start.epoch, start.batches_into_epoch
            # Resuming a run that already reached its last step trains nothing more.
            for epoch in range(start.epoch, num_epochs if step < total_steps else start.epoch):
                train_loader.set_epoch(epoch)
                loader = train_loader
                skip = start.batches_into_epoch if epoch == start.epoch else 0
                if skip:
                    loader = acc.skip_first_batches(train_loader, skip)
                batches = skip
                for batch in loader:
                    batches += 1
                    with acc.accumulate(model):
                        loss = self._loss(model, batch)
                        acc.backward(loss)
                        grad_norm = None
                        if acc.sync_gradients and not self.use_deepspeed:
                            grad_norm = acc.clip_grad_norm_(model.parameters(), 1.0)
                        optimizer.step()
                        scheduler.step()
                        optimizer.zero_grad()
                    window_samples += task_metrics.batch_size(batch)
                    window_tokens += task_metrics.token_count(batch)
                    if not acc.sync_gradients:
                        continue
                    step += 1
                    loss_value = acc.gather(loss.detach()).float().mean().item()
                    if self.use_deepspeed:
                        grad_norm = model.get_global_grad_norm()
                    elapsed = max(time.perf_counter() - window_start, 1e-9)
                    row = {
                        "loss": loss_value,
                        "lr": optimizer.param_groups[0]["lr"],
                        "epoch": epoch + batches / max(len(train_loader), 1),
                        "grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
                        "samples_per_s": window_samples * acc.num_processes / elapsed,
                        "tokens_per_s": window_tokens * acc.num_processes / elapsed,
                        "step_time_s": elapsed,
                    }
                    window_start, window_samples, window_tokens = time.perf_counter(), 0, 0
                    self._record(step, row, sampler)
                    if step == start.step + 1:  # optimizer states exist from the first step on
                        self._event("precision: " + precision_text(precision_report(model, optimizer)))
                    if progress:
                        progress.update(1)
                        progress.set_postfix(loss=f"{loss_value:.4f}")
                    if not math.isfinite(loss_value):
                        raise FloatingPointError(f"loss is {loss_value} at step {step}")
                    if self.save and self.save_every and step % self.save_every == 0 and step < total_steps:
                        self.save_checkpoint(output_dir, StepInfo(step, epoch, batches))
                    if eval_loader is not None and self.eval_every and step % self.eval_every == 0:
                        if step < total_steps:  # the last step has the final evaluation below
                            self._record(step, _store_names(self.evaluate(eval_loader)), None)
                    if self._any_rank_stopping() and step < total_steps:
                        if self.save:
                            self.save_checkpoint(output_dir, StepInfo(step, epoch, batches))
                        raise RunStopped(f"stopped at step {step} of {total_steps}")
                    if step >= total_steps:
                        break
                if step >= total_steps:
                    break
            if self.save and step > start.step:
                self.save_checkpoint(output_dir, StepInfo(step, epoch, batches))
            metrics = {"steps": step, "final_loss": loss_value, "epochs": epoch + 1}
            if eval_loader is not None:
                final = self.evaluate(eval_loader)
                metrics.update(final)
                self._record(step, _store_names(final), None)
            latest = latest_checkpoint(output_dir)
            metrics["checkpoint_dir"] = str(latest) if latest else None
            self._log_memory_state("end of training")
        finally:
            if progress:
                progress.close()
            if sampler:
                sampler.stop(step)
            if self.tracker:
                acc.end_training()
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
        if self.tracker:
            self.accelerator.log(row, step=step)

    def _event(self, message: str, level: str = "info") -> None:
        log.log(logging.WARNING if level == "warning" else logging.INFO, message)
        if self.store is not None and self.run_id and self.accelerator.is_main_process:
            self.store.add_event(self.run_id, message, level=level)

    # ---------------------------------------------------------- checkpoints
    def save_checkpoint(self, output_dir: Path, info: StepInfo) -> Path:
        """Write ``step-N`` atomically and keep the last ``keep_last`` (checkpoints.save_state)."""
        return save_state(self.accelerator, output_dir, info, self.keep_last, self._event)

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


def engine_report(model, optimizer) -> dict[str, Any]:
    """What DeepSpeed really set up, read from the engine and its optimizer rather than from NEXA's
    settings: the ZeRO stage, the optimizer class, whether the optimizer states and the parameters
    live on the CPU, and how many of the module's parameters are partitioned (ZeRO-3)."""
    if not hasattr(model, "zero_optimization_stage"):  # Accelerate without DeepSpeed
        return {"deepspeed": False}
    zero = getattr(optimizer, "optimizer", optimizer)  # Accelerate's wrapper -> DeepSpeed's optimizer
    params = list(model.module.parameters())
    return {
        "deepspeed": True,
        "zero_stage": int(model.zero_optimization_stage()),
        "optimizer": type(zero).__name__,
        # stage 1-2: DeepSpeedZeroOptimizer.cpu_offload; stage 3: .offload_optimizer / .offload_param
        "offload_optimizer": bool(
            getattr(zero, "cpu_offload", False) or getattr(zero, "offload_optimizer", False)
        ),
        "offload_param": bool(getattr(zero, "offload_param", False)),
        "partitioned_params": sum(hasattr(p, "ds_tensor") for p in params),
        "params": len(params),
    }


def engine_text(report: dict[str, Any]) -> str:
    if not report["deepspeed"]:
        return "DeepSpeed off"
    off = {True: "cpu", False: "none"}
    return (
        f"ZeRO stage {report['zero_stage']} ({report['optimizer']}), optimizer offload "
        f"{off[report['offload_optimizer']]}, parameter offload {off[report['offload_param']]}, "
        f"parameters partitioned {report['partitioned_params']}/{report['params']}"
    )


def _dtype_name(dtype) -> str:
    return {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}.get(
        str(dtype).removeprefix("torch."), str(dtype)
    )


def precision_report(model, optimizer) -> dict[str, list[str]]:
    """The dtypes a run really holds: the model's weights (ZeRO-3: their partitions), the tensors the
    optimizer steps (DeepSpeed's fp32 master copy, or the weights themselves) and its Adam states.
    Read from the objects, not from the configuration, so a checkpoint's stored dtype or a launcher
    default that overrode the chosen precision shows here."""
    weights = {_dtype_name(getattr(p, "ds_tensor", p).dtype) for p in model.parameters()}
    inner = optimizer
    while hasattr(inner, "optimizer"):  # Accelerate's wrapper -> DeepSpeed's ZeRO optimizer -> torch's
        inner = inner.optimizer
    # ZeRO-3 empties the inner optimizer's param groups between steps; its state keeps the tensors
    stepped = {_dtype_name(p.dtype) for g in inner.param_groups for p in g["params"] if p.numel()}
    stepped |= {_dtype_name(p.dtype) for p in inner.state if hasattr(p, "dtype")}
    states = {
        _dtype_name(v.dtype)
        for st in inner.state.values()
        for k, v in st.items()
        if k in ("exp_avg", "exp_avg_sq") and hasattr(v, "dtype")
    }
    return {
        "weights": sorted(weights),
        "optimizer_params": sorted(stepped),
        "optimizer_states": sorted(states),
    }


def precision_text(report: dict[str, list[str]]) -> str:
    return " ".join(f"{k}={'/'.join(v) or 'none'}" for k, v in report.items())


def _offload(value: bool | str | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return Offload.CPU.value if value else Offload.NONE.value
    return value


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
