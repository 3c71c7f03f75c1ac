"""Generate the bundled utility-domain NER dataset (EQUIPMENT, LOCATION, WORK_ORDER; BIO tags).

Run ``python -m nexa_core.data.make_ner_utility`` to regenerate ``ner_utility_*.jsonl`` in place;
the output is byte-identical on every run (fixed seed, no clock, no hash-order dependence).
"""

from __future__ import annotations

import random
from pathlib import Path

from nexa_core.data._templates import DATA_DIR, TRAIN, VALIDATION, fill, unique, write_splits

SEED = 1104
SIZES = {TRAIN: 400, VALIDATION: 100}
LABELS = ["O", "B-EQUIPMENT", "I-EQUIPMENT", "B-LOCATION", "I-LOCATION", "B-WORK_ORDER", "I-WORK_ORDER"]

TEMPLATES = [
    "Crew replaced the {E} on {L} near {L} under {W} .",
    "{W} : inspect the {E} at {L} .",
    "Lineman reported a leaking {EE} behind {L} .",
    "Scheduled maintenance on the {E} at {L} is tracked as {W} .",
    "Please close {W} after the {EE} at {L} is re-energized .",
    "Vegetation contact on the {EE} along {L} ; see {W} .",
    "The {EE} tripped twice overnight at {L} .",
    "Gas crew isolated the {GE} at {L} and opened {W} .",
    "Found a cracked {EE} on the pole near {L} .",
    "{W} covers replacement of the {E} serving {L} .",
    "Customer at {A} reports flicker ; check the {EE} .",
    "Troubleshooter dispatched to {L} for a blown {EE} .",
    "Install a new {E} at {L} per {W} .",
    "Emergency {W} issued after the {E} failed near {L} .",
    "Patrol of {L} found no damage to the {E} .",
    "Replace the {E} and the {E} at {L} under {W} .",
    "Switching order : open the {EE} at {L} before work on {W} begins .",
    "Infrared scan flagged a hot {EE} at {L} .",
    "The {E} at {L} was tested and returned to service .",
    "Crew from {L} will swap the {E} tomorrow morning .",
    "Leak survey near {L} found a damaged {GE} ; {W} created .",
    "Work on {W} is delayed because the {E} at {L} is inaccessible .",
    "Oil sample taken from the {EE} at {L} .",
    "Relocate the {E} from {L} to {L} as part of {W} .",
    "Storm damage : downed {EE} blocking {L} .",
    "No access to the {E} at {L} , gate locked ; reschedule {W} .",
    "Completed {W} : {E} replaced at {L} .",
    "Outage on {L} traced to a failed {EE} .",
    "Verify grounding of the {EE} at {L} .",
    "Animal contact on the {EE} near {L} caused the outage .",
    "All crews cleared the area safely .",
    "Waiting on materials before the job can resume .",
]
# Sentence shapes used only for validation, so a model cannot just memorise the templates.
VALIDATION_ONLY = [
    "Per {W} , the {E} near {L} needs a new foundation .",
    "Hot stick crew energized the {EE} on {L} this afternoon .",
    "Can someone confirm whether {W} includes the {E} at {L} ?",
    "Traffic control is required at {L} while the {E} is lifted .",
]


def make_split(split: str, rng: random.Random, exclude: list[dict] = ()) -> list[dict]:
    templates = TEMPLATES + (VALIDATION_ONLY if split == VALIDATION else [])

    def make() -> dict:
        tokens, tags = fill(rng.choice(templates), rng, split)
        return {"tokens": tokens, "ner_tags": tags}

    return unique(make, SIZES[split], f"ner {split}", exclude)


def generate(out_dir: Path = DATA_DIR) -> list[Path]:
    return write_splits(make_split, SEED, "ner_utility", out_dir)


if __name__ == "__main__":
    for path in generate():
        print(path)
