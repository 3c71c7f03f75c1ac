"""Load, validate and tokenise training data for the four tasks; build deterministic DataLoaders.

Files are untrusted uploads, so reading is bounded (file size checked before opening, each line read
with a byte cap) and every problem is collected and raised once as a ``ConfigError`` naming the
file and line. Tokenised datasets stay in memory: nothing is written to the ``datasets`` cache.
"""

from __future__ import annotations

import csv
import json
import logging
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path
from typing import Any

from nexa_core.enums import Task
from nexa_core.errors import ConfigError

log = logging.getLogger("nexa.datasets")

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
# causal-lm takes three record formats; a file uses one. The loss covers every token of "text", and
# only the completion (or the assistant turns) of the other two: the prompt's labels are -100.
CAUSAL_LM_FORMATS: dict[str, tuple[str, ...]] = {
    "text": ("text",),
    "prompt-completion": ("prompt", "completion"),
    "chat": ("messages",),
}
CHAT_ROLES = ("system", "user", "assistant")
# Bundled samples beyond each task's default, named as --dataset sample:<name>.
SAMPLES = {"instructions": (Task.CAUSAL_LM, "causal_lm_instructions")}
SAMPLE_PREFIX = "sample:"

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


def fields_help(task: Task | str) -> str:
    """What a record of ``task`` must hold, in one line (upload help and error hints)."""
    task = Task.parse(task, "task")
    if task is Task.CAUSAL_LM:
        return (
            "'text'; or 'prompt' and 'completion' (loss on the completion only); or, in JSONL only, "
            '\'messages\': a list of {"role": system|user|assistant, "content"} (loss on assistant turns)'
        )
    if task is Task.NER:
        return "'tokens' and 'ner_tags' (JSON lists; in CSV, space-separated words and tags)"
    return " and ".join(f"'{f}'" for f in REQUIRED_FIELDS[task])


def sample_names(task: Task | str) -> list[str]:
    """The bundled samples for a task beyond its default one, as --dataset values."""
    task = Task.parse(task, "task")
    return [SAMPLE_PREFIX + name for name, (t, _) in SAMPLES.items() if t is task]


def bundled_paths(task: Task | str, sample: str | None = None) -> tuple[Path, Path]:
    """(train, validation) files shipped in ``nexa_core/data`` for a task, or for a named sample."""
    stem = SAMPLES[sample][1] if sample else _BUNDLED[Task.parse(task, "task")]
    return DATA_DIR / f"{stem}_train.jsonl", DATA_DIR / f"{stem}_validation.jsonl"


def resolve_sample(dataset: str | None, task: Task | str) -> tuple[str | None, list[str]]:
    """``sample:<name>`` names a bundled sample: (its training file's path, problems). Other values
    are returned unchanged."""
    if dataset is None or not str(dataset).startswith(SAMPLE_PREFIX):
        return dataset, []
    name = str(dataset).removeprefix(SAMPLE_PREFIX)
    allowed = ", ".join(SAMPLE_PREFIX + n for n in SAMPLES)
    if name not in SAMPLES:
        return None, [f"dataset (--dataset): {dataset!r} is not a bundled sample; choose one of {allowed}"]
    try:
        wrong_task = Task.parse(task, "task") is not SAMPLES[name][0]
    except ValueError:
        return None, []  # the task's own message says what is wrong
    if wrong_task:
        return None, [f"dataset (--dataset): {dataset} is for --task {SAMPLES[name][0]}, not {task}"]
    return str(bundled_paths(task, name)[0]), []


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


def causal_lm_format(record: dict) -> str | None:
    """Which causal-lm format a record is in (chat, then prompt-completion, then text), or None."""
    for name in ("chat", "prompt-completion", "text"):
        if all(f in record for f in CAUSAL_LM_FORMATS[name]):
            return name
    return None


def _check_messages(messages: Any) -> list[str]:
    if not isinstance(messages, list) or not messages:
        return ['field \'messages\' must be a non-empty list of {"role", "content"} objects']
    errs = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in CHAT_ROLES:
            errs.append(f"messages[{i}]: 'role' must be one of {', '.join(CHAT_ROLES)}")
        elif not isinstance(m.get("content"), str) or not m["content"].strip():
            errs.append(f"messages[{i}]: 'content' must be a non-empty string")
    if not errs and not any(m["role"] == "assistant" for m in messages):
        errs.append("messages: no 'assistant' turn, so nothing to learn from")
    return errs


def _check_causal_lm(record: dict) -> tuple[dict | None, list[str]]:
    form = causal_lm_format(record)
    if form is None:
        return None, ["needs a 'text' field, or 'prompt' and 'completion', or 'messages' (chat)"]
    out = {f: record[f] for f in CAUSAL_LM_FORMATS[form]}
    if form == "chat":
        errs = _check_messages(out["messages"])
        out["messages"] = (
            [{"role": m["role"], "content": m["content"]} for m in out["messages"]] if not errs else []
        )
    else:
        errs = [
            f"field {k!r} must be a non-empty string"
            for k, v in out.items()
            if not isinstance(v, str) or not v.strip()
        ]
    return (None if errs else out), errs


def _check_record(task: Task, record: dict, label_names: list[str] | None) -> tuple[dict | None, list[str]]:
    """Validate one record's fields; returns (record with only the required fields, problems)."""
    if task is Task.CAUSAL_LM:
        return _check_causal_lm(record)
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
            if task is Task.CAUSAL_LM:
                form = causal_lm_format(dict.fromkeys(header))
                if form is None or form == "chat":
                    problems.add(
                        "needs a 'text' column, or 'prompt' and 'completion' columns (chat 'messages' "
                        f"only in JSONL) (header has: {', '.join(header)})",
                        number,
                    )
                    return
                continue
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
    shown_as: str | None = None,
) -> list[dict]:
    """Read and validate .jsonl/.json (an object per line) or .csv; one ConfigError lists all problems,
    each naming the file as ``shown_as`` (e.g. the name an upload had on the user's machine) or by
    its own name."""
    path, task = Path(path), Task.parse(task, "task")
    problems = _Problems(shown_as or path.name)
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
    first_format: str | None = None
    for number, value in raw:
        if len(records) >= max_rows:  # stop reading: the rest would only grow memory
            problems.add(f"more than {max_rows} records; split the file or sample it down", number)
            break
        record, errs = _check_record(task, value, label_names)
        for err in errs:
            problems.add(err, number)
        if record is not None and task is Task.CAUSAL_LM:
            form = causal_lm_format(record)
            first_format = first_format or form
            if form != first_format:  # one Dataset needs one set of columns
                problems.add(
                    f"a {form!r} record in a file of {first_format!r} records; use one format", number
                )
                continue
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

    encoders = {Task.NER: ner, Task.CLASSIFICATION: classification, Task.EMBEDDING: embedding}
    return encoders.get(task) or CausalLMEncoder(tokenizer, seq_len)


# Used for "messages" when the tokenizer has no chat template of its own (docs/DATA.md).
PLAIN_CHAT_HEADERS = {"system": "### System:\n", "user": "### User:\n", "assistant": "### Assistant:\n"}
PLAIN_CHAT_SEPARATOR = "\n\n"


def render_chat(tokenizer: Any, messages: list[dict]) -> tuple[str, list[tuple[int, int]], bool]:
    """(text, character spans of the assistant turns, whether the tokenizer's own template rendered it).

    With a chat template, each assistant span runs from the end of the conversation rendered up to
    that turn with the generation prompt (its header) to the end of the conversation rendered
    through that turn, so the end-of-turn marker is learned too. Without one, the plain template
    above is used: a header line per message, messages separated by a blank line."""
    if getattr(tokenizer, "chat_template", None):
        full = tokenizer.apply_chat_template(messages, tokenize=False)
        spans = []
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            before = (
                tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
                if i
                else ""
            )
            through = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
            if not (full.startswith(through) and through.startswith(before)):
                raise ConfigError(
                    ["messages: the tokenizer's chat template renders turns differently in context, so the "
                     "assistant's tokens cannot be told apart; use 'prompt' and 'completion' instead"]
                )  # fmt: skip
            spans.append((len(before), len(through)))
        return full, spans, True
    parts, spans, at = [], [], 0
    for message in messages:
        header = PLAIN_CHAT_HEADERS[message["role"]]
        if parts:
            at += len(PLAIN_CHAT_SEPARATOR)
        start = at + len(header)
        parts.append(header + message["content"])
        at += len(parts[-1])
        if message["role"] == "assistant":
            spans.append((start, at))
    return PLAIN_CHAT_SEPARATOR.join(parts), spans, False


class CausalLMEncoder:
    """Tokenise causal-lm records into input_ids, attention_mask and labels.

    "text": every token is a target. "prompt"/"completion" and "messages": only tokens that start
    inside the completion or an assistant turn are targets; the rest get -100, which the loss
    ignores. A completion that runs to its end gets the end-of-sequence token as a target (the model
    learns to stop), unless a chat template already ends the turn. Sequences are cut at seq_len;
    a record left with no target token is dropped (counted in ``dropped``)."""

    def __init__(self, tokenizer: Any, seq_len: int) -> None:
        self.tokenizer, self.seq_len, self.dropped = tokenizer, seq_len, 0

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        if "messages" in batch:
            rendered = [render_chat(self.tokenizer, m) for m in batch["messages"]]
        elif "prompt" in batch:
            rendered = [
                (p + c, [(len(p), len(p + c))], False) for p, c in zip(batch["prompt"], batch["completion"])
            ]
        else:
            rendered = [(t, None, False) for t in batch["text"]]
        out: dict[str, list] = {"input_ids": [], "attention_mask": [], "labels": []}
        for text, spans, templated in rendered:
            ids, labels = self._encode(text, spans, templated)
            if spans is not None and all(x == -100 for x in labels):
                self.dropped += 1
                continue
            out["input_ids"].append(ids)
            out["attention_mask"].append([1] * len(ids))
            out["labels"].append(labels)
        return out

    def _encode(self, text: str, spans: list[tuple[int, int]] | None, templated: bool) -> tuple[list, list]:
        tok = self.tokenizer
        if spans is None:
            ids = tok(text, truncation=True, max_length=self.seq_len)["input_ids"]
            return ids, list(ids)
        if not getattr(tok, "is_fast", False):
            raise ConfigError(["tokenizer: prompt/completion and chat data need a fast tokenizer (offsets)"])
        # a chat template writes the special tokens (BOS, headers) itself
        enc = tok(text, return_offsets_mapping=True, add_special_tokens=not templated)
        ids = list(enc["input_ids"])
        labels = [
            t if end > start and any(a <= start < b for a, b in spans) else -100
            for t, (start, end) in zip(ids, enc["offset_mapping"])
        ]
        eos = tok.eos_token_id
        if len(ids) > self.seq_len:
            return ids[: self.seq_len], labels[: self.seq_len]
        if not templated and spans and spans[-1][1] == len(text):
            if eos is not None and len(ids) < self.seq_len and ids[-1:] != [eos]:
                ids, labels = ids + [eos], labels + [eos]
            elif ids and ids[-1] in (eos, tok.sep_token_id):  # e.g. BERT's [SEP] closes the sequence
                labels[-1] = ids[-1]
        return ids, labels


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

    def build(records: list[dict], split: str):
        ds = hf_datasets.Dataset.from_list(records)
        # A given fingerprint skips hashing (dill-pickling) the tokenizer, about a second per call.
        fingerprint = uuid.uuid4().hex
        options = {"new_fingerprint": fingerprint, "desc": f"Tokenising {task} data", **_MAP_OPTIONS}
        dropped_before = getattr(encode, "dropped", 0)
        out = ds.map(encode, remove_columns=ds.column_names, **options)
        dropped = getattr(encode, "dropped", 0) - dropped_before
        if dropped and not len(out):
            raise ConfigError(
                [f"seq_len (--seq-len): {seq_len} tokens leave no completion token in any {split} record; "
                 "raise it or shorten the prompts"]
            )  # fmt: skip
        if dropped:
            log.warning("%s: %d record(s) dropped: their prompt fills all %d tokens", split, dropped, seq_len)
        return out

    return build(train_records, "training"), build(eval_records, "validation")


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
    from nexa_core.models import _transformers  # resolved under models' import lock (thread safety)

    transformers = _transformers()
    task = Task.parse(task, "task")
    ensure_pad_token(tokenizer)
    if task is Task.NER:  # pads labels with -100
        return transformers.DataCollatorForTokenClassification(tokenizer, pad_to_multiple_of=pad_to)
    if task is Task.CLASSIFICATION:
        return transformers.DataCollatorWithPadding(tokenizer, pad_to_multiple_of=pad_to)
    if task is Task.CAUSAL_LM:  # labels from CausalLMEncoder, padding -> -100 (the model shifts them itself)
        return transformers.DataCollatorForSeq2Seq(
            tokenizer, label_pad_token_id=-100, pad_to_multiple_of=pad_to
        )
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


def tokenise_records(
    task: Task | str, tokenizer: Any, records: list[dict], *, seq_len: int, label_names: list[str]
) -> dict[str, list]:
    """The columns ``build_datasets`` makes of ``records`` (the same encoder, without a Dataset):
    causal-lm records left with no target token are dropped, as there."""
    task = Task.parse(task, "task")
    encode = _encode(task, tokenizer, seq_len, {name: i for i, name in enumerate(label_names)})
    return encode({key: [r[key] for r in records] for key in records[0]}) if records else {}


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
