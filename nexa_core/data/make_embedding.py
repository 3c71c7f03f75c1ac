"""Generate the bundled paraphrase-pair dataset for in-batch contrastive embedding training.

Each pair is two phrasings of the same intent filled with the same values (equipment, place,
work order...), so the positive shares meaning, not just keywords, with its anchor. Run
``python -m nexa_core.data.make_embedding`` to regenerate ``embedding_*.jsonl`` byte-identically.
"""

from __future__ import annotations

import random
from pathlib import Path

from nexa_core.data._templates import DATA_DIR, TRAIN, VALIDATION, render, sample_values, unique, write_splits

SEED = 4821
SIZES = {TRAIN: 200, VALIDATION: 50}

# intent -> phrasings; every phrasing of an intent uses the same slots.
INTENTS: dict[str, list[str]] = {
    "replaced": [
        "Crew replaced the {E} at {L}.",
        "The {E} at {L} has been swapped out for a new one.",
        "New {E} installed at {L} to replace the old unit.",
    ],
    "outage": [
        "Power has been out on {L} since {TIME}.",
        "Customers at {L} lost electricity at {TIME}.",
        "{L} has had no power from {TIME} onward.",
    ],
    "vegetation": [
        "A {TREE} branch is touching the power line on {L}.",
        "Tree limb from a {TREE} is in contact with the wires at {L}.",
        "Trim the {TREE} on {L}, it is growing into the conductors.",
    ],
    "gas_leak": [
        "Strong gas odor reported near the {GE} at {L}.",
        "Someone smells gas by the {GE} on {L}.",
        "Possible leak at the {GE} on {L}, gas smell reported.",
    ],
    "inspection": [
        "{W} is for inspecting the {E} at {L}.",
        "Inspection of the {E} at {L} is scheduled under {W}.",
        "Please inspect the {E} at {L}; reference {W}.",
    ],
    "billing": [
        "My bill for {A} jumped to {AMT}.",
        "The account at {A} was charged {AMT}, much more than normal.",
        "Why is the bill at {A} {AMT} this month?",
    ],
    "restored": [
        "Power at {L} was restored after {DUR}.",
        "Electricity came back on at {L} following an outage of {DUR}.",
        "Service to {L} is back after being down for {DUR}.",
    ],
    "tripping": [
        "The {EE} at {L} keeps tripping.",
        "Repeated trips on the {EE} serving {L}.",
        "The {EE} at {L} opens again and again and will not hold.",
    ],
    "storm": [
        "Storm knocked down the {EE} on {L}.",
        "High winds brought the {EE} at {L} to the ground.",
        "The {EE} on {L} is down after last night's storm.",
    ],
    "no_access": [
        "Crew could not reach the {E} at {L} for {W} because the gate was locked.",
        "{W} on hold: a locked gate blocks access to the {E} at {L}.",
        "No access to the {E} at {L}; {W} must be rescheduled.",
    ],
}
_NAMES = sorted(INTENTS)


def make_split(split: str, rng: random.Random, exclude: list[dict] = ()) -> list[dict]:
    def make() -> dict:
        anchor, positive = rng.sample(INTENTS[rng.choice(_NAMES)], 2)
        values = sample_values(rng, split)
        return {"anchor": render(anchor, values), "positive": render(positive, values)}

    return unique(make, SIZES[split], f"embedding {split}", exclude)


def generate(out_dir: Path = DATA_DIR) -> list[Path]:
    return write_splits(make_split, SEED, "embedding", out_dir)


if __name__ == "__main__":
    for path in generate():
        print(path)
