"""One gpu_validation case, in a fresh process so that its peaks are its own.

Runs the case's TrainConfig through NEXA's own `run_training` (what `nexa train` runs: bundled data
padded to seq_len, DeepSpeedTrainer, run store and memory telemetry) with a random-initialised
model, and records after every optimizer step torch's peak allocated and reserved bytes for that
step (then resets them) and the process RSS; a thread samples NVML's used memory for this process
and for the device. Writes one JSON object to --out. Started by benchmarks/gpu_validation.py.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
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


def run_case(config: dict[str, Any], model_dir: str) -> dict[str, Any]:
    nvml = NvmlSampler().start()  # before torch touches the GPU
    import torch

    from nexa_core.train_config import TrainConfig
    from nexa_core.trainer import DeepSpeedTrainer
    from nexa_core.training_run import run_training

    cuda = torch.cuda.is_available()
    steps_out: list[dict[str, int]] = []
    seen: dict[str, Any] = {}
    record = DeepSpeedTrainer._record

    def measuring_record(self, step, row, sampler):  # the trainer calls it once per optimizer step
        record(self, step, row, sampler)
        seen["trainer"] = self
        rec = {"step": step, "rss_bytes": telemetry.process_tree_rss_bytes()}
        if cuda:
            rec["max_allocated_bytes"] = torch.cuda.max_memory_allocated()
            rec["max_reserved_bytes"] = torch.cuda.max_memory_reserved()
            torch.cuda.reset_peak_memory_stats()  # the next step's window starts here
        steps_out.append(rec)

    DeepSpeedTrainer._record = measuring_record  # this process runs one case and exits
    start = time.perf_counter()
    run_training(TrainConfig.from_dict({**config, "model": model_dir}))
    nvml.stop()
    trainer = seen["trainer"]
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
    parser.add_argument("--config", required=True, help="the case's TrainConfig as JSON")
    parser.add_argument("--model-dir", required=True, help="folder holding the case's config.json")
    parser.add_argument("--out", required=True, help="file to write the result JSON to")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    result = run_case(json.loads(args.config), args.model_dir)
    Path(args.out).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    from nexa_core import entry

    entry.install()  # end without the interpreter's teardown, as `nexa` does (about 1 s a case)
    entry.finish(main())
