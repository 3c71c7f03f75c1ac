import pytest

from nexa_core.enums import Precision, Task
from nexa_core.gpu_metrics import GpuMetric, comparable_bytes
from nexa_core.memory import (
    MIB,
    Breakdown,
    Calibration,
    Layout,
    Workload,
    deepspeed_buffer_bytes,
    per_rank_estimate,
)
from nexa_core.models import size_model

CAL = Calibration(cuda_context_bytes=500 * MIB, gpu_fragmentation=0.10)


def test_each_metric_takes_its_share_of_the_total():
    # live 1000 MiB, fragmentation 10 % of it, context 500 MiB: total 1600 MiB
    b = Breakdown(params_bytes=400 * MIB, activations_bytes=600 * MIB, overhead_bytes=600 * MIB)
    assert comparable_bytes(b, GpuMetric.NVML, CAL) == 1600 * MIB
    assert comparable_bytes(b, "torch_max_reserved", CAL) == 1100 * MIB
    assert comparable_bytes(b, "torch_max_allocated", CAL) == 1000 * MIB
    assert comparable_bytes(b, "torch_peak_active", CAL) == 1000 * MIB


def test_allocated_recovers_the_planners_live_terms():
    """The planner's overhead is context + buffers + fragmentation x live (buffers inside live):
    the allocated share must equal weights + gradients + optimizer + activations + buffers."""
    size = size_model("gpt2", Task.CAUSAL_LM, 7, None)
    layout = Layout(2, False, False, 2, 1)
    workload = Workload(size.params, size.trainable_params, size.largest_layer_params, size.architecture,
                        Precision.BF16, batch_size=4, seq_len=256, task=Task.CAUSAL_LM)  # fmt: skip
    gpu, _ = per_rank_estimate(workload, layout, CAL)
    live = gpu.params_bytes + gpu.gradients_bytes + gpu.optimizer_bytes + gpu.activations_bytes
    buffers = deepspeed_buffer_bytes(size.architecture, Precision.BF16, layout)
    assert buffers > 0  # ZeRO-2 on 2 GPUs: the reduce buckets are live tensors too
    assert abs(comparable_bytes(gpu, GpuMetric.ALLOCATED, CAL) - (live + buffers)) <= 2
    assert comparable_bytes(gpu, GpuMetric.RESERVED, CAL) == gpu.total_bytes - CAL.cuda_context_bytes


def test_unknown_metric_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="torch_max_allocated"):
        comparable_bytes(Breakdown(), "nvidia-smi", CAL)
