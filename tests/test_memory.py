"""Formula tests: against DeepSpeed's own estimators where both model the same thing, and against
the closed forms of the ZeRO paper and Korthikanti et al. 2022."""

import pytest
from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

from nexa_core.enums import Precision, Task
from nexa_core.memory import (
    Calibration,
    Layout,
    activation_bytes,
    get_optimal_zero_stage,
    layouts,
    model_states_bytes,
    per_rank_estimate,
)
from nexa_core.models import Architecture

PSI = 1_234_567_890
LARGEST = 98_765_432
NO_BUFFERS = Calibration(host_offload_factor=1.5, process_baseline_bytes=0, deepspeed_host_bytes=0)


def gpu_states(stage, off_opt, off_param, gpus, nodes, precision=Precision.FP16, trainable=PSI):
    layout = Layout(stage, off_opt, off_param, gpus, nodes)
    return model_states_bytes(PSI, trainable, LARGEST, precision, layout)


@pytest.mark.parametrize("gpus,nodes", [(1, 1), (4, 1), (8, 2)])
def test_zero2_matches_deepspeed_estimator(gpus, nodes):
    _, ds_gpu = estimate_zero2_model_states_mem_needs(PSI, gpus, nodes, cpu_offload=False)
    assert gpu_states(2, False, False, gpus, nodes).gpu.total_bytes == pytest.approx(ds_gpu, abs=16)
    _, ds_gpu_off = estimate_zero2_model_states_mem_needs(PSI, gpus, nodes, cpu_offload=True)
    assert gpu_states(2, True, False, gpus, nodes).gpu.total_bytes == pytest.approx(ds_gpu_off, abs=16)


@pytest.mark.parametrize("gpus,nodes", [(1, 1), (4, 1), (8, 2)])
def test_zero3_matches_deepspeed_estimator(gpus, nodes):
    n = gpus * nodes
    _, ds, _ = estimate_zero3_model_states_mem_needs(PSI, LARGEST, gpus, nodes, cpu_offload=False)
    # DeepSpeed's ZeRO-3 estimator counts 18 bytes/param where its ZeRO-2 one counts 2 + 18: it leaves
    # out the 16-bit gradient partition (stage3.py grads_in_partition). We keep it (docs/MEMORY.md).
    assert gpu_states(3, False, False, gpus, nodes).gpu.total_bytes - 2 * PSI // n == pytest.approx(
        ds, abs=16
    )
    _, ds, _ = estimate_zero3_model_states_mem_needs(
        PSI, LARGEST, gpus, nodes, cpu_offload=True, cpu_offload_params=False
    )
    assert gpu_states(3, True, False, gpus, nodes).gpu.total_bytes == pytest.approx(ds, abs=16)
    _, ds, _ = estimate_zero3_model_states_mem_needs(
        PSI, LARGEST, gpus, nodes, cpu_offload=True, cpu_offload_params=True
    )
    assert gpu_states(3, True, True, gpus, nodes).gpu.total_bytes == ds


@pytest.mark.parametrize(
    "stage,offload_param,ds_bytes_per_param", [(2, False, 16), (3, False, 16), (3, True, 18)]
)
def test_offloaded_host_bytes_match_deepspeed_single_gpu(stage, offload_param, ds_bytes_per_param):
    # DeepSpeed (zero_init): cpu_mem = params * {16, 18} * 1.5 on one GPU.
    layout = Layout(stage, True, offload_param, 1, 1)
    _, host = per_rank_estimate(
        PSI, PSI, LARGEST, None, Precision.FP16, layout, 1, 1, False, Task.NER, 7, NO_BUFFERS
    )
    assert host.total_bytes == pytest.approx(PSI * ds_bytes_per_param * 1.5, rel=1e-6)


def test_zero_paper_partitioning_by_stage():
    """Per-GPU bytes at N ranks: 16-bit params 2Ψ (/N at stage 3), optimizer K=12 /N from stage 1;
    DeepSpeed adds 4Ψ of fp32 gradients (partitioned like the optimizer) to the paper's 2Ψ grads."""
    n = 64
    s0 = gpu_states(0, False, False, n, 1).gpu
    s1 = gpu_states(1, False, False, n, 1).gpu
    s2 = gpu_states(2, False, False, n, 1).gpu
    s3 = gpu_states(3, False, False, n, 1).gpu
    assert s0.params_bytes == 2 * PSI and s0.optimizer_bytes == 12 * PSI
    assert s1.optimizer_bytes == 12 * PSI // n
    assert s1.gradients_bytes == 2 * PSI + 4 * PSI // n
    assert s2.gradients_bytes == 2 * PSI // n + 4 * PSI // n
    assert s3.params_bytes == 2 * PSI // n + 4 * LARGEST
    assert s0.total_bytes > s1.total_bytes > s2.total_bytes > s3.total_bytes


def test_fp32_without_zero_is_16_bytes_per_param():
    states = gpu_states(0, False, False, 1, 1, precision=Precision.FP32).gpu
    assert states.total_bytes == 16 * PSI


def test_lora_frozen_weights_have_no_gradients_or_optimizer():
    trainable = 1_000_000
    states = gpu_states(0, False, False, 1, 1, precision=Precision.BF16, trainable=trainable).gpu
    assert states.params_bytes == 2 * PSI
    assert states.gradients_bytes == (2 + 4) * trainable
    assert states.optimizer_bytes == 12 * trainable


GPT2_LIKE = Architecture("gpt2", 1600, 48, 25, 25, 6400, 50257, 1024, gated_mlp=False)


def test_activations_equal_korthikanti_per_layer():
    b, s, h, a, L = 4, 512, 1600, 25, 48
    got = activation_bytes(
        GPT2_LIKE, b, s, Precision.FP16, False, Task.CLASSIFICATION, 0, fused_attention=False
    )
    per_layer = s * b * h * (34 + 5 * a * s / h)
    extras = 2 * s * b * h  # embedding output (a classifier with 0 labels adds nothing)
    # stored activations of L layers + one layer's activation gradients during its backward
    assert got == pytest.approx((L + 1) * per_layer + extras, rel=1e-9)


def test_fused_attention_drops_the_score_matrix_and_fp32_doubles():
    args = (GPT2_LIKE, 2, 1024)
    eager = activation_bytes(*args, Precision.FP16, False, Task.CLASSIFICATION, 0, fused_attention=False)
    fused = activation_bytes(*args, Precision.FP16, False, Task.CLASSIFICATION, 0, fused_attention=True)
    assert eager - fused == pytest.approx((48 + 1) * 5 * 25 * 1024 * 1024 * 2, rel=1e-9)
    fp32 = activation_bytes(*args, Precision.FP32, False, Task.CLASSIFICATION, 0)
    assert fp32 == pytest.approx(2 * fused, rel=1e-9)


def test_contrastive_pairs_keep_both_passes():
    one = activation_bytes(GPT2_LIKE, 2, 64, Precision.BF16, False, Task.CLASSIFICATION, 0)
    pair = activation_bytes(GPT2_LIKE, 2, 64, Precision.BF16, False, Task.EMBEDDING, 0)
    assert pair == 2 * one + 2 * 4 * 2 * 1600  # + the pooled vectors of both sides


def test_checkpointing_keeps_layer_inputs_plus_one_layer():
    b, s, h, L = 2, 256, 1600, 48
    ckpt = activation_bytes(GPT2_LIKE, b, s, Precision.BF16, True, Task.NER, 7)
    # L layer inputs (2sbh) + one layer recomputed (34sbh with fused attention) and its gradients
    # + embeddings + logits
    assert ckpt == L * 2 * s * b * h + 2 * 34 * s * b * h + 2 * s * b * h + 4 * b * s * 7
    assert ckpt < activation_bytes(GPT2_LIKE, b, s, Precision.BF16, False, Task.NER, 7) / 5


def test_causal_lm_adds_fp32_logits():
    lm = activation_bytes(GPT2_LIKE, 2, 128, Precision.BF16, False, Task.CAUSAL_LM, 0)
    enc = activation_bytes(GPT2_LIKE, 2, 128, Precision.BF16, False, Task.CLASSIFICATION, 0)
    assert lm - enc == 4 * 4 * 2 * 128 * 50257


def test_layouts_cover_each_allowed_offload():
    labels = {(x.zero_stage, x.offload_optimizer, x.offload_param) for x in layouts(1, 1)}
    assert labels == {(0, False, False), (1, False, False), (1, True, False), (2, False, False), (2, True, False),
                      (3, False, False), (3, True, False), (3, True, True)}  # fmt: skip


def test_cpu_only_puts_everything_on_host():
    layout = Layout(0, False, False, 0, 1)
    gpu, host = per_rank_estimate(
        PSI, PSI, LARGEST, GPT2_LIKE, Precision.FP32, layout, 1, 128, False, Task.NER, 7
    )
    assert gpu.total_bytes == 0
    assert host.params_bytes == 4 * PSI and host.activations_bytes > 0


def test_seed_helper_kept():
    assert [get_optimal_zero_stage(x) for x in (0.1, 1, 4, 20)] == [0, 1, 2, 3]


def test_composite_gelu_keeps_four_more_mlp_tensors():
    from dataclasses import replace

    gelu_new = replace(GPT2_LIKE, composite_activation=True)
    plain = activation_bytes(GPT2_LIKE, 2, 64, Precision.BF16, False, Task.CLASSIFICATION, 0)
    composite = activation_bytes(gelu_new, 2, 64, Precision.BF16, False, Task.CLASSIFICATION, 0)
    assert composite - plain == (48 + 1) * 4 * 2 * 2 * 64 * 6400
