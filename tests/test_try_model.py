"""nexa_core/try_model and `nexa try`: a run's checkpoint exported once and tried on text, and exported
folders of every task tried from safetensors only. Tiny random models: the shapes, not the skill,
are under test here (tests/e2e tries the tour's trained NER model in the browser)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nexa_core import try_model
from nexa_core.cli import main
from nexa_core.errors import ConfigError
from nexa_core.models import _packaged_minilm_dir
from tests.run_helpers import tiny_bert

SENTENCE = "Crew replaced the recloser on Feeder 1104 under WO-483920 ."


@pytest.fixture(scope="module")
def ner_run(tmp_path_factory):
    """A finished two-step NER run of a random one-layer BERT, in a private NEXA_HOME."""
    home = tmp_path_factory.mktemp("try_home")
    model = tiny_bert(tmp_path_factory.mktemp("tiny") / "bert")
    done = subprocess.run(
        [sys.executable, "-m", "nexa_core", "train", "--model", str(model), "--random-init", "--task", "ner",
         "--max-steps", "2", "--batch-size", "4", "--seq-len", "32", "--deepspeed", "off", "--no-eval", "--json"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "NEXA_HOME": str(home)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return home, json.loads(done.stdout.strip().splitlines()[-1])["run_id"]


def test_a_run_is_exported_once_and_tags_a_sentence(ner_run, monkeypatch):
    home, run_id = ner_run
    monkeypatch.setenv("NEXA_HOME", str(home))
    folder = try_model.run_folder(run_id)
    assert folder == home / "runs" / run_id / "try-model" / "step-0000002"
    assert list(folder.glob("*.safetensors")) and not list(folder.glob("*.bin"))
    written = (folder / "config.json").stat().st_mtime_ns
    assert try_model.run_folder(run_id) == folder and (folder / "config.json").stat().st_mtime_ns == written
    assert [p.name for p in folder.parent.iterdir()] == ["step-0000002"]  # no partial export left
    model = try_model.load(folder)
    result = try_model.predict(model, SENTENCE)
    labels = json.loads((home / "runs" / run_id / "labels.json").read_text())
    assert result["task"] == "ner" and "".join(piece for piece, _ in result["spans"]) == SENTENCE
    for entity in result["entities"]:
        assert SENTENCE[entity["start"] : entity["end"]] == entity["text"]
        assert any(label.endswith(entity["label"]) for label in labels if label != "O")


def test_nexa_try_prints_the_tagged_sentence(ner_run, monkeypatch, capsys):
    home, run_id = ner_run
    monkeypatch.setenv("NEXA_HOME", str(home))
    assert main(["try", run_id, SENTENCE, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["task"] == "ner" and {"entities", "spans"} <= set(result)
    folder = str(try_model.run_folder(run_id))
    assert main(["try", "--folder", folder, SENTENCE]) == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[0].replace("[", "").split("](")[0] in SENTENCE
    assert main(["try", run_id]) == 2 and "text: give the text" in capsys.readouterr().err
    assert main(["try", "no-such-run", "x"]) == 2 and "no complete checkpoint" in capsys.readouterr().err


def _folder(tmp_path: Path, task: str) -> Path:
    """A tiny exported folder for ``task`` (random weights, safetensors, the packaged tokenizer)."""
    from transformers import (
        AutoModel,
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
        BertConfig,
        GPT2Config,
    )

    out = tmp_path / task
    if task == "causal-lm":
        model = AutoModelForCausalLM.from_config(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=30522))
    else:
        config = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                            id2label={0: "billing", 1: "outage"}, label2id={"billing": 0, "outage": 1})  # fmt: skip
        cls = AutoModelForSequenceClassification if task == "classification" else AutoModel
        model = cls.from_config(config)
    model.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(_packaged_minilm_dir()).save_pretrained(out)
    return out


def test_classification_embedding_and_causal_lm_folders(tmp_path):
    labels = try_model.predict(try_model.load(_folder(tmp_path, "classification")), "The meter is wrong")
    assert [s["label"] for s in labels["labels"]] in (["billing", "outage"], ["outage", "billing"])
    assert sum(s["score"] for s in labels["labels"]) == pytest.approx(1.0, abs=1e-3)
    assert labels["labels"][0]["score"] >= labels["labels"][1]["score"]

    embedding = try_model.load(_folder(tmp_path, "embedding"))
    assert embedding.task.value == "embedding"  # a bare encoder: no head in config.json
    assert try_model.predict(embedding, "gas leak", "gas leak")["similarity"] == pytest.approx(1.0, abs=1e-3)
    assert -1.0 <= try_model.predict(embedding, "gas leak", "billing error")["similarity"] <= 1.0

    lm = try_model.load(_folder(tmp_path, "causal-lm"))
    answer = try_model.predict(lm, "When did the crew arrive?", max_new_tokens=3, instruction=True)
    assert answer["prompt"] == "When did the crew arrive?\nAnswer:" and isinstance(answer["text"], str)
    assert try_model.predict(lm, "The crew", max_new_tokens=2)["prompt"] == "The crew"


def test_only_safetensors_folders_load_and_bad_input_is_named(tmp_path):
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    (pickled / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ConfigError, match="safetensors only"):
        try_model.load(pickled)
    embedding = try_model.load(_folder(tmp_path, "embedding"))
    with pytest.raises(ConfigError) as bad:
        try_model.predict(embedding, " ", None)
    assert len(bad.value.problems) == 2  # the empty text and the missing second one, together
    with pytest.raises(ConfigError, match="task \\(--task\\)"):
        try_model.load(_folder(tmp_path, "classification"), task="translation")
