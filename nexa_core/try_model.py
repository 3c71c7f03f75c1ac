"""Try a trained model on text of one's own: tag the entities of a sentence (NER), classify a text,
compare two sentences (embedding), continue a text or answer an instruction (causal LM).

A run is tried from its latest complete checkpoint, exported once (export.py, LoRA merged) into
``<run folder>/try-model/<checkpoint>/`` and reused from there; any exported Hugging Face folder can be
tried as it is. Models load through transformers pipelines on the CPU (a run may be using the GPU),
from safetensors only: a folder holding only pickled weights is refused, never unpickled."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nexa_core import paths
from nexa_core.enums import Task
from nexa_core.errors import ConfigError, raise_if

TRY_DIR = "try-model"  # in the run folder: one exported folder, for the latest checkpoint
MAX_TEXT_CHARS = 4000
MAX_NEW_TOKENS = 512
ANSWER_CUE = "\nAnswer:"  # how the bundled instruction sample (causal_lm_instructions) ends its prompts
# config.json's architecture names, by the ending transformers gives each task's head
_HEADS = (
    ("ForTokenClassification", Task.NER),
    ("ForSequenceClassification", Task.CLASSIFICATION),
    ("ForCausalLM", Task.CAUSAL_LM),
    ("LMHeadModel", Task.CAUSAL_LM),
)


def task_of(folder: Path) -> Task:
    """The task a model folder was exported for, from its config.json's architecture: a token or
    sequence classification head, a language-model head, or a bare encoder (embedding)."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError([f"folder (--folder): {folder} has no readable config.json ({exc})"]) from None
    for arch in config.get("architectures") or []:
        for ending, task in _HEADS:
            if str(arch).endswith(ending):
                return task
    return Task.EMBEDDING


def folder_problems(folder: Path) -> list[str]:
    """Why ``folder`` cannot be tried: not a folder, no config.json, or no safetensors weights."""
    if not folder.is_dir():
        return [
            f"folder (--folder): {folder} is not a folder (export a run with `nexa export RUN_ID --out DIR`)"
        ]
    problems = (
        [] if (folder / "config.json").is_file() else [f"folder (--folder): {folder} has no config.json"]
    )
    if not any(folder.glob("*.safetensors")):
        problems.append(
            f"folder (--folder): {folder} has no *.safetensors weights; NEXA loads safetensors only, never "
            "pickled weights (re-export it with `nexa export`)"
        )
    return problems


def has_checkpoint(run_id: str) -> bool:
    """Whether the run has a complete checkpoint to try."""
    from nexa_core.checkpoints import latest_checkpoint

    try:
        return latest_checkpoint(paths.run_dir(run_id)) is not None
    except ConfigError:
        return False


def run_folder(run_id: str) -> Path:
    """The run's latest complete checkpoint as a Hugging Face folder, exported on first use into the
    run folder and kept (an older checkpoint's export is removed when a newer one is made)."""
    from nexa_core.checkpoints import latest_checkpoint
    from nexa_core.export import export_checkpoint

    run_dir = paths.run_dir(run_id)
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is None:
        raise ConfigError([f"run: {run_id} has no complete checkpoint to try yet (a run saves one when it "
                           "ends, and every --save-every steps)"])  # fmt: skip
    cache = run_dir / TRY_DIR
    target = cache / checkpoint.name
    if not folder_problems(target):
        return target
    cache.mkdir(exist_ok=True)
    # Exported beside the target and renamed into place: a reader never sees half a folder, and of two
    # sessions exporting at once one keeps its folder and the other drops its own.
    partial = Path(tempfile.mkdtemp(prefix=f".{checkpoint.name}-", dir=cache))
    try:
        export_checkpoint(str(checkpoint), partial, merge_lora=True)
        os.rename(partial, target)
    except OSError:
        if folder_problems(target):  # not another session's complete export: a real failure
            raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    for old in cache.iterdir():
        if old.is_dir() and old.name != target.name and not old.name.startswith("."):
            shutil.rmtree(old, ignore_errors=True)
    return target


@dataclass
class Loaded:
    """A model folder ready to try: its task and the transformers pipeline that runs it."""

    folder: Path
    task: Task
    pipeline: Any


def load(folder: str | Path, task: Task | str | None = None) -> Loaded:
    """A pipeline for the folder's task (or ``task``): token-classification with word-level grouping,
    text-classification, feature-extraction, or text-generation; CPU, float32, safetensors only."""
    from nexa_core.models import _transformers  # resolved under models' import lock (thread safety)

    pipeline = _transformers().pipeline

    folder = Path(folder)
    raise_if(folder_problems(folder))
    try:
        task = Task.parse(task, "task (--task)") if task is not None else task_of(folder)
    except ValueError as exc:
        raise ConfigError([str(exc)]) from None
    kind = {Task.NER: "token-classification", Task.CLASSIFICATION: "text-classification",
            Task.EMBEDDING: "feature-extraction", Task.CAUSAL_LM: "text-generation"}[task]  # fmt: skip
    # use_safetensors=True: from_pretrained raises rather than fall back to a pickled *.bin file
    pipe = pipeline(kind, model=str(folder), device=-1, model_kwargs={"use_safetensors": True})
    if task is Task.CAUSAL_LM and pipe.tokenizer.pad_token_id is None:
        pipe.tokenizer.pad_token_id = pipe.tokenizer.eos_token_id
    return Loaded(folder, task, pipe)


def _text_problems(name: str, text: Any) -> list[str]:
    if not isinstance(text, str) or not text.strip():
        return [f"{name}: type some text to try the model on"]
    if len(text) > MAX_TEXT_CHARS:
        return [f"{name}: at most {MAX_TEXT_CHARS} characters, got {len(text)}"]
    return []


def predict(
    model: Loaded, text: str, second: str | None = None, max_new_tokens: int = 40, instruction: bool = False
) -> dict[str, Any]:
    """The model's answer for ``text`` as plain data (``task`` says which keys):
    ner: ``entities`` [{text, label, score, start, end}] and ``spans`` (the sentence cut into pieces,
    each with its label or None); classification: ``labels`` [{label, score}], best first;
    embedding: ``similarity`` of ``text`` and ``second`` (cosine of the mean-pooled token vectors,
    as the run was trained); causal-lm: ``prompt`` and its greedy continuation ``text``
    (``instruction``: the prompt ends with the sample's "\\nAnswer:" cue)."""
    problems = _text_problems("text", text)
    if model.task is Task.EMBEDDING:
        problems += _text_problems("second text (embedding compares two)", second)
    if model.task is Task.CAUSAL_LM and (
        not isinstance(max_new_tokens, int) or not 1 <= max_new_tokens <= MAX_NEW_TOKENS
    ):
        problems.append(
            f"max_new_tokens (--max-new-tokens): from 1 to {MAX_NEW_TOKENS}, got {max_new_tokens!r}"
        )
    raise_if(problems)
    out: dict[str, Any] = {"task": str(model.task)}
    if model.task is Task.NER:
        groups = model.pipeline(text, aggregation_strategy="first", ignore_labels=[])
        out["entities"] = [
            {"text": text[g["start"] : g["end"]], "label": g["entity_group"], "score": round(float(g["score"]), 4),
             "start": int(g["start"]), "end": int(g["end"])}
            for g in groups if g["entity_group"] != "O"
        ]  # fmt: skip
        out["spans"] = _spans(text, out["entities"])
    elif model.task is Task.CLASSIFICATION:
        scores = model.pipeline(text, top_k=None)
        out["labels"] = [{"label": s["label"], "score": round(float(s["score"]), 4)} for s in scores]
    elif model.task is Task.EMBEDDING:
        a, b = (_mean_vector(model.pipeline(t)) for t in (text, second))
        norm = (sum(x * x for x in a) * sum(y * y for y in b)) ** 0.5
        out["similarity"] = round(sum(x * y for x, y in zip(a, b)) / norm, 4) if norm else 0.0
    else:
        prompt = text.rstrip() + ANSWER_CUE if instruction and not text.rstrip().endswith("Answer:") else text
        generated = model.pipeline(
            prompt, max_new_tokens=max_new_tokens, do_sample=False, return_full_text=False
        )
        out["prompt"], out["text"] = prompt, generated[0]["generated_text"]
    return out


def _mean_vector(features: Any) -> list[float]:
    """feature-extraction's [1][tokens][hidden] as the mean over tokens (task_metrics.mean_pool with
    a single sentence's all-ones attention mask)."""
    tokens = features[0]
    return [statistics.fmean(column) for column in zip(*tokens)]


def _spans(text: str, entities: list[dict[str, Any]]) -> list[tuple[str, str | None]]:
    """``text`` cut into (piece, label or None) in order, the entities labelled: for highlighting."""
    spans, at = [], 0
    for e in sorted(entities, key=lambda e: e["start"]):
        if e["start"] > at:
            spans.append((text[at : e["start"]], None))
        spans.append((text[e["start"] : e["end"]], e["label"]))
        at = max(at, e["end"])
    if at < len(text):
        spans.append((text[at:], None))
    return spans


def as_text(result: dict[str, Any]) -> str:
    """The result as the CLI prints it."""
    task = result["task"]
    if task == Task.NER.value:
        tagged = "".join(
            piece if label is None else f"[{piece}]({label})" for piece, label in result["spans"]
        )
        lines = [f"{e['label']:12s} {e['score']:.2f}  {e['text']}" for e in result["entities"]]
        return "\n".join([tagged, *(lines or ["(no entities found)"])])
    if task == Task.CLASSIFICATION.value:
        return "\n".join(f"{s['score']:.3f}  {s['label']}" for s in result["labels"])
    if task == Task.EMBEDDING.value:
        return f"cosine similarity {result['similarity']:.4f}"
    return result["prompt"] + result["text"]
