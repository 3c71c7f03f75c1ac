"""Generate the bundled maintenance-ticket classification dataset (4 labels).

Run ``python -m nexa_core.data.make_classification`` to regenerate ``classification_*.jsonl``
byte-identically. Labels are balanced: each gets the same number of distinct records.
"""

from __future__ import annotations

import random
from pathlib import Path

from nexa_core.data._templates import DATA_DIR, TRAIN, VALIDATION, detokenize, fill, unique, write_splits

SEED = 2024
SIZES = {TRAIN: 200, VALIDATION: 50}

TEMPLATES: dict[str, list[str]] = {
    "outage": [
        "Customers on {A} have been without power since {TIME} .",
        "Whole block around {L} is dark , please send a crew .",
        "Power went out at {A} about {DUR} ago and has not come back .",
        "{N} customers out on {L} ; estimated restoration time needed .",
        "No gas service at {A} since {TIME} , stove and heater will not light .",
        "Lights keep going off and on at {A} , now completely out .",
        "Outage reported near {L} , neighbors also have no electricity .",
        "Street lights and homes on {L} lost power at {TIME} .",
        "Power restored at {L} after {DUR} but it dropped again .",
    ],
    "vegetation": [
        "A {TREE} branch is resting on the line along {L} .",
        "Tree limbs growing into the wires near {L} need trimming .",
        "Overgrown {TREE} touching the {EE} at {L} .",
        "Fallen {TREE} tree leaning on conductors at {L} after the wind .",
        "Request clearance pruning around the {EE} on {L} .",
        "Vines have climbed the pole at {L} and reached the {EE} .",
        "Dead {TREE} near {L} could fall onto the lines .",
        "Brush under the lines at {L} is a fire risk , please clear .",
        "Palm fronds blowing into the wires on {L} caused sparks .",
    ],
    "equipment_failure": [
        "The {EE} at {L} is leaking oil .",
        "Loud humming from the {EE} on {L} , casing looks scorched .",
        "The {E} at {L} failed inspection under {W} .",
        "Cracked {E} found on {L} during patrol .",
        "Smoke seen coming from the {EE} near {L} .",
        "The {EE} at {L} keeps tripping and will not reset .",
        "Corrosion has eaten through the {E} at {L} .",
        "Broken {E} on {L} ; replacement requested under {W} .",
        "Gas smell near the {GE} at {L} , fitting appears loose .",
    ],
    "billing": [
        "My bill for {A} is {AMT} , which is far higher than usual .",
        "I was charged {AMT} twice this month for the account at {A} .",
        "Meter reading on my statement does not match the meter at {A} .",
        "Please explain the {AMT} late fee on my last bill .",
        "Autopay did not go through and I was billed {AMT} extra .",
        "Estimated bill used instead of an actual read at {A} .",
        "Requesting a payment plan for the {AMT} balance .",
        "New account at {A} shows charges from the previous tenant .",
        "Refund of my {AMT} deposit has not arrived .",
    ],
}
LABELS = sorted(TEMPLATES)


def make_split(split: str, rng: random.Random, exclude: list[dict] = ()) -> list[dict]:
    records: list[dict] = []
    for i, label in enumerate(LABELS):
        count = SIZES[split] // len(LABELS) + (i < SIZES[split] % len(LABELS))

        def make(label: str = label) -> dict:
            words, _ = fill(rng.choice(TEMPLATES[label]), rng, split)
            return {"text": detokenize(words), "label": label}

        records += unique(make, count, f"classification {split} {label}", exclude)
    rng.shuffle(records)  # interleave labels so any prefix of the file is roughly balanced
    return records


def generate(out_dir: Path = DATA_DIR) -> list[Path]:
    return write_splits(make_split, SEED, "classification", out_dir)


if __name__ == "__main__":
    for path in generate():
        print(path)
