"""Memory formulas: pure functions of parameter counts, shapes and the parallel layout.

Every term cites its source (see ../shared/MEMORY-REFERENCES.md and docs/MEMORY.md). Notation:
Ψ params, Ψt trainable params, N data-parallel ranks, p bytes per value of the compute dtype,
b micro-batch, s sequence length, h hidden, a heads, I MLP width, V vocabulary, L layers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from nexa_core.enums import Precision, Task
from nexa_core.models import Architecture

GIB = 1024**3
MIB = 1024**2


@dataclass(frozen=True)
class Calibration:
    """Constants that formulas cannot give; each is measured or taken from a cited source.

    The CPU values were fitted by ``benchmarks/memory_calibration.py`` against peak RSS of real
    short training runs on this project's reference machine (docs/MEMORY.md has the table).
    """

    # CUDA context per process. Cited: 300-700 MB depending on lazy module loading (MEMORY-REFERENCES).
    # Checked, not fitted (benchmarks/gpu_published.py): a 2022 stack loading kernels eagerly measured 1343 MB.
    cuda_context_bytes: int = 500 * MIB
    # Allocator fragmentation and temporaries on GPU. Assumed (ZeRO paper section 3.2), not fitted;
    # the one published allocated/reserved pair (BERT-base fp32, gpu_published.json) has 1.14x.
    gpu_fragmentation: float = 0.10
    # Python + torch + transformers + accelerate imports, tokenizer and data, resident, per process.
    # Fitted (CPU, 2026-11-25): 525 MiB.
    process_baseline_bytes: int = 525 * MIB
    # DeepSpeed's runtime in a process that uses it (its modules, process group, JIT-built ops, and
    # the flat fp32 buffers it allocates beside the model's own tensors). Fitted: 300 MiB.
    deepspeed_host_bytes: int = 300 * MIB
    # Multiplier on the activation formula for CPU training; fitted: 1.0 (the formula as written,
    # with the s×s scores kept and the backward working set, needs no correction).
    cpu_activation_factor: float = 1.0
    # Pinned buffers and copies around offloaded states: DeepSpeed's estimators use 1.5 for CPU.
    host_offload_factor: float = 1.5
    # glibc malloc arenas, freed-but-kept load copies and caching over the live host tensors.
    # Fitted: 0.20 of the live bytes.
    host_fragmentation: float = 0.20


DEFAULT_CALIBRATION = Calibration()


@dataclass(frozen=True)
class Breakdown:
    params_bytes: int = 0
    gradients_bytes: int = 0
    optimizer_bytes: int = 0
    activations_bytes: int = 0
    overhead_bytes: int = 0

    @property
    def total_bytes(self) -> int:
        return (
            self.params_bytes
            + self.gradients_bytes
            + self.optimizer_bytes
            + self.activations_bytes
            + self.overhead_bytes
        )

    def to_dict(self) -> dict[str, int]:
        return {**asdict(self), "total_bytes": self.total_bytes}


@dataclass(frozen=True)
class Layout:
    """One ZeRO stage and offload choice on gpus_per_node × nodes (gpus_per_node 0: CPU-only)."""

    zero_stage: int
    offload_optimizer: bool
    offload_param: bool
    gpus_per_node: int
    nodes: int

    @property
    def cpu_only(self) -> bool:
        return self.gpus_per_node == 0

    @property
    def ranks(self) -> int:  # data-parallel degree N; a CPU-only plan runs one process per node
        return self.nodes * max(self.gpus_per_node, 1)

    @property
    def ranks_per_node(self) -> int:
        return max(self.gpus_per_node, 1)


def layouts(gpus_per_node: int, nodes: int) -> list[Layout]:
    """Every stage 0-3 with the offloads that stage allows: optimizer (1-3), parameters (3 only)."""
    out = []
    for stage in range(4):
        out.append(Layout(stage, False, False, gpus_per_node, nodes))
        if stage >= 1:
            out.append(Layout(stage, True, False, gpus_per_node, nodes))
        if stage == 3:
            out.append(Layout(stage, True, True, gpus_per_node, nodes))
    return out


@dataclass(frozen=True)
class ModelStates:
    """Per-rank bytes of weights, gradients and optimizer states, split by where they live."""

    gpu: Breakdown
    host: Breakdown  # offloaded part only


def model_states_bytes(
    params: int, trainable: int, largest_layer: int, precision: Precision, layout: Layout
) -> ModelStates:
    """Per-rank model-state bytes for DeepSpeed ZeRO.

    Sources: ZeRO paper (arXiv 1910.02054) sections 3.1 and 5 for the partitioning by stage;
    DeepSpeed's estimate_zero2/zero3_model_states_mem_needs for the 18 bytes per partitioned
    trainable parameter (16-bit grads 2 + fp32 grads 4 + fp32 master 4 + Adam m, v 8) and for the
    4 × largest-layer gather buffer of ZeRO-3.
    """
    p = precision.bytes_per_value
    n = layout.ranks
    stage = layout.zero_stage
    mixed = precision is not Precision.FP32
    n_opt = n if stage >= 1 else 1  # optimizer states partitioned from stage 1
    n_grad = n if stage >= 2 else 1  # gradients from stage 2
    n_param = n if stage >= 3 else 1  # parameters from stage 3

    compute_params = params * p // n_param
    gather = 4 * largest_layer if stage == 3 else 0
    compute_grads = trainable * p // n_grad
    # DeepSpeed keeps an fp32 master copy of the trainable partition (stage 1-3 clone it even for
    # fp32 models: stage_1_and_2.py single_partition_of_fp32_groups, stage3.py
    # fp32_partitioned_groups_flat), plus fp32 gradients of that partition for the optimizer step.
    # Stage 0 in fp32 steps the model's own tensors: no copy, no separate fp32 gradients.
    keeps_fp32_copy = stage >= 1 or mixed
    master = trainable * 4 // n_opt if keeps_fp32_copy else 0
    fp32_grads = trainable * 4 // n_opt if keeps_fp32_copy else 0
    adam_moments = trainable * 8 // n_opt  # Adam momentum + variance, fp32 (ZeRO paper K=12 incl. master)

    host = Breakdown()
    if layout.offload_optimizer:
        # ZeRO-Offload (arXiv 2101.06840): the fp32 master, fp32 gradients and Adam states move to
        # host; from stage 2 the 16-bit gradients stream out of the reduce buckets instead of staying.
        host = Breakdown(gradients_bytes=fp32_grads, optimizer_bytes=master + adam_moments)
        master = fp32_grads = adam_moments = 0
        if stage >= 2:
            compute_grads = 0
    if layout.offload_param:
        # ZeRO-Infinity parameter offload: the 16-bit partition lives on host; the GPU keeps only
        # the gathered live layer (DeepSpeed's estimator: gpu_mem = 4 * largest_layer_params).
        host = Breakdown(
            params_bytes=compute_params,
            gradients_bytes=host.gradients_bytes,
            optimizer_bytes=host.optimizer_bytes,
        )
        compute_params = 0
    gpu = Breakdown(
        params_bytes=compute_params + gather,
        gradients_bytes=compute_grads + fp32_grads,
        optimizer_bytes=master + adam_moments,
    )
    return ModelStates(gpu=gpu, host=host)


def activation_bytes(
    arch: Architecture,
    batch_size: int,
    seq_len: int,
    precision: Precision,
    gradient_checkpointing: bool,
    task: Task,
    num_labels: int,
    fused_attention: bool = True,
) -> int:
    """Activations kept for backward on one rank.

    Per layer, Korthikanti et al. 2022 (arXiv 2205.05198, section 4.1) give for 16-bit values
    sbh(34 + 5as/h): attention 11sbh + 5as²b, MLP 19sbh, layer norms 4sbh. We write the MLP as
    3sbh + 4sbI (input 2sbh, dropout mask sbh, pre- and post-activation 2sbI each), which is 19sbh
    for I = 4h, and 2sbh + 8sbI for gated (SwiGLU) MLPs that keep gate, up, act and product.
    SDPA/flash attention does not store the s×s scores, so 5as²b is dropped when fused_attention.
    fp32 compute doubles the 16-bit figure (same reference). With full activation checkpointing
    each layer keeps its 16-bit input (2sbh) and one layer is recomputed at a time. During backward
    one layer's activation gradients coexist with the stored activations (one more layer's worth).
    The head: causal LM logits and loss in fp32, about 4bsV (MEMORY-REFERENCES); a classifier's
    logits are b·s·labels or b·labels values, negligible but counted.
    """
    b, s = batch_size, seq_len
    h, a, inter = arch.hidden_size, arch.num_heads, arch.intermediate_size
    attention = 11 * s * b * h + (0 if fused_attention else 5 * a * s * s * b)
    mlp = 2 * s * b * h + 8 * s * b * inter if arch.gated_mlp else 3 * s * b * h + 4 * s * b * inter
    if arch.composite_activation:
        # gelu_new written as tensor ops (transformers' NewGELUActivation) saves tanh, 1 + tanh, 0.5x and
        # x³ besides its input: 4 more sbI tensors (measured on GPT-2: 3.7 × sbI × 4 bytes per layer).
        mlp += 4 * 2 * s * b * inter
    layer_norms = 4 * s * b * h
    per_layer = attention + mlp + layer_norms
    scale = precision.bytes_per_value / 2  # the formula is for 2-byte values
    # Backward of a layer also holds the gradients of that layer's activations: one more layer's
    # worth on top of what is stored (recomputed first, under checkpointing).
    backward_working_set = per_layer * scale
    if gradient_checkpointing:
        layers = int(arch.num_layers * 2 * s * b * h * scale + per_layer * scale + backward_working_set)
    else:
        layers = int(arch.num_layers * per_layer * scale + backward_working_set)
    embeddings = int(2 * s * b * h * scale)  # embedding output kept for the first layer norm
    if task is Task.CAUSAL_LM:
        # fp32 logits (returned to the caller, so alive) and the log-softmax output cross-entropy
        # keeps for backward, then the gradients of both during backward: 4 × 4bsV. MEMORY-REFERENCES'
        # 4bsV counts the logits alone; measured on GPT-2 (V = 50257): 3.5 × 4bsV at the peak.
        head = 4 * 4 * b * s * arch.vocab_size
    elif task is Task.NER:
        head = 4 * b * s * num_labels
    elif task is Task.CLASSIFICATION:
        head = 4 * b * num_labels
    else:  # embedding: pooled vectors of both sides of each pair
        head = 2 * 4 * b * h
    if task is Task.EMBEDDING:
        # In-batch contrastive training encodes anchor and positive in one step: both passes' activations live until backward.
        return 2 * (layers + embeddings) + head
    return layers + embeddings + head


def deepspeed_buffer_bytes(arch: Architecture | None, precision: Precision, layout: Layout) -> int:
    """Communication buffers with the "auto" sizes Accelerate fills in from hidden_size
    (accelerate/accelerator.py _prepare_deepspeed): reduce bucket h², ZeRO-3 prefetch 0.9h².
    overlap_comm (on in deployment/deepspeed_config.json) double-buffers the reduce bucket
    (HF DeepSpeed integration docs). Without a known hidden size, DeepSpeed's defaults (5e8
    reduce, 5e7 prefetch elements) apply."""
    if layout.zero_stage == 0 or layout.ranks == 1 and layout.cpu_only:
        return 0
    p = precision.bytes_per_value
    h2 = arch.hidden_size**2 if arch else None
    reduce_elems = h2 if h2 is not None else int(5e8)
    buffers = 2 * reduce_elems * p
    if layout.zero_stage == 3:
        buffers += (int(0.9 * h2) if h2 is not None else int(5e7)) * p
    return buffers


def per_rank_estimate(
    params: int,
    trainable: int,
    largest_layer: int,
    arch: Architecture | None,
    precision: Precision,
    layout: Layout,
    batch_size: int,
    seq_len: int,
    gradient_checkpointing: bool,
    task: Task,
    num_labels: int,
    calibration: Calibration = DEFAULT_CALIBRATION,
) -> tuple[Breakdown, Breakdown]:
    """(per-GPU bytes, host bytes for the whole node). On a CPU-only layout every term is host."""
    # Offloading to the CPU from the CPU moves nothing: a CPU-only plan counts the states in place.
    states_layout = (
        replace(layout, offload_optimizer=False, offload_param=False) if layout.cpu_only else layout
    )
    states = model_states_bytes(params, trainable, largest_layer, precision, states_layout)
    acts = 0
    if arch is not None:
        # On GPU, SDPA dispatches to flash / memory-efficient kernels that keep no s×s scores; the
        # CPU training path keeps them (measured: peak RSS grows with s² at long sequences).
        fused = not layout.cpu_only
        acts = activation_bytes(
            arch, batch_size, seq_len, precision, gradient_checkpointing, task, num_labels, fused
        )
    buffers = deepspeed_buffer_bytes(arch, precision, layout)
    k = layout.ranks_per_node
    c = calibration

    runtime = c.process_baseline_bytes + (c.deepspeed_host_bytes if layout.zero_stage >= 1 else 0)
    if layout.cpu_only:
        on_host = _add(states.gpu, states.host)
        acts = int(acts * c.cpu_activation_factor)
        live = on_host.total_bytes + acts + buffers
        overhead = runtime + buffers + int(c.host_fragmentation * live)
        host = Breakdown(
            params_bytes=on_host.params_bytes * k,
            gradients_bytes=on_host.gradients_bytes * k,
            optimizer_bytes=on_host.optimizer_bytes * k,
            activations_bytes=acts * k,
            overhead_bytes=overhead * k,
        )
        return Breakdown(), host

    gpu_live = states.gpu.total_bytes + acts + buffers
    gpu_overhead = c.cuda_context_bytes + buffers + int(c.gpu_fragmentation * gpu_live)
    gpu = Breakdown(
        params_bytes=states.gpu.params_bytes,
        gradients_bytes=states.gpu.gradients_bytes,
        optimizer_bytes=states.gpu.optimizer_bytes,
        activations_bytes=acts,
        overhead_bytes=gpu_overhead,
    )
    # Host per node: each rank's process baseline, plus the larger of the transient full-model
    # load (every rank materialises the weights in fp32 before moving them to its GPU) and the
    # offloaded states with their pinned buffers. Same max() as DeepSpeed's estimators:
    # cpu_mem = params * max(4 * gpus_per_node, 16) * additional_buffer_factor.
    offloaded = Breakdown(
        params_bytes=int(states.host.params_bytes * c.host_offload_factor),
        gradients_bytes=int(states.host.gradients_bytes * c.host_offload_factor),
        optimizer_bytes=int(states.host.optimizer_bytes * c.host_offload_factor),
    )
    # NEXA loads weights before DeepSpeed partitions them (zero3_init_flag off), so every stage pays it.
    load_transient = params * 4
    extra_load = max(0, load_transient - offloaded.total_bytes)
    host = Breakdown(
        params_bytes=offloaded.params_bytes * k,
        gradients_bytes=offloaded.gradients_bytes * k,
        optimizer_bytes=offloaded.optimizer_bytes * k,
        overhead_bytes=(runtime + extra_load) * k,
    )
    return gpu, host


def _add(x: Breakdown, y: Breakdown) -> Breakdown:
    return Breakdown(
        x.params_bytes + y.params_bytes,
        x.gradients_bytes + y.gradients_bytes,
        x.optimizer_bytes + y.optimizer_bytes,
        x.activations_bytes + y.activations_bytes,
        x.overhead_bytes + y.overhead_bytes,
    )


def get_optimal_zero_stage(model_size_gb: float) -> int:
    """The seed guide's size-only rule, kept for compatibility; NEXA recommends by fit instead
    (planner.recommend), since the right stage depends on batch, sequence and hardware too."""
    if model_size_gb < 0.5:
        return 0
    if model_size_gb < 2:
        return 1
    if model_size_gb < 8:
        return 2
    return 3
