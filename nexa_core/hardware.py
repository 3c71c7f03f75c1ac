"""What this machine has: GPUs through NVML (physical ids, as nvidia-smi shows them) and host RAM."""

from __future__ import annotations

from dataclasses import dataclass

import psutil


@dataclass(frozen=True)
class Gpu:
    index: int  # physical NVML index: the id CUDA_VISIBLE_DEVICES takes with CUDA_DEVICE_ORDER=PCI_BUS_ID
    name: str
    total_bytes: int
    free_bytes: int


@dataclass(frozen=True)
class Hardware:
    gpus: tuple[Gpu, ...]
    host_total_bytes: int
    host_available_bytes: int

    @property
    def gpu_count(self) -> int:
        return len(self.gpus)

    @property
    def min_gpu_free_bytes(self) -> int:
        return min((g.free_bytes for g in self.gpus), default=0)

    @property
    def min_gpu_total_bytes(self) -> int:
        return min((g.total_bytes for g in self.gpus), default=0)


def list_gpus() -> tuple[Gpu, ...]:
    """GPUs seen by NVML; an empty tuple when there is no driver (a CPU-only machine)."""
    try:
        import pynvml
    except ImportError:
        return ()
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return ()
    try:
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
            name = pynvml.nvmlDeviceGetName(handle)
            gpus.append(
                Gpu(i, name.decode() if isinstance(name, bytes) else name, int(mem.total), int(mem.free))
            )
        return tuple(gpus)
    finally:
        pynvml.nvmlShutdown()


def detect() -> Hardware:
    vm = psutil.virtual_memory()
    return Hardware(list_gpus(), int(vm.total), int(vm.available))
