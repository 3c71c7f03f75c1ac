"""Formula tests: against DeepSpeed's own estimators where both model the same thing, and against
the closed forms of the ZeRO paper and Korthikanti et al. 2022, and the causal-LM head against the
live tensors of a real loss and backward."""

import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

from benchmarks.live_bytes import LiveStorageBytes
from nexa_core.enums import Attention, Precision, Task, Weights
from nexa_core.memory import (
    Calibration,
    Layout,
    Workload,
    activation_bytes,
    attention_keeps_scores,
    attention_score_bytes,
    deepspeed_buffer_bytes,
    host_load_bytes,
    kv_heads_stored,
    layouts,
    model_states_bytes,
    optimizer_step_bytes,
    per_rank_estimate,
    zero3_gathered_bytes,
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
    """DeepSpeed's ZeRO-3 estimator adds 4 × the largest layer for the live gathered layer; NEXA
    counts the gathered parameters apart (zero3_gathered_bytes), so the states plus that buffer
    must equal DeepSpeed's figure."""
    n = gpus * nodes
    buffer = 4 * LARGEST
    _, ds, _ = estimate_zero3_model_states_mem_needs(PSI, LARGEST, gpus, nodes, cpu_offload=False)
    # DeepSpeed's ZeRO-3 estimator counts 18 bytes/param where its ZeRO-2 one counts 2 + 18: it leaves
    # out the 16-bit gradient partition (stage3.py grads_in_partition). We keep it (docs/MEMORY.md).
    states = gpu_states(3, False, False, gpus, nodes).gpu.total_bytes
    assert states + buffer - 2 * PSI // n == pytest.approx(ds, abs=16)
    _, ds, _ = estimate_zero3_model_states_mem_needs(
        PSI, LARGEST, gpus, nodes, cpu_offload=True, cpu_offload_params=False
    )
    assert gpu_states(3, True, False, gpus, nodes).gpu.total_bytes + buffer == pytest.approx(ds, abs=16)
    _, ds, _ = estimate_zero3_model_states_mem_needs(
        PSI, LARGEST, gpus, nodes, cpu_offload=True, cpu_offload_params=True
    )
    assert gpu_states(3, True, True, gpus, nodes).gpu.total_bytes + buffer == ds


@pytest.mark.parametrize(
    "stage,offload_param,ds_bytes_per_param", [(2, False, 16), (3, False, 16), (3, True, 18)]
)
def test_offloaded_host_bytes_match_deepspeed_single_gpu(stage, offload_param, ds_bytes_per_param):
    # DeepSpeed (zero_init): cpu_mem = params * {16, 18} * 1.5 on one GPU.
    layout = Layout(stage, True, offload_param, 1, 1)
    _, host = per_rank_estimate(Workload(PSI, PSI, LARGEST, None, Precision.FP16), layout, NO_BUFFERS)
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
    assert s3.params_bytes == 2 * PSI // n
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


def test_stored_activations_are_korthikanti_per_layer_plus_one_layer_of_gradients():
    """Korthikanti et al. 2022, eq. (1): sbh(34 + 5as/h) bytes per layer in 16 bits with the s×s
    scores stored; NEXA adds one layer's activation gradients (the backward working set) and the
    embedding output."""
    b, s, h, a, L = 4, 512, 1600, 25, 48
    got = activation_bytes(GPT2_LIKE, b, s, Precision.FP16, False, Task.CLASSIFICATION, 0, keep_scores=True)
    korthikanti = L * s * b * h * (34 + 5 * a * s / h)
    one_layer_of_gradients = korthikanti / L
    embedding_output = 2 * s * b * h  # (a classifier with 0 labels adds nothing)
    assert got == pytest.approx(korthikanti + one_layer_of_gradients + embedding_output, rel=1e-9)


def test_scores_dropped_without_them_and_fp32_doubles():
    args = (GPT2_LIKE, 2, 1024)
    eager = activation_bytes(*args, Precision.FP16, False, Task.CLASSIFICATION, 0, keep_scores=True)
    fused = activation_bytes(*args, Precision.FP16, False, Task.CLASSIFICATION, 0, keep_scores=False)
    assert eager - fused == pytest.approx((48 + 1) * 5 * 25 * 1024 * 1024 * 2, rel=1e-9)
    fp32 = activation_bytes(*args, Precision.FP32, False, Task.CLASSIFICATION, 0)
    assert fp32 == pytest.approx(2 * fused, rel=1e-9)


# Llama-3.1-8B's shape (config.json on the hub): h 4096, 32 heads of 128, 8 key/value heads, I 14336.
LLAMA_8B = Architecture(
    "llama", 4096, 32, 32, 8, 14336, 128256, 131072, gated_mlp=True, head_dim=128, supports_sdpa=True
)


def test_grouped_query_attention_counts_key_value_heads_by_hand():
    """One Llama-3.1-8B layer at b = 1, s = 2048 in bf16, counted tensor by tensor (bytes):
    attention: norm output 2sbh, Q 2sbh, K and V 2·s·b·(8·128) each, attention output 2sbh, the
    (zero-probability) dropout mask sbh; MLP: input 2sbh, gate, up, act(gate), act·up 2sbI each;
    two RMSNorm inputs 2sbh each."""
    b, s = 1, 2048
    attention = 2 * s * 4096 + 2 * s * 4096 + 2 * (2 * s * 1024) + 2 * s * 4096 + s * 4096  # 67,108,864
    mlp = 2 * s * 4096 + 4 * (2 * s * 14336)  # 251,658,240
    norms = 2 * (2 * s * 4096)  # 33,554,432
    per_layer = attention + mlp + norms
    assert per_layer == 352_321_536
    got = activation_bytes(LLAMA_8B, b, s, Precision.BF16, False, Task.CLASSIFICATION, 0, kv_heads=8)
    assert got == 33 * per_layer + 2 * s * 4096  # 32 layers + one of gradients + embedding output
    # counted as if every head had its own K/V (what NEXA did before): 2 · 2 · s · (4096 - 1024) more a layer
    mha = activation_bytes(LLAMA_8B, b, s, Precision.BF16, False, Task.CLASSIFICATION, 0, kv_heads=32)
    assert mha - got == 33 * 2 * 2 * s * (4096 - 1024)


def test_which_key_value_heads_and_scores_each_attention_implementation_keeps():
    # flash-attention and SDPA without a padding mask (micro-batch 1) take the 8 K/V heads as they
    # are; eager, and SDPA with a padding mask, repeat them to 32 first (transformers repeat_kv)
    assert kv_heads_stored(LLAMA_8B, Attention.FLASH, 8) == 8
    assert kv_heads_stored(LLAMA_8B, Attention.SDPA, 1) == 8
    assert kv_heads_stored(LLAMA_8B, Attention.SDPA, 8) == 32
    assert kv_heads_stored(LLAMA_8B, Attention.EAGER, 1) == 32
    assert kv_heads_stored(LLAMA_8B, Attention.AUTO, 1) == 8  # auto = sdpa for Llama
    # s×s scores: eager always; SDPA only on CPU with attention dropout (its fused CPU kernel has none)
    bert_like = replace(GPT2_LIKE, attention_dropout=0.1)
    assert attention_keeps_scores(LLAMA_8B, Attention.EAGER, cpu_only=False)
    assert not attention_keeps_scores(LLAMA_8B, Attention.SDPA, cpu_only=True)  # dropout 0
    assert attention_keeps_scores(bert_like, Attention.SDPA, cpu_only=True)
    assert not attention_keeps_scores(bert_like, Attention.SDPA, cpu_only=False)
    assert not attention_keeps_scores(bert_like, Attention.FLASH, cpu_only=True)
    no_sdpa = replace(bert_like, supports_sdpa=False)
    assert attention_keeps_scores(no_sdpa, Attention.AUTO, cpu_only=False)  # auto falls back to eager


def test_zero3_holds_up_to_max_live_parameters_gathered():
    small = Workload(331_000_000, 331_000_000, 32_768_000, None, Precision.BF16)
    big = Workload(70_000_000_000, 70_000_000_000, 1_050_673_152, None, Precision.BF16)
    z3 = Layout(3, False, False, 8, 1)
    assert zero3_gathered_bytes(small, z3) == 331_000_000 * 2  # below 1e9: the whole model
    assert zero3_gathered_bytes(big, z3) == 1_050_673_152 * 4  # its largest layer's 4-byte buffer
    assert zero3_gathered_bytes(replace(big, zero3_max_live_parameters=10**7), z3) == 1_050_673_152 * 4
    assert zero3_gathered_bytes(replace(small, zero3_max_live_parameters=10**8), z3) == 10**8 * 2
    assert zero3_gathered_bytes(small, Layout(2, False, False, 8, 1)) == 0


def test_host_load_follows_the_loading_path():
    llama = replace(LLAMA_8B, stored_dtype="bfloat16")
    w = Workload(8_000_000_000, 8_000_000_000, 525_336_576, llama, Precision.BF16)
    node = Layout(3, False, False, 8, 1)
    # sharded: global rank 0 reads the bf16 checkpoint once; random init reads nothing
    assert host_load_bytes(w, node) == 8_000_000_000 * 2
    assert host_load_bytes(replace(w, weights=Weights.RANDOM), node) == 0
    # not sharded: every rank of the node holds one copy in the load dtype (bf16 under DeepSpeed bf16)
    assert host_load_bytes(replace(w, zero3_init=False), node) == 8 * 8_000_000_000 * 2
    assert host_load_bytes(w, Layout(2, False, False, 8, 1)) == 8 * 8_000_000_000 * 2
    assert (
        host_load_bytes(replace(w, precision=Precision.FP32), Layout(2, False, False, 8, 1))
        == 8 * 8 * 4 * 10**9
    )


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
    """The log-softmax output and, in backward, two fp32 gradients: 3 × 4bsV whatever the logits'
    precision (the fp32 copy of 16-bit logits is freed once the log-softmax exists); the head's own
    peak is measured in test_the_causal_lm_heads_peak_is_the_planners_head_term."""
    lm = activation_bytes(GPT2_LIKE, 2, 128, Precision.BF16, False, Task.CAUSAL_LM, 0)
    enc = activation_bytes(GPT2_LIKE, 2, 128, Precision.BF16, False, Task.CLASSIFICATION, 0)
    assert lm - enc == 3 * 4 * 2 * 128 * 50257
    lm32 = activation_bytes(GPT2_LIKE, 2, 128, Precision.FP32, False, Task.CAUSAL_LM, 0)
    enc32 = activation_bytes(GPT2_LIKE, 2, 128, Precision.FP32, False, Task.CLASSIFICATION, 0)
    assert lm32 - enc32 == 3 * 4 * 2 * 128 * 50257


@pytest.mark.parametrize("precision", [Precision.FP32, Precision.BF16])
def test_the_causal_lm_heads_peak_is_the_planners_head_term(precision):
    """LM head, transformers' causal-LM loss and backward, as the trainer runs them (only the loss
    kept): the peak of the storages they create is the planner's head term (the weight's gradient
    is created after that peak)."""
    from transformers.loss.loss_utils import ForCausalLMLoss

    b, s, h = 2, 64, 32
    dtype = torch.float32 if precision is Precision.FP32 else torch.bfloat16
    torch.manual_seed(0)
    x = torch.randn(b, s, h, dtype=dtype, requires_grad=True)
    weight = torch.nn.Parameter(torch.randn(GPT2_LIKE.vocab_size, h, dtype=dtype) * 0.02)
    labels = torch.randint(0, GPT2_LIKE.vocab_size, (b, s))
    with LiveStorageBytes() as live:
        loss = ForCausalLMLoss(torch.nn.functional.linear(x, weight), labels, vocab_size=GPT2_LIKE.vocab_size)
        loss.backward()
    measured = live.peak
    head = activation_bytes(GPT2_LIKE, b, s, precision, False, Task.CAUSAL_LM, 0) - activation_bytes(
        GPT2_LIKE, b, s, precision, False, Task.CLASSIFICATION, 0
    )
    assert measured == pytest.approx(head, rel=0.02), measured / (4 * b * s * GPT2_LIKE.vocab_size)


def test_layouts_cover_each_allowed_offload():
    labels = {(x.zero_stage, x.offload_optimizer, x.offload_param) for x in layouts(1, 1)}
    assert labels == {(0, False, False), (1, False, False), (1, True, False), (2, False, False), (2, True, False),
                      (3, False, False), (3, True, False), (3, True, True)}  # fmt: skip


def test_cpu_only_puts_everything_on_host():
    layout = Layout(0, False, False, 0, 1)
    w = Workload(PSI, PSI, LARGEST, GPT2_LIKE, Precision.FP32, batch_size=64, seq_len=1024)
    gpu, host = per_rank_estimate(w, layout)
    assert gpu.total_bytes == 0
    assert host.params_bytes == 4 * PSI and host.activations_bytes > 0


NO_OVERHEAD = Calibration(process_baseline_bytes=0, deepspeed_host_bytes=0, host_fragmentation=0.0,
                          cpu_activation_factor=1.0)  # fmt: skip


def test_cpu_peak_is_the_larger_of_forward_backward_and_the_optimizer_step():
    """Stage 0: zero_grad() freed the gradients, so backward creates them as activations are freed
    (never both in full); the step holds gradients, Adam states and two temporaries of the largest
    parameter, without activations."""
    layout = Layout(0, False, False, 0, 1)
    small = Workload(PSI, PSI, LARGEST, GPT2_LIKE, Precision.FP32, batch_size=1, seq_len=128)
    _, step = per_rank_estimate(small, layout, NO_OVERHEAD)
    assert (step.params_bytes, step.gradients_bytes, step.optimizer_bytes) == (4 * PSI, 4 * PSI, 8 * PSI)
    assert step.activations_bytes == 0 and step.overhead_bytes == 2 * 4 * LARGEST
    big = replace(small, batch_size=64, seq_len=1024)
    acts = activation_bytes(GPT2_LIKE, 64, 1024, Precision.FP32, False, Task.NER, 7)
    _, fwd = per_rank_estimate(big, layout, NO_OVERHEAD)
    assert fwd.activations_bytes == acts > 4 * PSI and fwd.gradients_bytes == 0
    assert fwd.total_bytes == 4 * PSI + 8 * PSI + acts
    # DeepSpeed keeps its gradient buffers through forward and backward
    _, zero2 = per_rank_estimate(big, Layout(2, False, False, 0, 1), NO_OVERHEAD)
    assert zero2.gradients_bytes == 8 * PSI and zero2.activations_bytes == acts


NO_GPU_OVERHEAD = Calibration(cuda_context_bytes=0, gpu_fragmentation=0.0)


def test_gpu_zero_keeps_the_master_gradients_out_of_forward_and_backward():
    """ZeRO 1-3 with the optimizer on the GPU: step() creates the partition's fp32 gradients from a
    flat 16-bit copy and frees both (measured in benchmarks/zero_step_grads.py), so a rank peaks in
    backward with the 16-bit gradients only, or in the step with 2 + 4 bytes more a parameter."""
    layout = Layout(2, False, False, 2, 1)
    big = Workload(
        PSI, PSI, LARGEST, GPT2_LIKE, Precision.BF16, batch_size=64, seq_len=1024, task=Task.CAUSAL_LM
    )
    acts = activation_bytes(GPT2_LIKE, 64, 1024, Precision.BF16, False, Task.CAUSAL_LM, 7)
    buffers = deepspeed_buffer_bytes(GPT2_LIKE, Precision.BF16, layout)
    gpu, _ = per_rank_estimate(big, layout, NO_GPU_OVERHEAD)
    assert acts > 6 * PSI // 2
    assert (gpu.gradients_bytes, gpu.activations_bytes) == (2 * PSI // 2, acts)
    assert gpu.total_bytes == 2 * PSI + 2 * PSI // 2 + 12 * PSI // 2 + acts + buffers
    small = replace(big, batch_size=1, seq_len=8)
    gpu, _ = per_rank_estimate(small, layout, NO_GPU_OVERHEAD)
    assert (gpu.gradients_bytes, gpu.activations_bytes) == (2 * PSI // 2 + 6 * (PSI // 2), 0)
    # ZeRO-3 steps its partition one sub-group (at most 1e9 elements) at a time
    eight_b = replace(small, params=8 * 10**9, trainable=8 * 10**9)
    gpu, _ = per_rank_estimate(eight_b, Layout(3, False, False, 1, 1), NO_GPU_OVERHEAD)
    assert gpu.gradients_bytes == 2 * 8 * 10**9 + 6 * 10**9
    # fp32: the flat copy is already fp32, so the cast is the copy itself
    fp32, _ = per_rank_estimate(replace(small, precision=Precision.FP32), layout, NO_GPU_OVERHEAD)
    assert fp32.gradients_bytes == 4 * PSI // 2 + 4 * (PSI // 2)
    # the optimizer on the host, or no ZeRO: nothing moves between the phases
    for other in (Layout(2, True, False, 2, 1), Layout(0, False, False, 2, 1)):
        states = model_states_bytes(PSI, PSI, LARGEST, Precision.BF16, other).gpu
        gpu, _ = per_rank_estimate(big, other, NO_GPU_OVERHEAD)
        assert (gpu.gradients_bytes, gpu.activations_bytes) == (states.gradients_bytes, acts)


def test_deepspeed_creates_the_fp32_gradients_in_the_step_as_the_planner_counts_them():
    """The phase split above rests on DeepSpeed's code (bf16, ZeRO-2 and -3, one CPU rank, real
    engine; benchmarks/zero_step_grads.py): forward and backward leave no new tensor alive, the step
    peaks at the planner's step term and frees it again. Fails if a DeepSpeed upgrade keeps them."""
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "zero_step_grads.py"
    out = subprocess.run(
        [sys.executable, str(script), "--stages", "2,3"], capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-2000:]
    rows = re.findall(r"^ZeRO-(\d): ([\d,]+) trainable; forward\+backward left alive ([\d,]+) B .*"
                      r"step peak ([\d,]+) B .* planner ([\d,]+) B .*step left alive ([\d,]+) B$", out.stdout, re.M)  # fmt: skip
    assert [r[0] for r in rows] == ["2", "3"], out.stdout
    for _, trainable, backward_left, step_peak, planned, step_left in rows:
        trainable, backward_left, step_peak, planned, step_left = (
            int(x.replace(",", "")) for x in (trainable, backward_left, step_peak, planned, step_left)
        )
        assert backward_left < 0.01 * 4 * trainable
        assert step_peak == pytest.approx(planned, rel=0.02) and planned == 6 * trainable
        assert step_left < 0.01 * 4 * trainable


def test_optimizer_step_temporaries_follow_the_tensor_torch_steps():
    w = Workload(PSI, PSI, LARGEST, GPT2_LIKE, Precision.FP32)
    assert optimizer_step_bytes(w, Layout(0, False, False, 0, 1)) == 8 * LARGEST  # per parameter
    assert optimizer_step_bytes(w, Layout(2, False, False, 0, 1, 2)) == 8 * (PSI // 2)  # flat partition
    assert optimizer_step_bytes(w, Layout(2, True, False, 0, 1)) == 0  # DeepSpeed's CPU Adam
    lora = replace(w, trainable=1000)
    assert optimizer_step_bytes(lora, Layout(0, False, False, 0, 1)) == 8 * 1000
    assert (
        optimizer_step_bytes(replace(w, precision=Precision.BF16_TRUE), Layout(0, False, False, 0, 1))
        == 4 * LARGEST
    )


def test_bytes_per_attention_score_by_implementation_and_device():
    """Measured with saved-tensor hooks on CPU (fp32): 12 bytes per score with attention dropout
    (softmax output, a float dropout mask, dropout output), 4 without; Korthikanti's 5 bytes at
    2-byte values on GPU."""
    bert_like = replace(GPT2_LIKE, attention_dropout=0.1)
    no_dropout = replace(GPT2_LIKE, attention_dropout=0.0)
    assert attention_score_bytes(bert_like, Attention.SDPA, True, Precision.FP32) == 12
    assert attention_score_bytes(bert_like, Attention.EAGER, True, Precision.FP32) == 12
    assert attention_score_bytes(no_dropout, Attention.EAGER, True, Precision.FP32) == 4
    assert attention_score_bytes(no_dropout, Attention.SDPA, True, Precision.FP32) == 0  # fused kernel
    assert attention_score_bytes(bert_like, Attention.EAGER, False, Precision.BF16) == 5
    assert attention_score_bytes(bert_like, Attention.SDPA, False, Precision.BF16) == 0
    b, s = 2, 64
    base = activation_bytes(bert_like, b, s, Precision.FP32, False, Task.NER, 7, score_bytes=0)
    kept = activation_bytes(bert_like, b, s, Precision.FP32, False, Task.NER, 7, score_bytes=12)
    assert kept - base == pytest.approx((48 + 1) * 12 * 25 * s * s * b)


def test_composite_gelu_keeps_four_more_mlp_tensors():
    gelu_new = replace(GPT2_LIKE, composite_activation=True)
    plain = activation_bytes(GPT2_LIKE, 2, 64, Precision.BF16, False, Task.CLASSIFICATION, 0)
    composite = activation_bytes(gelu_new, 2, 64, Precision.BF16, False, Task.CLASSIFICATION, 0)
    assert composite - plain == (48 + 1) * 4 * 2 * 2 * 64 * 6400


def test_bf16_true_keeps_every_state_in_bf16():
    """bf16-true: weights 2 + gradients 2 + Adam moments 2 + 2 = 8 bytes per parameter without
    DeepSpeed (torch AdamW steps the bf16 weights); under ZeRO-2 DeepSpeed's bf16 master copy and
    gradient partition replace the fp32 ones (bf16_master_weights_and_grads, bf16_optimizer_states)."""
    s0 = gpu_states(0, False, False, 1, 1, precision=Precision.BF16_TRUE).gpu
    assert (s0.params_bytes, s0.gradients_bytes, s0.optimizer_bytes) == (2 * PSI, 2 * PSI, 4 * PSI)
    n = 8
    s2 = gpu_states(2, False, False, n, 1, precision=Precision.BF16_TRUE).gpu
    mixed = gpu_states(2, False, False, n, 1, precision=Precision.BF16).gpu
    assert s2.gradients_bytes == 2 * PSI // n + 2 * PSI // n  # 16-bit grads + bf16 "master" grads
    assert s2.optimizer_bytes == (2 + 4) * PSI // n  # bf16 master + two bf16 moments
    assert mixed.optimizer_bytes == (4 + 8) * PSI // n


def test_a_whole_model_zero3_load_gets_no_share_of_the_heap_fragmentation():
    """Loading allocates every tensor once and frees nothing before its peak, so a ZeRO-3 rank that
    builds the whole model peaks at 4 bytes a parameter plus its runtime (measured: 8.12 GiB for
    8.13 at 2.02B, benchmarks/zero3_sharded_init.py); the training phases keep the fitted share."""
    lora = Workload(PSI, 1000, LARGEST, GPT2_LIKE, Precision.FP32, batch_size=1, seq_len=16,
                    zero3_max_live_parameters=LARGEST)  # fmt: skip
    layout = Layout(3, False, False, 0, 1, 2)  # 2 CPU ranks: per node = 2 × per rank
    fragmenting = replace(NO_OVERHEAD, host_fragmentation=0.2, process_baseline_bytes=100 * 2**20)
    _, whole = per_rank_estimate(replace(lora, zero3_init=False), layout, fragmenting)
    assert whole.total_bytes == 2 * (4 * PSI + 100 * 2**20)
    _, sharded = per_rank_estimate(lora, layout, fragmenting)
    _, sharded_unfragmented = per_rank_estimate(lora, layout, replace(fragmenting, host_fragmentation=0.0))
    train_phase = sharded_unfragmented.total_bytes - 2 * 100 * 2**20
    assert sharded.total_bytes - sharded_unfragmented.total_bytes == pytest.approx(train_phase * 0.2, abs=4)
    assert sharded.total_bytes < whole.total_bytes  # the sharded rank holds half the weights
