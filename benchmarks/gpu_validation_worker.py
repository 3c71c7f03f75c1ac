"""One gpu_validation case, in a fresh process so that its peaks are its own.

Trains a random-initialised model with NEXA's DeepSpeedTrainer (the same class `nexa train`
drives) on fixed-shape random batches for a few optimizer steps and records, after every step,
torch's peak allocated and reserved bytes for that step (then resets them), the process RSS, and,
from a sampling thread, NVML's used memory for this process and for the device. Writes one JSON
object to --out. Started by benchmarks/gpu_validation.py; not meant to be run by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from nexa_core import telemetry  # noqa: E402


class NvmlSampler:
    """Peak NVML used memory (this process, and the whole device) sampled every ``interval_s``.
    NVML only: asking torch would create this process's CUDA context before ``device_before``."""

    def __init__(self, interval_s: float = 0.02) -> None:
        self.interval_s = interval_s
        self.process_peak: int | None = None
        self.device_peak: int | None = None
        self.device_before: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="nvml-peak", daemon=True)
        self._nvml, self._handle = None, None
        physical = telemetry.physical_gpu_index(0)
        try:
            import pynvml

            pynvml.nvmlInit()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(physical)
            self._nvml = pynvml
        except Exception:  # no driver (the CPU dry run) or no such device
            pass

    def _sample(self) -> None:
        used = telemetry.process_gpu_used_bytes(0)
        if used is not None:
            self.process_peak = max(self.process_peak or 0, used)
        if self._nvml is not None:
            try:
                device = int(self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used)
            except Exception:
                return
            self.device_peak = max(self.device_peak or 0, device)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def start(self) -> NvmlSampler:
        self._sample()  # the device's use before this process touches it
        self.device_before = self.device_peak
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sample()


def synthetic_loader(task: str, vocab: int, batch: int, seq: int, steps: int, num_labels: int):
    """Fixed-shape random batches (every batch batch × seq, as `--pad-to-seq-len` gives)."""
    import torch
    from torch.utils.data import DataLoader

    g = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(batch * steps):
        ids = torch.randint(0, vocab, (seq,), generator=g)
        row = {"input_ids": ids, "attention_mask": torch.ones(seq, dtype=torch.long)}
        if task == "causal-lm":
            row["labels"] = ids.clone()
        elif task == "ner":
            row["labels"] = torch.randint(0, num_labels, (seq,), generator=g)
        else:  # classification
            row["labels"] = torch.randint(0, num_labels, (), generator=g)
        rows.append(row)
    return DataLoader(rows, batch_size=batch, shuffle=False)


def _optimizer_chain(accelerator) -> list[str]:
    """Class names from Accelerate's wrapper down to the optimizer that steps (FusedAdam, AdamW...)."""
    names = []
    opt: Any = accelerator._optimizers[0] if accelerator._optimizers else None
    for _ in range(4):
        if opt is None:
            break
        names.append(type(opt).__name__)
        opt = getattr(opt, "optimizer", None)
    return names


def run_case(case: dict[str, Any], model_dir: str) -> dict[str, Any]:
    nvml = NvmlSampler().start()  # before torch touches the GPU
    import torch

    from nexa_core.trainer import DeepSpeedTrainer

    cuda = torch.cuda.is_available()
    steps_out: list[dict[str, int]] = []

    class MeasuringTrainer(DeepSpeedTrainer):
        def _record(self, step, row, sampler):  # called once per optimizer step
            super()._record(step, row, sampler)
            rec = {"step": step, "rss_bytes": telemetry.process_tree_rss_bytes()}
            if cuda:
                rec["max_allocated_bytes"] = torch.cuda.max_memory_allocated()
                rec["max_reserved_bytes"] = torch.cuda.max_memory_reserved()
                torch.cuda.reset_peak_memory_stats()  # the next step's window starts here
            steps_out.append(rec)

    start = time.perf_counter()
    trainer = MeasuringTrainer(
        model_dir,
        task=case["task"],
        num_labels=case["num_labels"],
        zero_stage=case["zero_stage"],
        offload_optimizer=case["offload_optimizer"],
        offload_params=case["offload_param"],
        gradient_checkpointing=case["gradient_checkpointing"],
        use_lora=case["lora"],
        lora_rank=case["lora_rank"],
        precision=case["precision"],
        use_deepspeed=case["deepspeed"],
        max_steps=case["steps"],
        random_init=True,
        save=False,
    )
    vocab = int(trainer.model.config.vocab_size)
    loader = synthetic_loader(
        case["task"], vocab, case["batch_size"], case["seq_len"], case["steps"], case["num_labels"]
    )
    with tempfile.TemporaryDirectory() as out:
        trainer.train(loader, output_dir=out)
    nvml.stop()
    later = [s for s in steps_out if s["step"] >= 2] or steps_out
    result: dict[str, Any] = {
        "steps": steps_out,
        "optimizer": _optimizer_chain(trainer.accelerator),
        "deepspeed": trainer.use_deepspeed,
        "precision": str(trainer.precision),
        "wall_s": round(time.perf_counter() - start, 1),
        # ru_maxrss: this process's lifetime peak RSS in KiB (Linux); the per-step samples include children
        "peak_rss_bytes": max(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, *(s["rss_bytes"] for s in steps_out)
        ),
    }
    if cuda:
        result.update(
            peak_allocated_bytes=max(s["max_allocated_bytes"] for s in later),
            peak_reserved_bytes=max(s["max_reserved_bytes"] for s in later),
            first_step_allocated_bytes=steps_out[0]["max_allocated_bytes"],
            nvml_process_peak_bytes=nvml.process_peak,
            # NVML hides the process in some containers (PID namespaces): then the device's growth
            # while this case ran is the closest figure.
            nvml_used_peak_bytes=nvml.process_peak
            if nvml.process_peak is not None
            else (nvml.device_peak - (nvml.device_before or 0) if nvml.device_peak else None),
            nvml_source="process" if nvml.process_peak is not None else "device growth",
            nvml_device_peak_bytes=nvml.device_peak,
            nvml_device_before_bytes=nvml.device_before,
        )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--case", required=True, help="the case as JSON")
    parser.add_argument("--model-dir", required=True, help="folder holding the case's config.json")
    parser.add_argument("--out", required=True, help="file to write the result JSON to")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    result = run_case(json.loads(args.case), args.model_dir)
    Path(args.out).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
