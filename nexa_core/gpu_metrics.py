"""Which of the planner's per-GPU terms a measured GPU figure should be compared with.

Three figures are measured on a GPU, and each one covers a different part of the estimate:

- ``torch_max_allocated`` (and ``torch_peak_active``, the allocator's active bytes): tensors alive
  at the peak. Compare with the live terms only: weights, gradients, optimizer states, activations
  and DeepSpeed's buffers.
- ``torch_max_reserved``: what the caching allocator holds, i.e. the live terms plus fragmentation
  and cached free blocks. Compare with the per-GPU total less the CUDA context.
- ``nvml_used``: what the driver reports for the device (nvidia-smi), i.e. reserved plus the CUDA
  context (kernels, cuBLAS/cuDNN handles). Compare with the whole per-GPU total.

The planner's per-GPU overhead is ``cuda_context + buffers + gpu_fragmentation × live`` with the
buffers counted inside ``live`` (memory.gpu_rank_peak), so the live terms are recovered as
``(total − context) / (1 + gpu_fragmentation)`` without reaching into the planner's internals.
"""

from __future__ import annotations

from nexa_core.enums import _Choice
from nexa_core.memory import DEFAULT_CALIBRATION, Breakdown, Calibration


class GpuMetric(_Choice):
    ALLOCATED = "torch_max_allocated"
    ACTIVE = "torch_peak_active"
    RESERVED = "torch_max_reserved"
    NVML = "nvml_used"


def comparable_bytes(
    per_gpu: Breakdown, metric: GpuMetric | str, calibration: Calibration = DEFAULT_CALIBRATION
) -> int:
    """The part of the planner's per-GPU estimate that ``metric`` measures (see the module docstring)."""
    metric = GpuMetric.parse(metric, "metric")
    total = per_gpu.total_bytes
    if metric is GpuMetric.NVML:
        return total
    without_context = max(0, total - calibration.cuda_context_bytes)
    if metric is GpuMetric.RESERVED:
        return without_context
    return round(without_context / (1 + calibration.gpu_fragmentation))
