import json

import pytest
import torch
import transformers

from nexa_core import models
from nexa_core.enums import Task
from nexa_core.errors import ConfigError

CATALOGUE = sorted(models.catalogue())
AUTO = {
    Task.NER: transformers.AutoModelForTokenClassification,
    Task.CLASSIFICATION: transformers.AutoModelForSequenceClassification,
    Task.EMBEDDING: transformers.AutoModel,
    Task.CAUSAL_LM: transformers.AutoModelForCausalLM,
}


def _reference_count(config_dict, task, num_labels):
    """Built independently of nexa_core: transformers' own classes on the meta device."""
    cfg = dict(config_dict)
    config = transformers.AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    if task in (Task.NER, Task.CLASSIFICATION):
        config.num_labels = num_labels
    if task is Task.CAUSAL_LM and config.model_type in ("bert", "roberta"):
        config.is_decoder = True
    with torch.device("meta"):
        model = AUTO[task].from_config(config)
    return sum(p.numel() for p in model.parameters())


def test_catalogue_has_the_required_entries():
    required = {
        "bert-base-uncased", "bert-large-uncased", "roberta-large", "gpt2", "gpt2-xl",
        "sentence-transformers/all-roberta-large-v1", "sentence-transformers/all-MiniLM-L6-v2",
        "distilbert-base-uncased", "gpt2-medium", "gpt2-large",
    }  # fmt: skip
    assert required <= set(CATALOGUE)
    decoders = [
        e for e in models.catalogue().values() if e.config["model_type"] in ("llama", "mistral", "qwen2")
    ]
    assert len(decoders) >= 4
    assert all(e.source for e in models.catalogue().values())


@pytest.mark.parametrize("model_id", CATALOGUE)
def test_catalogue_matches_published_base_count(model_id):
    raw = json.loads((models.CATALOGUE_DIR / (model_id.replace("/", "__") + ".json")).read_text())
    task = Task.CAUSAL_LM if raw["published_params_of"] == "AutoModelForCausalLM" else Task.EMBEDDING
    assert _reference_count(raw["config"], task, 2) == raw["published_params"]


@pytest.mark.parametrize("task", list(Task))
@pytest.mark.parametrize("model_id", CATALOGUE)
def test_exact_count_equals_transformers(model_id, task):
    entry = models.catalogue()[model_id]
    try:
        expected = _reference_count(entry.config, task, 7)
    except ValueError:  # transformers has no such head for this architecture (e.g. DistilBERT causal LM)
        with pytest.raises(ConfigError, match="task"):
            models.size_model(model_id, task, 7, None)
        return
    size = models.size_model(model_id, task, 7, None)
    assert size.params == expected
    assert size.trainable_params == expected
    assert 0 < size.largest_layer_params < size.params


def test_minilm_shape_and_largest_layer_is_the_word_embedding():
    size = models.size_model(models.DEFAULT_MODEL, Task.EMBEDDING, 7, None)
    assert size.params == 22_713_216
    assert size.largest_layer_params == 30522 * 384
    arch = size.architecture
    assert (arch.hidden_size, arch.num_layers, arch.num_heads, arch.intermediate_size) == (384, 6, 12, 1536)


def test_lora_trainable_counts_only_adapters():
    # peft's default LoRA targets for BERT are query and value: 2 adapters × (r·h + h·r) per layer.
    size = models.size_model(models.DEFAULT_MODEL, Task.EMBEDDING, 7, 8)
    assert size.trainable_params == 6 * 2 * (8 * 384 + 384 * 8)
    assert size.params == 22_713_216 + size.trainable_params


def test_lora_keeps_the_task_head_trainable():
    plain = models.size_model(models.DEFAULT_MODEL, Task.NER, 7, None)
    lora = models.size_model(models.DEFAULT_MODEL, Task.NER, 7, 8)
    head = 384 * 7 + 7
    assert lora.trainable_params == 6 * 2 * (2 * 8 * 384) + head
    assert (
        lora.params == plain.params + 6 * 2 * (2 * 8 * 384) + head
    )  # peft keeps a trainable copy of the head


def test_local_folder_with_config(tmp_path):
    cfg = dict(models.catalogue()["gpt2"].config, n_layer=2, n_embd=64, n_head=2)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    resolved = models.resolve_model(str(tmp_path))
    assert resolved.kind == "local" and resolved.weights_dir is None
    size = models.size_model(str(tmp_path), Task.CAUSAL_LM, 7, None)
    assert size.params == _reference_count(cfg, Task.CAUSAL_LM, 7)


def test_local_folder_without_config_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="no config.json"):
        models.resolve_model(str(tmp_path))


def test_offline_hub_id_says_so_and_suggests_catalogue(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError) as err:
        models.resolve_model("someone/not-in-the-catalogue")
    text = str(err.value)
    assert "model:" in text and "offline" in text and "catalogue" in text and "local folder" in text


@pytest.mark.parametrize("bad", ["--output=/etc", "", "a/b/c", "has space", "x" * 300])
def test_model_names_that_could_inject_are_rejected(bad):
    assert models.validate_model_name(bad)


def test_packaged_minilm_has_weights():
    resolved = models.resolve_model(models.DEFAULT_MODEL)
    assert resolved.weights_dir is not None and (resolved.weights_dir / "model.safetensors").exists()


RACE = """
import threading
from nexa_core.planner import PlanConfig, make_plan
from nexa_core.models import load_tokenizer
from nexa_core.datasets import make_collator
errors = []
def plan(i):
    try:
        if i % 2:  # a Launch page's data profile beside another session's plan
            make_collator("ner", load_tokenizer("sentence-transformers/all-MiniLM-L6-v2"))
        else:
            make_plan(PlanConfig(model="sentence-transformers/all-MiniLM-L6-v2", gpus=0))
    except Exception as exc:
        errors.append(repr(exc))
threads = [threading.Thread(target=plan, args=(i,)) for i in range(8)]
[t.start() for t in threads]
[t.join() for t in threads]
print(errors)
"""


def test_first_plans_in_concurrent_sessions_do_not_race_on_transformers_lazy_imports():
    """A fresh server with two sessions (or a rerun beside the run it interrupts) planning at once
    used to fail with "cannot import name 'AutoConfig'" (seen 4 times in 4 in a browser), and a
    Launch page's tokenizer with "cannot import name 'AutoTokenizer'" (the browser test, in CI)."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", RACE], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
