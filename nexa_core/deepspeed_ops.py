"""DeepSpeed's C++ ops, built ahead of the first run that loads them.

DeepSpeed JIT-builds an op (torch.utils.cpp_extension) the first time a process loads it: CPU Adam
for an offloaded optimizer, FusedAdam for its GPU optimizer, the shared-memory all-reduce its comm
layer uses between CPU ranks. Measured on the 2-core reference machine: 40 s for CPU Adam and 25 s
for the all-reduce, minutes in which a run shows no step, and every rank of it waits on the build's
lock. torch keys a build on its compiler command, which names the Python environment: two
environments sharing one extension folder rebuild the op each time they alternate. So the README's
set-up (scripts/env.sh) keeps the builds inside the environment (TORCH_EXTENSIONS_DIR=.venv/...)
and runs ``nexa ops`` once when it installs; a run then finds the op built."""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass(frozen=True)
class OpBuild:
    op: str  # DeepSpeed's builder name, e.g. CPUAdamBuilder
    ready: bool
    detail: str  # "ready in 41.2 s", or why it was not built

    def line(self) -> str:
        return f"{self.op}: {self.detail}"


def run_ops(gpu: bool) -> tuple[str, ...]:
    """The ops NEXA's runs load: CPU Adam (an offloaded optimizer, on CPU or GPU machines), then
    FusedAdam on a GPU (DeepSpeed's optimizer without offload), or the shared-memory all-reduce
    between CPU ranks (on CPU DeepSpeed steps plain torch AdamW; measured: no FusedAdam build)."""
    return ("CPUAdamBuilder", "FusedAdamBuilder") if gpu else ("CPUAdamBuilder", "ShareMemCommBuilder")


def build_ops(names: tuple[str, ...] | None = None) -> list[OpBuild]:
    """Load (building where needed) each op through DeepSpeed's accelerator, as a run would, after
    the same two fixes a run applies first (device_manager.get_accelerator)."""
    from nexa_core.device_manager import clear_stale_build_locks, ensure_deepspeed_arch_list, gpu_available

    ensure_deepspeed_arch_list()
    clear_stale_build_locks()
    from deepspeed.accelerator import get_accelerator

    results = []
    for name in names or run_ops(gpu_available()):
        builder = get_accelerator().create_op_builder(name)
        if builder is None:
            results.append(OpBuild(name, False, "not used with DeepSpeed's accelerator on this machine"))
            continue
        if not builder.is_compatible():
            why = f" ({builder.error_log})" if builder.error_log else ""
            results.append(OpBuild(name, False, f"not compatible with this machine{why}"))
            continue
        start = time.monotonic()
        try:
            builder.load(verbose=False)
        # a compiler error, a missing ninja or nvcc: reported, and the next op still tried
        except Exception as exc:  # noqa: BLE001
            results.append(OpBuild(name, False, f"build failed: {str(exc).strip()[-300:]}"))
            continue
        results.append(OpBuild(name, True, f"ready in {time.monotonic() - start:.1f} s"))
    return results
