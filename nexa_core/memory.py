"""Memory formulas: pure functions of parameter counts, shapes and the parallel layout.

Every term cites its source as [R1]..[R20] (docs/REFERENCES.md gives the public titles and URLs;
docs/MEMORY.md the measurements). Notation: Ψ params, Ψt trainable params, N data-parallel ranks, p bytes per value
of the compute dtype, b micro-batch, s sequence length, h hidden, a heads, k key/value heads, d head
width, I MLP width, V vocabulary, L layers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from nexa_core.enums import Attention, Precision, Task, Weights
from nexa_core.models import Architecture

GIB = 1024**3
MIB = 1024**2


@dataclass(frozen=True)
class Calibration:
    """Constants that formulas cannot give, each labelled measured, fitted, cited or assumed.

    The CPU values come from ``benchmarks/memory_calibration.py``: two measured on a tiny model, two
    fitted against the peak RSS of real short training runs on this project's reference machine
    (docs/MEMORY.md has the table, with the error cross-validated by model).
    """

    # CUDA context per process. Assumed: a few hundred MB with CUDA's lazy module loading [R10].
    # Checked, not fitted (benchmarks/gpu_published.py): a 2022 stack loading kernels eagerly measured 1343 MB.
    cuda_context_bytes: int = 500 * MIB
    # Allocator fragmentation and temporaries on GPU. Assumed (ZeRO paper section 3.2), not fitted;
    # the one published allocated/reserved pair (BERT-base fp32, gpu_published.json) has 1.14x.
    gpu_fragmentation: float = 0.10
    # Python + torch + transformers + accelerate imports, tokenizer, data and the run's own bookkeeping,
    # resident, per process. Measured: a tiny model's run less the planner's terms for that model
    # (benchmarks/memory_calibration.py, "tiny process baseline"; CPU, 2026-12-03).
    process_baseline_bytes: int = 536 * MIB
    # DeepSpeed's runtime in a process that uses it (its modules, the engine, the process group).
    # Measured the same way with ZeRO-1 ("tiny deepspeed runtime"); its flat fp32 copies are model
    # states, counted by model_states_bytes.
    deepspeed_host_bytes: int = 67 * MIB
    # Multiplier on the activation formula for CPU training. Fitted on the calibration runs (leave-one-
    # model-out cross-validated error in docs/MEMORY.md).
    cpu_activation_factor: float = 1.05
    # Pinned buffers and copies around offloaded states. Cited: DeepSpeed's estimators use 1.5 for CPU [R5].
    host_offload_factor: float = 1.5
    # glibc keeps freed blocks below its (dynamic) mmap threshold in the heap [R15], so a CPU rank's RSS
    # stays above its live tensors. Fitted: a share of what the peak phase holds live.
    host_fragmentation: float = 0.22


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
    """One ZeRO stage and offload choice on gpus_per_node × nodes (gpus_per_node 0: CPU-only, with
    cpu_ranks_per_node processes per node)."""

    zero_stage: int
    offload_optimizer: bool
    offload_param: bool
    gpus_per_node: int
    nodes: int
    cpu_ranks_per_node: int = 1

    @property
    def cpu_only(self) -> bool:
        return self.gpus_per_node == 0

    @property
    def ranks(self) -> int:  # data-parallel degree N
        return self.nodes * self.ranks_per_node

    @property
    def ranks_per_node(self) -> int:
        return self.gpus_per_node or self.cpu_ranks_per_node


def layouts(gpus_per_node: int, nodes: int, cpu_ranks_per_node: int = 1) -> list[Layout]:
    """Every stage 0-3 with the offloads that stage allows: optimizer (1-3), parameters (3 only)."""
    out = []
    for stage in range(4):
        for off_opt, off_param in ((False, False), (True, False), (True, True)):
            if (off_opt and stage == 0) or (off_param and stage != 3):
                continue
            out.append(Layout(stage, off_opt, off_param, gpus_per_node, nodes, cpu_ranks_per_node))
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

    Sources: ZeRO paper [R1] sections 3.1 and 5 for the partitioning by stage;
    DeepSpeed's estimate_zero2/zero3_model_states_mem_needs [R5] for the 18 bytes per partitioned
    trainable parameter (16-bit grads 2 + fp32 grads 4 + fp32 master 4 + Adam m, v 8). The
    parameters ZeRO-3 gathers during a step are not model states: zero3_gathered_bytes. On a GPU
    the fp32 gradients exist only inside the optimizer step: gpu_rank_peak.
    """
    p = precision.bytes_per_value
    n = layout.ranks
    stage = layout.zero_stage
    mixed = precision in (Precision.FP16, Precision.BF16)
    m = precision.master_bytes_per_value  # 4, or 2 in bf16-true
    n_opt = n if stage >= 1 else 1  # optimizer states partitioned from stage 1
    n_grad = n if stage >= 2 else 1  # gradients from stage 2
    n_param = n if stage >= 3 else 1  # parameters from stage 3

    compute_params = params * p // n_param
    compute_grads = trainable * p // n_grad
    # DeepSpeed keeps an fp32 master copy of the trainable partition (stage 1-3 clone it even for
    # fp32 models: stage_1_and_2.py single_partition_of_fp32_groups, stage3.py
    # fp32_partitioned_groups_flat), plus fp32 gradients of that partition for the optimizer step.
    # Stage 0 in fp32 (and bf16-true without DeepSpeed) steps the model's own tensors: no copy, no
    # separate gradients. bf16-true under ZeRO 1-3 is DeepSpeed's bf16_master_weights_and_grads +
    # bf16_optimizer_states: the same copies, in bf16 (deepspeed/runtime/config.py).
    keeps_fp32_copy = stage >= 1 or mixed
    master = trainable * m // n_opt if keeps_fp32_copy else 0
    fp32_grads = trainable * m // n_opt if keeps_fp32_copy else 0
    adam_moments = trainable * 2 * m // n_opt  # Adam momentum + variance (ZeRO paper K=12 incl. master)

    host = Breakdown()
    if layout.offload_optimizer:
        # ZeRO-Offload [R2]: the fp32 master, fp32 gradients and Adam states move to
        # host; from stage 2 the 16-bit gradients stream out of the reduce buckets instead of staying.
        host = Breakdown(gradients_bytes=fp32_grads, optimizer_bytes=master + adam_moments)
        master = fp32_grads = adam_moments = 0
        if stage >= 2:
            compute_grads = 0
    if layout.offload_param:
        # ZeRO-Infinity parameter offload [R3]: the 16-bit partition lives on host; the GPU keeps only
        # the gathered parameters (zero3_gathered_bytes).
        host = Breakdown(
            params_bytes=compute_params,
            gradients_bytes=host.gradients_bytes,
            optimizer_bytes=host.optimizer_bytes,
        )
        compute_params = 0
    gpu = Breakdown(
        params_bytes=compute_params,
        gradients_bytes=compute_grads + fp32_grads,
        optimizer_bytes=master + adam_moments,
    )
    return ModelStates(gpu=gpu, host=host)


def attention_keeps_scores(arch: Architecture, attention: Attention, cpu_only: bool) -> bool:
    """Whether backward keeps the s×s attention probabilities (Korthikanti's 5as²b term).

    Eager attention stores softmax output, dropout mask and dropout output. SDPA does not on GPU
    (flash / memory-efficient kernels, dropout included). On CPU, torch's fused SDPA kernel has no
    dropout, so with attention dropout > 0 in training it falls back to the math path, which keeps
    them (measured with saved-tensor hooks, torch 2.13 CPU: 12 bytes per score with dropout 0.1,
    none without). flash_attention_2 never stores them.
    """
    impl = resolved_attention(arch, attention)
    if impl is Attention.EAGER:
        return True
    if impl is Attention.SDPA:
        return cpu_only and arch.attention_dropout > 0
    return False


def attention_score_bytes(
    arch: Architecture, attention: Attention, cpu_only: bool, precision: Precision
) -> float:
    """Bytes backward keeps per attention score (one of the a·s²·b), 0 when none are kept.

    With dropout: Korthikanti et al.'s 5as²b for 2-byte values (softmax output 2, dropout mask 1,
    dropout output 2), i.e. 2.5p per score. On CPU the dropout mask is a float tensor: measured with
    saved-tensor hooks (torch 2.13 CPU, fp32, BERT layer, eager and SDPA's math fallback alike) 12
    bytes per score, 3p. Without dropout only the softmax output stays (measured: 4 bytes in fp32)."""
    if not attention_keeps_scores(arch, attention, cpu_only):
        return 0.0
    p = precision.bytes_per_value
    if arch.attention_dropout <= 0:
        return float(p)
    return 3.0 * p if cpu_only else 2.5 * p


def resolved_attention(arch: Architecture, attention: Attention) -> Attention:
    """auto is transformers' default: SDPA where the model class supports it, else eager."""
    if attention is Attention.AUTO:
        return Attention.SDPA if arch.supports_sdpa else Attention.EAGER
    return attention


def kv_heads_stored(arch: Architecture, attention: Attention, batch_size: int) -> int:
    """How many key/value heads backward keeps per token (grouped-query attention, GQA/MQA).

    With k < a key/value heads, transformers' eager path repeats K and V to a heads
    (``repeat_kv``) before the matmuls, so the saved tensors have a heads. SDPA takes K and V as
    they are (``enable_gqa``) only without an attention mask (``use_gqa_in_sdpa``): a micro-batch of
    one needs no padding mask; a padded batch gets one, and K/V are repeated. flash_attention_2
    takes k heads natively (transformers integrations/sdpa_attention.py, flash_attention.py [R12]).
    """
    impl = resolved_attention(arch, attention)
    if impl is Attention.FLASH or (impl is Attention.SDPA and batch_size == 1):
        return arch.num_kv_heads
    return arch.num_heads


def activation_bytes(
    arch: Architecture,
    batch_size: int,
    seq_len: int,
    precision: Precision,
    gradient_checkpointing: bool,
    task: Task,
    num_labels: int,
    keep_scores: bool = False,
    kv_heads: int | None = None,
    score_bytes: float | None = None,
) -> int:
    """Activations kept for backward on one rank.

    Per layer, Korthikanti et al. 2022 [R4] (section 4.1) give for 16-bit values
    sbh(34 + 5as/h): attention 11sbh + 5as²b, MLP 19sbh, layer norms 4sbh. The attention 11sbh is
    QKV input 2sbh, Q 2sbh, K 2sbh, V 2sbh, output-projection input 2sbh and the dropout mask sbh;
    with k key/value heads of width d (GQA) K and V are 2sb·kd each instead of 2sbh (``kv_heads``:
    what the attention implementation keeps, see ``kv_heads_stored``). We write the MLP as
    3sbh + 4sbI (input 2sbh, dropout mask sbh, pre- and post-activation 2sbI each), which is 19sbh
    for I = 4h, and 2sbh + 8sbI for gated (SwiGLU) MLPs that keep gate, up, act and product.
    ``keep_scores`` adds 5as²b (see ``attention_keeps_scores``); ``score_bytes`` (bytes per score,
    ``attention_score_bytes``) replaces that figure when given. fp32 compute doubles the 16-bit
    figure (same reference). With full activation checkpointing each layer keeps its 16-bit input
    (2sbh) and one layer is recomputed at a time. During backward one layer's activation gradients
    coexist with the stored activations (one more layer's worth). The head: causal LM logits and
    loss in fp32, about 4bsV for the logits alone; a classifier's logits are b·s·labels or b·labels
    values, negligible but counted. The causal LM head keeps 3 × 4bsV with fp32 and 16-bit logits
    alike (below).
    """
    b, s = batch_size, seq_len
    h, a, inter = arch.hidden_size, arch.num_heads, arch.intermediate_size
    q_width = a * arch.head_width  # = h for the usual configs
    kv_width = (arch.num_heads if kv_heads is None else kv_heads) * arch.head_width
    attention = s * b * (2 * h + 2 * q_width + 2 * 2 * kv_width + 2 * q_width + h)
    scale = precision.bytes_per_value / 2  # the formula is for 2-byte values
    if score_bytes is None:
        score_bytes = 5 * scale if keep_scores else 0.0
    attention += score_bytes / scale * a * s * s * b  # (in the formula's 2-byte units)
    mlp = 2 * s * b * h + 8 * s * b * inter if arch.gated_mlp else 3 * s * b * h + 4 * s * b * inter
    if arch.composite_activation:
        # gelu_new written as tensor ops (transformers' NewGELUActivation) saves tanh, 1 + tanh, 0.5x and
        # x³ besides its input: 4 more sbI tensors (measured on GPT-2: 3.7 × sbI × 4 bytes per layer).
        mlp += 4 * 2 * s * b * inter
    layer_norms = 4 * s * b * h
    per_layer = attention + mlp + layer_norms
    # Backward of a layer also holds the gradients of that layer's activations: one more layer's
    # worth on top of what is stored (recomputed first, under checkpointing).
    backward_working_set = per_layer * scale
    if gradient_checkpointing:
        layers = int(arch.num_layers * 2 * s * b * h * scale + per_layer * scale + backward_working_set)
    else:
        layers = int(arch.num_layers * per_layer * scale + backward_working_set)
    embeddings = int(2 * s * b * h * scale)  # embedding output kept for the first layer norm
    if task is Task.CAUSAL_LM:
        # fp32 logits for the loss (transformers' ForCausalLMLoss upcasts them [R19]), the log-softmax output
        # cross-entropy keeps for backward, and in backward the gradient arriving at the log-softmax and
        # the one it returns. The trainer keeps only the loss (task_metrics.loss), so the logits and their
        # fp32 copy are freed once the log-softmax exists (its backward saves its output, not its input):
        # 3 × 4bsV. Measured: peak live tensor bytes of the LM head, loss and backward (torch 2.13 CPU,
        # b4 s128, V 32000) 3.0 × 4bsV besides the weight gradient with fp32 logits and 3.0 with bf16
        # ones; the 4 × 4bsV once assumed for 16-bit logits was over-estimating every bf16 GPU run
        # (docs/BENCHMARKS.md, "Runs on a GPU"). The usual 4bsV counts the logits alone.
        head = 3 * 4 * b * s * arch.vocab_size
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
    (accelerate/accelerator.py _prepare_deepspeed; [R7]): reduce bucket h², ZeRO-3 prefetch 0.9h².
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


# DeepSpeed's default (runtime/zero/config.py) and deployment/deepspeed_config.json's value: ZeRO-3
# keeps up to this many gathered parameters resident before releasing any.
DEFAULT_MAX_LIVE_PARAMETERS = 10**9


@dataclass(frozen=True)
class Workload:
    """Everything besides the layout that sets one rank's memory: the model's counts and shapes,
    what one step computes, and how the weights are loaded."""

    params: int
    trainable: int
    largest_layer: int
    arch: Architecture | None
    precision: Precision
    batch_size: int = 1
    seq_len: int = 1
    gradient_checkpointing: bool = False
    task: Task = Task.NER
    num_labels: int = 7
    attention: Attention = Attention.AUTO
    weights: Weights = Weights.PRETRAINED
    zero3_init: bool = True  # ZeRO-3 builds the model under deepspeed.zero.Init (sharded at creation)
    zero3_max_live_parameters: int = DEFAULT_MAX_LIVE_PARAMETERS

    @property
    def stored_bytes_per_param(self) -> int:
        return self.arch.stored_bytes_per_param if self.arch else 4

    def load_bytes_per_param(self, layout: Layout, deepspeed: bool = True) -> int:
        """The dtype the weights are materialised in: the compute dtype when DeepSpeed runs in 16 bits
        (its engine casts the module to it anyway) and always in bf16-true, else fp32 (the fp32
        weights that autocast or plain fp32 training step on). model_loading.load_dtype makes the same
        choice."""
        if self.precision is Precision.BF16_TRUE:
            return 2
        return self.precision.bytes_per_value if deepspeed and not layout.cpu_only else 4


def sharded_load(workload: Workload, layout: Layout) -> bool:
    """ZeRO-3 with zero.Init: every rank creates only its 1/N of each parameter (load path used)."""
    return layout.zero_stage == 3 and workload.zero3_init


def zero3_gathered_bytes(workload: Workload, layout: Layout) -> int:
    """Parameters ZeRO-3 holds gathered (full size) on a rank during forward and backward.

    DeepSpeed releases a gathered parameter only when more than stage3_max_live_parameters are
    resident, or when its next use is further than stage3_max_reuse_distance away; both default to
    1e9 (DeepSpeed's ZeRO config docs [R6]), so a model below 1e9 parameters ends up wholly gathered on
    every rank during a step, and a larger one holds about 1e9 (measured on CPU, 2 ranks, 331M
    Llama-style: the step's peak rose by the full model's size at 1e9, by the embedding's at 1e7).
    DeepSpeed's estimator counts 4 × the largest layer (the live layer's buffer); the larger of the
    two applies."""
    if layout.zero_stage != 3:
        return 0
    p = workload.precision.bytes_per_value if not layout.cpu_only else 4
    live = min(workload.params, max(workload.zero3_max_live_parameters, workload.largest_layer))
    return max(live * p, 4 * workload.largest_layer)


def per_rank_estimate(
    workload: Workload,
    layout: Layout,
    calibration: Calibration = DEFAULT_CALIBRATION,
) -> tuple[Breakdown, Breakdown]:
    """(per-GPU bytes, host bytes for the whole node). On a CPU-only layout every term is host."""
    w = workload
    # Offloading to the CPU from the CPU moves nothing: a CPU-only plan counts the states in place.
    states_layout = (
        replace(layout, offload_optimizer=False, offload_param=False) if layout.cpu_only else layout
    )
    states = model_states_bytes(w.params, w.trainable, w.largest_layer, w.precision, states_layout)
    gathered = zero3_gathered_bytes(w, layout)
    acts = 0
    if w.arch is not None:
        scores = attention_score_bytes(w.arch, w.attention, layout.cpu_only, w.precision)
        kv = kv_heads_stored(w.arch, w.attention, w.batch_size)
        acts = activation_bytes(
            w.arch, w.batch_size, w.seq_len, w.precision, w.gradient_checkpointing, w.task,
            w.num_labels, kv_heads=kv, score_bytes=scores,
        )  # fmt: skip
    buffers = deepspeed_buffer_bytes(w.arch, w.precision, layout)
    k = layout.ranks_per_node
    c = calibration

    runtime = c.process_baseline_bytes + (c.deepspeed_host_bytes if layout.zero_stage >= 1 else 0)
    if layout.cpu_only:
        host = _scale(cpu_rank_peak(w, layout, states, gathered, acts, buffers, runtime, c), k)
        return Breakdown(), host

    gpu = gpu_rank_peak(states.gpu, gathered, acts, buffers, zero_step_gradients(w, layout), c)
    offloaded = Breakdown(
        params_bytes=int(states.host.params_bytes * c.host_offload_factor) * k,
        gradients_bytes=int(states.host.gradients_bytes * c.host_offload_factor) * k,
        optimizer_bytes=int(states.host.optimizer_bytes * c.host_offload_factor) * k,
    )
    # Loading happens before the optimizer states exist; offloaded parameter partitions exist from
    # creation on (zero.Init puts them on the host) and coexist with the load. The larger phase counts.
    load_phase = Breakdown(params_bytes=host_load_bytes(w, layout) + offloaded.params_bytes)
    phase = load_phase if load_phase.total_bytes > offloaded.total_bytes else offloaded
    return gpu, _add(phase, Breakdown(overhead_bytes=runtime * k))


# DeepSpeed's default sub_group_size (runtime/zero/config.py), which deployment/deepspeed_config.json
# keeps: ZeRO-3 steps its partition in sub-groups of at most this many elements, one at a time.
ZERO3_SUB_GROUP_ELEMENTS = 10**9


def zero_step_gradients(workload: Workload, layout: Layout) -> tuple[int, int]:
    """(bytes model_states_bytes counts as the partition's master-dtype gradients, bytes they take
    at their peak) for a GPU rank under ZeRO 1-3 with the optimizer on the GPU; (0, 0) elsewhere.

    DeepSpeed keeps no such gradients between steps: step() flattens the rank's 16-bit gradients of a
    parameter group (ZeRO-3: of a sub-group of at most sub_group_size elements), casts the flat copy
    to the master dtype, steps and frees both (deepspeed/runtime/zero/stage_1_and_2.py step();
    stage3.py _prepare_fp32_grad_for_sub_group and _release_sub_group [R20]). At the cast the flat
    copy (p bytes an element) and the cast (m) are alive together; where the dtypes match the cast
    is the copy. Measured on CPU, live tensor bytes (benchmarks/zero_step_grads.py). The whole
    partition is taken as one group: the parameters without weight decay are a second, small one."""
    if layout.cpu_only or layout.zero_stage == 0 or layout.offload_optimizer:
        return 0, 0
    p, m = workload.precision.bytes_per_value, workload.precision.master_bytes_per_value
    elements = workload.trainable // layout.ranks
    if layout.zero_stage == 3:
        elements = min(elements, ZERO3_SUB_GROUP_ELEMENTS)
    return workload.trainable * m // layout.ranks, elements * (p + m if p != m else m)


def gpu_rank_peak(
    states: Breakdown,
    gathered: int,
    acts: int,
    buffers: int,
    step_gradients: tuple[int, int],
    c: Calibration,
) -> Breakdown:
    """One GPU rank's peak: the larger of forward/backward and the optimizer step.

    Forward/backward: the states, the parameters ZeRO-3 gathers, the activations and the buckets.
    The optimizer step: the states, the buckets and the gradients DeepSpeed creates only inside it
    (zero_step_gradients); the activations are freed by then, and (assumed, not measured) so are
    the parameters ZeRO-3 gathered. Overhead: the CUDA context (assumed)
    and a fragmentation share (assumed) of the live bytes, plus the buckets, which are live tensors
    that the overhead term shows (gpu_metrics takes them back into the allocated figure)."""
    counted, at_step = step_gradients
    held = states.gradients_bytes - counted
    backward = Breakdown(states.params_bytes + gathered, held, states.optimizer_bytes, acts)
    step = Breakdown(states.params_bytes, held + at_step, states.optimizer_bytes, 0)
    peak = max(backward, step, key=lambda b: b.total_bytes)
    live = peak.total_bytes + buffers
    return _add(
        peak, Breakdown(overhead_bytes=c.cuda_context_bytes + buffers + int(c.gpu_fragmentation * live))
    )


def cpu_rank_peak(
    w: Workload,
    layout: Layout,
    states: ModelStates,
    gathered: int,
    acts: int,
    buffers: int,
    runtime: int,
    c: Calibration,
) -> Breakdown:
    """One CPU rank's peak: the larger of three phases (each measured by ru_maxrss after it, on CPU).

    Forward/backward: every stored activation. At stage 0 torch's zero_grad() has set the gradients
    to None, so backward creates them as it frees the activations: both together never exceed the
    larger of the two. DeepSpeed keeps its gradient buffers (stages 1-3). Optimizer step: all
    gradients and states, no activations, plus the step's temporaries (optimizer_step_bytes).
    Loading: a ZeRO-3 rank not sharded at creation holds the whole fp32 model until DeepSpeed
    partitions it (stages 0-2 keep the model whole anyway: counted in the other phases).
    Host fragmentation (fitted) is a share of what a training phase holds live. Loading gets none:
    it allocates each tensor once and frees nothing before its peak, so no freed blocks stay in the
    heap (measured, benchmarks/zero3_sharded_init.py: a whole-model rank peaks at the process
    baseline + 4 bytes per parameter, 8.12 GiB for 8.13 at 2.02B with MALLOC_MMAP_THRESHOLD_ set,
    and 2-9 % above it at 1.21B with glibc's default)."""
    on_host = _add(states.gpu, states.host)
    params = on_host.params_bytes + gathered
    grads, opt = on_host.gradients_bytes, on_host.optimizer_bytes
    acts = int(acts * c.cpu_activation_factor)
    grads_with_acts = max(0, grads - acts) if layout.zero_stage == 0 else grads
    temps = optimizer_step_bytes(w, layout)
    phases = [
        Breakdown(params, grads_with_acts, opt, acts, buffers),  # forward/backward
        Breakdown(params, grads, opt, 0, buffers + temps),  # optimizer step
    ]
    train = max(phases, key=lambda b: b.total_bytes)
    peak = _add(train, Breakdown(overhead_bytes=int(c.host_fragmentation * train.total_bytes)))
    if layout.zero_stage == 3 and not sharded_load(w, layout):
        load = Breakdown(params_bytes=w.params * 4)  # loading: no fragmentation share (docstring)
        peak = max(peak, load, key=lambda b: b.total_bytes)
    return _add(peak, Breakdown(overhead_bytes=runtime))


def optimizer_step_bytes(workload: Workload, layout: Layout) -> int:
    """Temporaries of torch's Adam/AdamW step on the CPU, where it steps one tensor at a time (no
    foreach): ``denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)`` holds two tensors the
    size and dtype of the one being stepped (torch/optim/adam.py, _single_tensor_adam [R17]): fp32, or bf16
    in bf16-true. Stage 0 steps each parameter (the largest counts); ZeRO 1-3 hand torch one flat
    partition per rank. With optimizer offload DeepSpeed's CPU Adam (a C++ loop) steps in place."""
    if layout.zero_stage >= 1 and layout.offload_optimizer:
        return 0
    w = workload
    stepped = min(w.largest_layer, w.trainable) if layout.zero_stage == 0 else w.trainable // layout.ranks
    return 2 * w.precision.master_bytes_per_value * stepped


def host_load_bytes(workload: Workload, layout: Layout) -> int:
    """Host bytes per node that loading the weights holds before training starts (GPU layouts).

    Sharded (ZeRO-3 with zero.Init): no rank creates a full parameter; from a checkpoint, transformers
    reads the whole state dict on global rank 0 only (the others use the meta device) and copies it
    into the partitions module by module ([R12] modeling_utils: map_location "cpu" on rank 0, "meta"
    elsewhere), so the first node holds one copy in the stored dtype. Not sharded (stages 0-2, or
    ZeRO-3 with zero.Init off): every rank of the node materialises the whole model in the load
    dtype (from_pretrained builds it on the meta device, then fills it: one copy, no second fp32 one)
    before moving it to its GPU.
    """
    w = workload
    if sharded_load(w, layout):
        return w.params * w.stored_bytes_per_param if w.weights is Weights.PRETRAINED else 0
    return layout.ranks_per_node * w.params * w.load_bytes_per_param(layout)


def load_path_text(workload: Workload, layout: Layout) -> str:
    """One line saying how the weights reach the ranks under this layout (shown with the plan)."""
    if sharded_load(workload, layout):
        where = (
            "global rank 0 reads the checkpoint once"
            if workload.weights is Weights.PRETRAINED
            else "random initialisation, module by module"
        )
        return f"sharded at creation (DeepSpeed zero.Init): each rank holds 1/N of each parameter; {where}"
    dtype = {2: "16-bit", 4: "fp32"}[workload.load_bytes_per_param(layout)]
    return f"one full {dtype} copy per rank (meta device, then weights), moved to its device before training"


def _scale(x: Breakdown, k: int) -> Breakdown:
    return Breakdown(*(k * v for v in (x.params_bytes, x.gradients_bytes, x.optimizer_bytes,
                                       x.activations_bytes, x.overhead_bytes)))  # fmt: skip


def _add(x: Breakdown, y: Breakdown) -> Breakdown:
    return Breakdown(
        x.params_bytes + y.params_bytes,
        x.gradients_bytes + y.gradients_bytes,
        x.optimizer_bytes + y.optimizer_bytes,
        x.activations_bytes + y.activations_bytes,
        x.overhead_bytes + y.overhead_bytes,
    )
