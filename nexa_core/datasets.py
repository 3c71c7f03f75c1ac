"""Load, validate and tokenise training data for the four tasks; build deterministic DataLoaders.

Files are untrusted uploads, so reading is bounded (file size checked before opening, each line read
with a byte cap) and every problem is collected and raised once as a ``ConfigError`` naming the
file and line. Tokenised datasets stay in memory: nothing is written to the ``datasets`` cache.
"""

from __future__ import annotations

import csv
import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path
from typing import Any

from nexa_core.enums import Task
from nexa_core.errors import ConfigError

LIMIT_BYTES = 50 * 1024 * 1024
MAX_LINE_BYTES = 1024 * 1024
MAX_PROBLEMS = 20
MAX_DEPTH = 20
MAX_ROWS = 250_000  # records kept in memory per file: a few hundred MB of Python objects at most
SUFFIXES = (".jsonl", ".json", ".csv")
DATA_DIR = Path(__file__).resolve().parent / "data"
_BUNDLED = {t: t.value.replace("-", "_") for t in Task} | {Task.NER: "ner_utility"}  # file name stems
REQUIRED_FIELDS: dict[Task, tuple[str, ...]] = {
    Task.NER: ("tokens", "ner_tags"),
    Task.CLASSIFICATION: ("text", "label"),
    Task.EMBEDDING: ("anchor", "positive"),
    Task.CAUSAL_LM: ("text",),
}
# In memory and never from/to the ~/.cache/huggingface/datasets cache: uploads change under one name.
_MAP_OPTIONS = {"batched": True, "keep_in_memory": True, "load_from_cache_file": False}
# The nesting pre-scan, three linear passes of single-character patterns (no nested repetition, so
# neither backtracking nor a regex stack that grows with the line): drop escape pairs, so every
# '"' left delimits a string; drop the strings (an unterminated one runs to the end of the line);
# keep only the brackets.
_ESCAPE = re.compile(r"\\.", re.DOTALL)
_STRING = re.compile(r'"[^"]*"?')
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_DEPTH_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


def bundled_paths(task: Task | str) -> tuple[Path, Path]:
    """(train, validation) files shipped in ``nexa_core/data`` for a task."""
    stem = _BUNDLED[Task.parse(task, "task")]
    return DATA_DIR / f"{stem}_train.jsonl", DATA_DIR / f"{stem}_validation.jsonl"


class _Problems:
    """Keeps the first ``MAX_PROBLEMS`` messages and counts the rest (a bad 1M-line file stays readable)."""

    def __init__(self, name: str) -> None:
        self.name, self.items, self.total = name, [], 0

    def add(self, message: str, line: int | None = None) -> None:
        self.total += 1
        if len(self.items) < MAX_PROBLEMS:
            where = self.name if line is None else f"{self.name} line {line}"
            self.items.append(f"{where}: {message}")

    def raise_if_any(self) -> None:
        if self.total:
            more = self.total - len(self.items)
            raise ConfigError(self.items + ([f"{self.name}: ... and {more} more problems"] if more else []))


def _lines(path: Path, problems: _Problems) -> Iterator[tuple[int, str]]:
    """Yield (line number, text) with lines read at most ``MAX_LINE_BYTES`` at a time."""
    with path.open("rb") as f:
        number = 0
        while raw := f.readline(MAX_LINE_BYTES + 1):
            number += 1
            if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                while (rest := f.readline(1 << 16)) and not rest.endswith(b"\n"):
                    pass  # skip the rest of the over-long line without holding it in memory
                problems.add(f"line is longer than {MAX_LINE_BYTES} bytes", number)
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                problems.add(f"not valid UTF-8 (byte {exc.start + 1} of the line); save as UTF-8", number)
                continue
            yield number, text.removeprefix("\ufeff") if number == 1 else text  # BOM from Excel/Notepad


def _too_deep(text: str) -> bool:
    """True if JSON nesting exceeds MAX_DEPTH. Linear in the line (a few copies of it at most, and
    lines are capped at MAX_LINE_BYTES) and without recursion, so neither "[" * 100000 nor a line of
    escaped quotes can stall the app. Exact for valid JSON; for invalid JSON it only decides which
    message the line gets."""
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return False
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", _ESCAPE.sub("", text)))
    return max(accumulate(map(_DEPTH_STEP.__getitem__, brackets)), default=0) > MAX_DEPTH


def _check_record(task: Task, record: dict, label_names: list[str] | None) -> tuple[dict | None, list[str]]:
    """Validate one record's fields; returns (record with only the required fields, problems)."""
    missing = [f for f in REQUIRED_FIELDS[task] if f not in record]
    if missing:
        return None, [f"missing field {f!r}" for f in missing]
    out = {f: record[f] for f in REQUIRED_FIELDS[task]}
    errs: list[str] = []
    if task is Task.NER:
        tokens, tags = out["tokens"], out["ner_tags"]
        for name, value in (("tokens", tokens), ("ner_tags", tags)):
            if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
                errs.append(f"field {name!r} must be a non-empty list of strings")
        if not errs and len(tokens) != len(tags):
            errs.append(f"'tokens' has {len(tokens)} items but 'ner_tags' has {len(tags)}")
        labels = tags if not errs else []
    else:
        if task is Task.CLASSIFICATION and type(out["label"]) is int:  # not bool
            out["label"] = str(out["label"])  # CSV labels are strings; keep JSON ints consistent with them
        for name, value in out.items():
            if not isinstance(value, str) or not value.strip():
                errs.append(f"field {name!r} must be a non-empty string")
        labels = [out["label"]] if task is Task.CLASSIFICATION and not errs else []
    if label_names is not None:
        unknown = sorted(set(labels) - set(label_names))
        if unknown:
            errs.append(f"unknown label(s) {', '.join(map(repr, unknown))}; known: {', '.join(label_names)}")
    return (None if errs else out), errs


def _json_records(path: Path, problems: _Problems) -> Iterator[tuple[int, Any]]:
    for number, text in _lines(path, problems):
        if not text.strip():
            continue
        if _too_deep(text):
            problems.add(f"JSON nested deeper than {MAX_DEPTH} levels", number)
            continue
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            problems.add(f"malformed JSON ({exc.msg} at column {exc.colno})", number)
            continue
        except ValueError as exc:  # e.g. an integer of more than 4300 digits (sys.get_int_max_str_digits)
            problems.add(f"malformed JSON ({exc})", number)
            continue
        except RecursionError:  # belt and braces; _too_deep should have caught it
            problems.add(f"JSON nested deeper than {MAX_DEPTH} levels", number)
            continue
        if not isinstance(value, dict):
            problems.add(f"expected a JSON object (one record per line), got {type(value).__name__}", number)
            continue
        yield number, value


def _csv_records(path: Path, task: Task, problems: _Problems) -> Iterator[tuple[int, Any]]:
    numbers: list[int] = []  # physical line number of each line handed to csv (bad lines are skipped)

    def feed() -> Iterator[str]:
        for number, text in _lines(path, problems):
            numbers.append(number)
            yield text

    reader = csv.reader(feed())
    header: list[str] | None = None
    while True:
        consumed = reader.line_num
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            problems.add(f"malformed CSV ({exc})", numbers[-1] if numbers else None)
            return
        number = numbers[consumed]  # the line this row starts on (a quoted field may span lines)
        if not any(cell.strip() for cell in row):
            continue
        if header is None:
            header = [cell.strip() for cell in row]
            missing = [f for f in REQUIRED_FIELDS[task] if f not in header]
            for name in missing:
                problems.add(f"missing column {name!r} (header has: {', '.join(header)})", number)
            if missing:
                return
            continue
        if len(row) != len(header):
            problems.add(f"has {len(row)} values but the header has {len(header)} columns", number)
            continue
        record: dict[str, Any] = dict(zip(header, row, strict=True))
        if task is Task.NER:  # CSV holds NER words and tags as space-separated strings
            record["tokens"], record["ner_tags"] = record["tokens"].split(), record["ner_tags"].split()
        yield number, record


def load_records(
    path: str | Path,
    task: Task | str,
    *,
    max_bytes: int = LIMIT_BYTES,
    label_names: list[str] | None = None,
    max_rows: int = MAX_ROWS,
) -> list[dict]:
    """Read and validate .jsonl/.json (an object per line) or .csv; one ConfigError lists all problems."""
    path, task = Path(path), Task.parse(task, "task")
    problems = _Problems(path.name)
    if path.suffix.lower() not in SUFFIXES:
        problems.add(f"unsupported file type {path.suffix or '(none)'!r}; use {', '.join(SUFFIXES)}")
    elif not path.is_file():
        problems.add("file not found" if not path.exists() else "not a file")
    elif (size := path.stat().st_size) > max_bytes:  # before reading a single byte
        problems.add(f"file is {size} bytes, larger than the {max_bytes} byte limit")
    elif size == 0:
        problems.add("file is empty")
    problems.raise_if_any()
    raw = (
        _csv_records(path, task, problems) if path.suffix.lower() == ".csv" else _json_records(path, problems)
    )
    records = []
    for number, value in raw:
        if len(records) >= max_rows:  # stop reading: the rest would only grow memory
            problems.add(f"more than {max_rows} records; split the file or sample it down", number)
            break
        record, errs = _check_record(task, value, label_names)
        for err in errs:
            problems.add(err, number)
        if record is not None:
            records.append(record)
    if not records and not problems.total:
        problems.add("no records found")
    problems.raise_if_any()
    return records


def label_names_for(task: Task | str, records: list[dict]) -> list[str]:
    """NER: unique tags sorted with "O" first; classification: sorted unique labels; others: []."""
    task = Task.parse(task, "task")
    if task is Task.NER:
        tags = {t for r in records for t in r["ner_tags"]}
        return (["O"] if "O" in tags else []) + sorted(tags - {"O"})
    if task is Task.CLASSIFICATION:
        return sorted({r["label"] for r in records})
    return []


def ensure_pad_token(tokenizer: Any) -> None:
    """GPT-2 style tokenizers have no pad token; padding needs one (eos, else unk)."""
    if tokenizer.pad_token is None:
        fallback = tokenizer.eos_token or tokenizer.unk_token
        if fallback is None:
            raise ConfigError(["tokenizer: has no pad, eos or unk token to pad batches with"])
        tokenizer.pad_token = fallback


def _encode(task: Task, tokenizer: Any, seq_len: int, label_ids: dict[str, int]):
    def text(texts: list[str]) -> dict[str, list]:
        enc = tokenizer(texts, truncation=True, max_length=seq_len)
        # Only ids and mask: some models (DistilBERT, Llama) reject token_type_ids in forward().
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def ner(batch: dict[str, list]) -> dict[str, list]:
        enc = tokenizer(batch["tokens"], is_split_into_words=True, truncation=True, max_length=seq_len)
        labels = []
        for i, tags in enumerate(batch["ner_tags"]):
            row, previous = [], None
            for word in enc.word_ids(i):  # first sub-token of a word carries its tag; the rest are ignored
                row.append(-100 if word is None or word == previous else label_ids[tags[word]])
                previous = word
            labels.append(row)
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels}

    def classification(batch: dict[str, list]) -> dict[str, list]:
        return {**text(batch["text"]), "labels": [label_ids[label] for label in batch["label"]]}

    def embedding(batch: dict[str, list]) -> dict[str, list]:
        return {f"{side}_{k}": v for side in ("anchor", "positive") for k, v in text(batch[side]).items()}

    def causal_lm(batch: dict[str, list]) -> dict[str, list]:
        return text(batch["text"])  # labels come from the collator (input_ids, padding -> -100)

    encoders = {Task.NER: ner, Task.CLASSIFICATION: classification, Task.EMBEDDING: embedding}
    return encoders.get(task, causal_lm)


def build_datasets(
    task: Task | str,
    tokenizer: Any,
    train_records: list[dict],
    eval_records: list[dict],
    *,
    seq_len: int,
    label_names: list[str],
):
    """Tokenise records into in-memory ``datasets.Dataset`` objects (train, eval)."""
    import datasets as hf_datasets  # the Hugging Face library, not this module

    task = Task.parse(task, "task")
    ensure_pad_token(tokenizer)
    if task is Task.NER and not getattr(tokenizer, "is_fast", True):
        raise ConfigError(["tokenizer: NER label alignment needs a fast tokenizer (word_ids)"])
    label_ids = {name: i for i, name in enumerate(label_names)}
    if task in (Task.NER, Task.CLASSIFICATION):  # a KeyError deep inside map() would be unreadable
        used = set(label_names_for(task, train_records + eval_records))
        if not used <= label_ids.keys():
            raise ConfigError([f"label_names: missing {', '.join(sorted(used - label_ids.keys()))}"])
    encode = _encode(task, tokenizer, seq_len, label_ids)

    def build(records: list[dict]):
        ds = hf_datasets.Dataset.from_list(records)
        # A given fingerprint skips hashing (dill-pickling) the tokenizer, about a second per call.
        fingerprint = uuid.uuid4().hex
        options = {"new_fingerprint": fingerprint, "desc": f"Tokenising {task} data", **_MAP_OPTIONS}
        return ds.map(encode, remove_columns=ds.column_names, **options)

    return build(train_records), build(eval_records)


@dataclass
class PairCollator:
    """Pads anchor and positive sides separately (each to its own longest sequence)."""

    tokenizer: Any
    pad_to_multiple_of: int | None = None

    def __call__(self, features: list[dict]) -> dict[str, Any]:
        out, keys = {}, ("input_ids", "attention_mask")
        for side in ("anchor", "positive"):
            batch = self.tokenizer.pad(
                [{k: f[f"{side}_{k}"] for k in keys} for f in features],
                return_tensors="pt",
                pad_to_multiple_of=self.pad_to_multiple_of,
            )
            out.update({f"{side}_{k}": batch[k] for k in keys})
        return out


def make_collator(task: Task | str, tokenizer: Any, pad_to: int | None = None):
    """The batch collator for a task (pads dynamically; causal-lm masks padding in labels with -100).

    ``pad_to``: pad every batch to exactly this length (sequences are already truncated to it), as
    a probe run does to measure memory at the longest sequence length.
    """
    import transformers

    task = Task.parse(task, "task")
    ensure_pad_token(tokenizer)
    if task is Task.NER:  # pads labels with -100
        return transformers.DataCollatorForTokenClassification(tokenizer, pad_to_multiple_of=pad_to)
    if task is Task.CLASSIFICATION:
        return transformers.DataCollatorWithPadding(tokenizer, pad_to_multiple_of=pad_to)
    if task is Task.CAUSAL_LM:  # labels = input_ids, padding -> -100 (the model shifts them itself)
        return transformers.DataCollatorForLanguageModeling(tokenizer, mlm=False, pad_to_multiple_of=pad_to)
    return PairCollator(tokenizer, pad_to)


def load_run_records(
    task: Task | str,
    train_path: str | Path | None = None,
    eval_path: str | Path | None = None,
    *,
    seed: int = 0,
    max_bytes: int = LIMIT_BYTES,
) -> tuple[list[dict], list[dict]]:
    """(train, eval) records as a run takes them: the files given, else the bundled samples; without
    an eval file the user's own data gives 10 % of itself (seeded), since the bundled validation set
    has other labels; eval labels must be ones the model is trained on. One ConfigError lists every
    problem of both files: `nexa launch` calls this before it starts anything."""
    task = Task.parse(task, "task")
    default_train, default_eval = bundled_paths(task)
    problems: list[str] = []
    train_records: list[dict] = []
    eval_records: list[dict] = []
    try:
        train_records = load_records(train_path or default_train, task, max_bytes=max_bytes)
    except ConfigError as exc:
        problems += exc.problems
    if train_path is not None and eval_path is None and len(train_records) >= 2:
        import random

        order = list(range(len(train_records)))
        random.Random(seed).shuffle(order)
        cut = max(1, len(order) // 10)
        eval_records = [train_records[i] for i in order[:cut]]
        train_records = [train_records[i] for i in order[cut:]]
    if not eval_records:
        labels = label_names_for(task, train_records)
        known = labels if train_records and task in (Task.NER, Task.CLASSIFICATION) else None
        try:
            eval_records = load_records(
                eval_path or default_eval, task, max_bytes=max_bytes, label_names=known
            )
        except ConfigError as exc:
            problems += exc.problems
    if problems:
        raise ConfigError(problems)
    return train_records, eval_records


@dataclass
class DataBundle:
    train_loader: Any  # torch.utils.data.DataLoader
    eval_loader: Any
    label_names: list[str]
    num_train_examples: int


def build_dataloaders(
    task: Task | str,
    tokenizer: Any,
    train_path: str | Path | None = None,
    eval_path: str | Path | None = None,
    *,
    batch_size: int,
    seq_len: int,
    seed: int = 0,
    max_bytes: int = LIMIT_BYTES,
    pad_to_seq_len: bool = False,
) -> DataBundle:
    """Load (bundled files for None paths), validate, tokenise and wrap in DataLoaders.

    The train loader shuffles with a generator seeded by ``seed``, so two runs see the same order.
    """
    import torch
    from torch.utils.data import DataLoader

    task = Task.parse(task, "task")
    problems: list[str] = []
    if batch_size < 1:
        problems.append(f"batch_size: must be at least 1, got {batch_size}")
    if seq_len < 2:
        problems.append(f"seq_len: must be at least 2, got {seq_len}")
    try:
        train_records, eval_records = load_run_records(
            task, train_path, eval_path, seed=seed, max_bytes=max_bytes
        )
    except ConfigError as exc:
        problems += exc.problems
    if problems:
        raise ConfigError(problems)
    label_names = label_names_for(task, train_records + eval_records)
    train_ds, eval_ds = build_datasets(
        task, tokenizer, train_records, eval_records, seq_len=seq_len, label_names=label_names
    )
    collate = make_collator(task, tokenizer, seq_len if pad_to_seq_len else None)
    # A seeded generator fixes the shuffle order per epoch, so a resumed run can replay it.
    generator = torch.Generator().manual_seed(seed)
    train = DataLoader(train_ds, batch_size=batch_size, shuffle=True, generator=generator, collate_fn=collate)
    evaluation = DataLoader(eval_ds, batch_size=batch_size, shuffle=False, collate_fn=collate)
    return DataBundle(train, evaluation, label_names, len(train_ds))
