"""Token lengths of a training set after NEXA's own tokenisation, and the batch shapes the training
loader will really produce: what a data-aware memory estimate plans for.

The loader pads each batch to its longest example (datasets.make_collator), so a run's activations
follow the longest batch it meets, not the --seq-len cap. The order is fixed by the seed: Accelerate's
seedable sampler shuffles epoch e with seed + e, and several ranks split the batches between them
(accelerate.data_loader.BatchSamplerShard) [R18]; both classes are used here as they are, so the batches
computed are the ones each rank trains on.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from nexa_core.enums import Task

# A profile keeps at most this many distinct shapes (the ones that can set the peak, see peak_shapes)
MAX_SHAPES = 16


@dataclass(frozen=True)
class DataProfile:
    """A training set as the loader sees it, and the batches one rank trains on."""

    examples: int
    seq_len: int  # the --seq-len cap examples are cut at
    batch_size: int
    min_tokens: int
    median_tokens: int
    p95_tokens: int
    max_tokens: int
    truncated: int  # examples cut at the cap
    batches: int  # micro-batches the busiest rank trains on in the run's steps
    shapes: tuple[tuple[int, int], ...]  # (rows, padded tokens) that can set the peak: peak_shapes
    padded_to_cap: bool  # --pad-to-seq-len: every batch is seq_len long

    @property
    def longest(self) -> tuple[int, int]:
        """The batch with the most padded tokens (ties: the most rows)."""
        return max(self.shapes, key=lambda s: (s[1], s[0]))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "shapes": [list(s) for s in self.shapes], "longest": list(self.longest)}


def example_lengths(columns: dict[str, list], task: Task | str) -> list[int]:
    """Tokens per example of tokenised columns (datasets.tokenise_records, or a built Dataset's
    columns); for embedding pairs, the longer side (each side is padded to its own longest)."""
    if Task.parse(task, "task") is Task.EMBEDDING:
        return [
            max(len(a), len(p)) for a, p in zip(columns["anchor_input_ids"], columns["positive_input_ids"])
        ]
    return [len(ids) for ids in columns.get("input_ids", [])]


def rank_batches(
    num_examples: int, batch_size: int, seed: int, epoch: int, ranks: int = 1, rank: int = 0
) -> list[list[int]]:
    """Example indices of each batch ``rank`` trains on in ``epoch``: Accelerate's seedable
    sampler and batch sharding, as ``DeepSpeedTrainer`` prepares them (drop_last off, even batches)."""
    import torch
    from accelerate.data_loader import BatchSamplerShard, SeedableRandomSampler
    from torch.utils.data import BatchSampler

    sampler = SeedableRandomSampler(range(num_examples), generator=torch.Generator(), data_seed=seed)
    sampler.set_epoch(epoch)
    batches = BatchSampler(sampler, batch_size, drop_last=False)
    if ranks == 1:
        return [list(b) for b in batches]
    shard = BatchSamplerShard(batches, num_processes=ranks, process_index=rank, split_batches=False)
    return [list(b) for b in shard]


def trained_batches(
    lengths: Sequence[int],
    batch_size: int,
    seed: int,
    *,
    ranks: int = 1,
    max_steps: int | None = None,
    epochs: int = 1,
    gradient_accumulation: int = 1,
) -> list[list[tuple[int, int]]]:
    """(rows, padded tokens) of every micro-batch each rank trains on, in order, until the run's last
    optimizer step: the trainer's step count (max_steps, else epochs of the unsharded loader) and
    Accelerate's accumulation, which also steps at the end of each epoch."""
    n = len(lengths)
    if n == 0:
        return [[] for _ in range(ranks)]
    steps_per_epoch = max(1, math.ceil(math.ceil(n / batch_size) / gradient_accumulation))
    total = max_steps or steps_per_epoch * epochs
    out: list[list[tuple[int, int]]] = []
    for rank in range(ranks):
        shapes: list[tuple[int, int]] = []
        step = 0
        for epoch in range(math.ceil(total / steps_per_epoch)):
            batches = rank_batches(n, batch_size, seed, epoch, ranks, rank)
            for i, batch in enumerate(batches):
                shapes.append((len(batch), max(lengths[j] for j in batch)))
                if (i + 1) % gradient_accumulation == 0 or i == len(batches) - 1:
                    step += 1
                if step >= total:
                    break
            if step >= total:
                break
        out.append(shapes)
    return out


def peak_shapes(shapes: Sequence[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """The shapes no other shape dominates (as many rows and as many tokens or more): memory grows
    with both, so one of these sets the peak. Longest first."""
    best: dict[int, int] = {}
    for rows, tokens in shapes:
        best[tokens] = max(best.get(tokens, 0), rows)
    front: list[tuple[int, int]] = []
    for tokens in sorted(best, reverse=True):
        if not front or best[tokens] > front[-1][0]:
            front.append((best[tokens], tokens))
    return tuple(front[:MAX_SHAPES])


def profile(
    lengths: Sequence[int],
    *,
    seq_len: int,
    batch_size: int,
    seed: int = 0,
    ranks: int = 1,
    max_steps: int | None = None,
    epochs: int = 1,
    gradient_accumulation: int = 1,
    pad_to_seq_len: bool = False,
) -> DataProfile:
    """Statistics of ``lengths`` (tokens per example, already cut at ``seq_len``) and the shapes of
    the batches the run trains on (every rank's; the per-rank plan uses the largest)."""
    if not lengths:
        raise ValueError("lengths: no examples")
    per_rank = trained_batches(
        lengths, batch_size, seed, ranks=ranks, max_steps=max_steps, epochs=epochs,
        gradient_accumulation=gradient_accumulation,
    )  # fmt: skip
    every = [s for shapes in per_rank for s in shapes]
    if pad_to_seq_len:  # the collator pads to a multiple of seq_len, and no example is longer
        every = [(rows, seq_len) for rows, _ in every]
    ordered = sorted(lengths)
    return DataProfile(
        examples=len(lengths),
        seq_len=seq_len,
        batch_size=batch_size,
        min_tokens=ordered[0],
        median_tokens=int(statistics.median(ordered)),
        p95_tokens=ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)],
        max_tokens=ordered[-1],
        truncated=sum(1 for x in lengths if x >= seq_len),
        batches=max(len(s) for s in per_rank),
        shapes=peak_shapes(every),
        padded_to_cap=pad_to_seq_len,
    )


def profile_for(config: Any, ranks: int = 1) -> DataProfile:
    """The profile of a TrainConfig's training data, tokenised as its run will tokenise it.
    Raises ConfigError when the data or the tokenizer cannot be read."""
    lengths = _lengths(
        str(config.model), Task.parse(config.task, "task"), config.dataset, config.eval_dataset,
        config.seq_len, config.seed, _stamp(config.dataset),
    )  # fmt: skip
    return profile(
        lengths, seq_len=config.seq_len, batch_size=config.batch_size, seed=config.seed, ranks=ranks,
        max_steps=config.max_steps, epochs=config.epochs,
        gradient_accumulation=config.gradient_accumulation or 1, pad_to_seq_len=config.pad_to_seq_len,
    )  # fmt: skip


def _stamp(path: str | None) -> tuple[int, int] | None:
    """(size, mtime) of a data file, so the cache below never serves a replaced upload."""
    if path is None:
        return None
    st = Path(path).stat()
    return st.st_size, st.st_mtime_ns


@lru_cache(maxsize=32)
def _lengths(
    model: str, task: Task, dataset: str | None, eval_dataset: str | None, seq_len: int, seed: int,
    stamp: tuple[int, int] | None,
) -> tuple[int, ...]:  # fmt: skip
    from nexa_core import datasets
    from nexa_core.models import load_tokenizer

    records, _ = datasets.load_run_records(task, dataset, eval_dataset, seed=seed)  # as the run reads them
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # an estimate prints no library chatter (the CLI's errors are one line)
    try:
        tokenizer = load_tokenizer(model, announce=False)
    finally:
        hf_logging.set_verbosity(verbosity)
    datasets.ensure_pad_token(tokenizer)
    columns = datasets.tokenise_records(
        task, tokenizer, records, seq_len=seq_len, label_names=datasets.label_names_for(task, records)
    )
    return tuple(example_lengths(columns, task))
