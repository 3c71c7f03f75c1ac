"""The pieces of the training loop that are plain arithmetic and bookkeeping, apart from the loop
that uses them (trainer.DeepSpeedTrainer.train): how many steps and epochs a run has, where a
resumed run picks up, when a checkpoint or an evaluation is due, and the throughput of the steps
since the last record. Each is tested on its own (tests/test_train_loop.py)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from nexa_core import task_metrics


@dataclass(frozen=True)
class Schedule:
    """A run's length in optimizer steps: ``max_steps`` when given, else ``epochs`` full passes;
    one optimizer step per ``accumulation`` batches (a partial group at an epoch's end counts)."""

    total_steps: int
    steps_per_epoch: int
    epochs: int

    @classmethod
    def of(cls, batches_per_epoch: int, accumulation: int, epochs: int, max_steps: int | None) -> Schedule:
        per_epoch = max(1, math.ceil(batches_per_epoch / accumulation))
        total = max_steps or per_epoch * epochs
        return cls(total, per_epoch, math.ceil(total / per_epoch))


def epochs_from(start_epoch: int, start_step: int, schedule: Schedule) -> range:
    """The epochs left to run from a (resumed) position: none once the last step is behind it."""
    return range(start_epoch, schedule.epochs if start_step < schedule.total_steps else start_epoch)


def due(step: int, every: int | None, total_steps: int) -> bool:
    """Whether a periodic action (a checkpoint, an evaluation) falls on ``step``. Never on the last
    step: the run's end writes its own checkpoint and runs the final evaluation."""
    return bool(every) and step % every == 0 and step < total_steps


@dataclass
class ThroughputWindow:
    """Samples and tokens seen since the last recorded step, turned into per-second rates over all
    ranks when the step is recorded (then the window restarts)."""

    clock: Callable[[], float] = time.perf_counter
    start: float = field(default=0.0)
    samples: int = 0
    tokens: int = 0

    def __post_init__(self) -> None:
        self.start = self.clock()

    def add(self, batch: dict[str, Any]) -> None:
        self.samples += task_metrics.batch_size(batch)
        self.tokens += task_metrics.token_count(batch)

    def close(self, ranks: int) -> dict[str, float]:
        """The window's rates (every rank sees as many samples as this one) and its length."""
        elapsed = max(self.clock() - self.start, 1e-9)
        rates = {
            "samples_per_s": self.samples * ranks / elapsed,
            "tokens_per_s": self.tokens * ranks / elapsed,
            "step_time_s": elapsed,
        }
        self.start, self.samples, self.tokens = self.clock(), 0, 0
        return rates


def batches(loader: Any, skip: int, skip_first: Callable[[Any, int], Any]) -> Iterator[tuple[int, Any]]:
    """(batches seen so far in this epoch, batch), starting after ``skip`` batches a resumed run has
    already trained on (``skip_first`` is Accelerate's skip_first_batches)."""
    seen = skip
    for batch in skip_first(loader, skip) if skip else loader:
        seen += 1
        yield seen, batch
