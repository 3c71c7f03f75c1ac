"""Generate the bundled instruction-tuning sample for causal language modelling (prompt/completion).

Each record asks one question about a short field report built like the causal-lm paragraphs
(make_causal_lm.py) and answers it from the same slot values: the work order, the location, or the
time the crew arrived. The answer is short and exact, so a model that learns it shows a falling loss
within a few dozen steps. Run ``python -m nexa_core.data.make_instructions`` to regenerate
``causal_lm_instructions_*.jsonl`` byte-identically.
"""

from __future__ import annotations

import random
from pathlib import Path

from nexa_core.data._templates import DATA_DIR, TRAIN, VALIDATION, render, sample_values, unique, write_splits
from nexa_core.data.make_causal_lm import report

SEED = 4417
SIZES = {TRAIN: 240, VALIDATION: 60}
# (question, answer template): the answer is one slot of the report, so it is always in the prompt.
QUESTIONS = [
    ("What is the work order number?", "{W}"),
    ("Where did the crew work?", "{L}"),
    ("When did the crew arrive?", "{TIME}"),
]


def make_split(split: str, rng: random.Random, exclude: list[dict] = ()) -> list[dict]:
    def make() -> dict:
        values = sample_values(rng, split)
        text = report(rng, values)
        question, answer = rng.choice(QUESTIONS)
        return {
            "prompt": f"Field report: {text}\nQuestion: {question}\nAnswer:",
            "completion": " " + render(answer, values),
        }

    return unique(make, SIZES[split], f"instructions {split}", exclude)


def generate(out_dir: Path = DATA_DIR) -> list[Path]:
    return write_splits(make_split, SEED, "causal_lm_instructions", out_dir)


if __name__ == "__main__":
    for path in generate():
        print(path)
