"""Generate the bundled field-report paragraphs for causal language modelling.

A paragraph is one opening, arrival, finding, action and closing sentence, all about the same job
(one set of slot values). Run ``python -m nexa_core.data.make_causal_lm`` to regenerate
``causal_lm_*.jsonl`` byte-identically.
"""

from __future__ import annotations

import random
from pathlib import Path

from nexa_core.data._templates import DATA_DIR, TRAIN, VALIDATION, render, sample_values, unique, write_splits

SEED = 7730
SIZES = {TRAIN: 200, VALIDATION: 50}

OPENINGS = ["Field report for {W}.", "Crew log, {W}.", "Daily summary for {W}.", "Job notes, {W}."]
ARRIVALS = [
    "Crew arrived at {L} at {TIME}.",
    "Troubleshooter on site at {L} by {TIME}.",
    "Two-person crew reached {L} around {TIME}.",
]
# finding -> actions that make sense after it, so paragraphs read as one coherent job.
FINDINGS: dict[str, list[str]] = {
    "Found the {E} leaking and the housing badly corroded.": [
        "Replaced the {E} and tested it before closing in.",
        "Installed a temporary bypass until a permanent repair is scheduled.",
    ],
    "The {EE} had a blown fuse and scorch marks on the bushing.": [
        "Replaced the fuse, cleaned the bushing and re-energized after {DUR}.",
        "Replaced the {EE} and tested it before closing in.",
    ],
    "A {TREE} limb was lying across the {EE}.": [
        "Trimmed back the vegetation and re-energized the line.",
        "Removed the limb, inspected the {EE} and restored service after {DUR}.",
    ],
    "Inspection showed the {E} in good condition with no visible damage.": [
        "Took photos and measurements for the engineering review.",
        "Logged the readings and closed the inspection.",
    ],
    "Gas odor detected near the {GE}; readings confirmed a small leak.": [
        "Tightened the fittings and rechecked with the gas detector.",
        "Isolated the {GE}, made repairs and restored gas service after {DUR}.",
    ],
    "The {EE} was tripped open after an animal contact.": [
        "Installed wildlife guards and closed the {EE} back in.",
        "Isolated the section, made repairs and restored service after {DUR}.",
    ],
}
CLOSINGS = [
    "Site left clean and safe.",
    "No customer complaints at time of departure.",
    "Follow-up needed: schedule a return visit for the permanent repair.",
    "Job complete, crew released.",
    "Traffic control removed and road reopened.",
]
_FINDINGS = list(FINDINGS)


def make_split(split: str, rng: random.Random, exclude: list[dict] = ()) -> list[dict]:
    def make() -> dict:
        return {"text": report(rng, sample_values(rng, split))}

    return unique(make, SIZES[split], f"causal-lm {split}", exclude)


def report(rng: random.Random, values: dict[str, str]) -> str:
    """One five-sentence field report about the job ``values`` describe (the instruction sample
    asks questions about the same reports)."""
    finding = rng.choice(_FINDINGS)
    parts = [rng.choice(OPENINGS), rng.choice(ARRIVALS), finding, rng.choice(FINDINGS[finding])]
    parts.append(rng.choice(CLOSINGS))
    return " ".join(render(part, values) for part in parts)


def generate(out_dir: Path = DATA_DIR) -> list[Path]:
    return write_splits(make_split, SEED, "causal_lm", out_dir)


if __name__ == "__main__":
    for path in generate():
        print(path)
