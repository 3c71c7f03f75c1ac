"""Shared vocabularies and helpers for the synthetic utility-domain data generators.

Every value list is split into ``seen`` (train and validation) and ``unseen`` (validation only),
so a model scored on the validation split has to generalise to new equipment, streets and towns.
Generation uses ``random.Random(seed)`` only; its ``choice``/``randint``/``random`` sequences are
stable across Python 3 releases, which keeps the shipped files reproducible byte for byte.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent
TRAIN, VALIDATION = "train", "validation"


@dataclass(frozen=True)
class Vocab:
    seen: tuple[str, ...]
    unseen: tuple[str, ...] = ()

    def pick(self, rng: random.Random, split: str) -> str:
        # Validation draws held-out values half of the time so they are well represented.
        if split == VALIDATION and self.unseen and rng.random() < 0.5:
            return rng.choice(self.unseen)
        return rng.choice(self.seen)


VOLTAGES = Vocab(("4 kV", "12 kV", "21 kV", "115 kV", "230 kV"), ("34.5 kV", "60 kV"))
ELECTRIC = Vocab(
    (
        "recloser",
        "transformer",
        "pole-mounted transformer",
        "padmount transformer",
        "circuit breaker",
        "fuse cutout",
        "capacitor bank",
        "voltage regulator",
        "sectionalizer",
        "lightning arrester",
        "switchgear",
        "underground cable",
        "overhead conductor",
        "crossarm",
        "insulator",
    ),
    ("disconnect switch", "network protector", "current transformer", "bus duct"),
)
GAS = Vocab(
    ("gas regulator", "service valve", "meter set", "gas main", "service riser", "curb valve"),
    ("regulator station", "excess flow valve", "odorizer"),
)
STREETS = Vocab(
    (
        "Oak Street",
        "Main Street",
        "Mission Boulevard",
        "El Camino Real",
        "Market Street",
        "Elm Avenue",
        "Shoreline Drive",
        "Pine Street",
        "Broadway",
        "Cedar Lane",
        "Howard Street",
        "Bayshore Road",
    ),
    ("Alvarado Road", "Sutter Street", "Monterey Highway", "Willow Pass Road"),
)
SUBSTATIONS = Vocab(
    ("Hillcrest", "Bayview", "Riverside", "Ridgeway", "Mill Creek", "Westgate", "Lakeside", "Sunset"),
    ("Canyon Park", "Harbor", "Foothill"),
)
CITIES = Vocab(
    ("Fresno", "San Jose", "Oakland", "Sacramento", "Bakersfield", "Stockton", "Santa Rosa", "Chico"),
    ("Eureka", "Redding", "Merced", "Vacaville"),
)
TREES = Vocab(("eucalyptus", "oak", "pine", "palm", "redwood", "cypress"), ("sycamore", "cottonwood"))
TIMES = Vocab(("6 am", "7:30 am", "noon", "2 pm", "4:15 pm", "10 pm", "midnight"), ("5:45 am", "9 pm"))
DURATIONS = Vocab(("two hours", "45 minutes", "three hours", "most of the day"), ("six hours", "overnight"))


def _with_id(rng: random.Random, words: list[str]) -> list[str]:
    return words + [f"#{rng.randint(100, 99999)}"] if rng.random() < 0.2 else words


def electric_equipment(rng: random.Random, split: str) -> list[str]:
    """An electric EQUIPMENT mention; a voltage such as "12 kV" is part of it by design (see README)."""
    words = VOLTAGES.pick(rng, split).split() if rng.random() < 0.5 else []
    return _with_id(rng, words + ELECTRIC.pick(rng, split).split())


def gas_equipment(rng: random.Random, split: str) -> list[str]:
    return _with_id(rng, GAS.pick(rng, split).split())


def equipment(rng: random.Random, split: str) -> list[str]:
    return electric_equipment(rng, split) if rng.random() < 0.7 else gas_equipment(rng, split)


def location(rng: random.Random, split: str) -> list[str]:
    kind = rng.randrange(7)
    if kind == 0:
        return STREETS.pick(rng, split).split()
    if kind == 1:
        return [str(rng.randint(1, 9999))] + STREETS.pick(rng, split).split()
    if kind == 2:
        return SUBSTATIONS.pick(rng, split).split() + ["substation"]
    if kind == 3:
        return ["Feeder", str(rng.randint(1000, 2999))]
    if kind == 4:
        return CITIES.pick(rng, split).split()
    if kind == 5:
        return CITIES.pick(rng, split).split() + ["service", "center"]
    return STREETS.pick(rng, split).split() + ["and"] + STREETS.pick(rng, split).split()


def address(rng: random.Random, split: str) -> list[str]:
    """A customer address: the LOCATION kind that fits billing and customer reports."""
    return [str(rng.randint(1, 9999))] + STREETS.pick(rng, split).split()


def work_order(rng: random.Random, split: str) -> list[str]:
    number = str(rng.randint(100000, 999999))
    forms = ["WO-{}", "WO {}", "work order {}", "WO#{}"]
    if split == VALIDATION:
        forms.append("W.O. {}")  # a spelling never seen in training
    return rng.choice(forms).format(number).split()


def _vocab_slot(vocab: Vocab) -> Callable[[random.Random, str], list[str]]:
    return lambda rng, split: vocab.pick(rng, split).split()


# slot -> (entity type or None, generator); entity slots get B-/I- tags in the NER data.
SLOTS: dict[str, tuple[str | None, Callable[[random.Random, str], list[str]]]] = {
    "{E}": ("EQUIPMENT", equipment),  # electric or gas
    "{EE}": ("EQUIPMENT", electric_equipment),
    "{GE}": ("EQUIPMENT", gas_equipment),
    "{L}": ("LOCATION", location),
    "{A}": ("LOCATION", address),
    "{W}": ("WORK_ORDER", work_order),
    "{TREE}": (None, _vocab_slot(TREES)),
    "{TIME}": (None, _vocab_slot(TIMES)),
    "{DUR}": (None, _vocab_slot(DURATIONS)),
    "{N}": (None, lambda rng, split: [str(rng.randint(3, 400))]),
    "{AMT}": (None, lambda rng, split: [f"${rng.randint(40, 900)}.{rng.randint(0, 99):02d}"]),
}


def fill(template: str, rng: random.Random, split: str) -> tuple[list[str], list[str]]:
    """Fill a space-separated template; returns (words, BIO tags)."""
    words: list[str] = []
    tags: list[str] = []
    for part in template.split():
        if part not in SLOTS:
            words.append(part)
            tags.append("O")
            continue
        label, make = SLOTS[part]
        value = make(rng, split)
        words += value
        tags += ["O"] * len(value) if label is None else [f"B-{label}"] + [f"I-{label}"] * (len(value) - 1)
    return words, tags


def detokenize(words: Iterable[str]) -> str:
    """Join words into natural text: no space before punctuation."""
    return re.sub(r" ([.,;:?!])", r"\1", " ".join(words))


def unique(make: Callable[[], dict], count: int, name: str, exclude: Iterable[dict] = ()) -> list[dict]:
    """Call ``make`` until ``count`` records with distinct JSON are collected (bounded attempts)."""
    seen = {json.dumps(r, sort_keys=True) for r in exclude}  # e.g. keep validation out of train
    out: list[dict] = []
    for _ in range(count * 50):
        record = make()
        key = json.dumps(record, sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(record)
            if len(out) == count:
                return out
    raise RuntimeError(f"{name}: could not make {count} distinct records; add templates")


def write_splits(make_split: Callable[..., list[dict]], seed: int, stem: str, out_dir: Path) -> list[Path]:
    """Train then validation from one seeded generator (validation excludes train records), as
    ``<stem>_train.jsonl`` and ``<stem>_validation.jsonl``."""
    rng = random.Random(seed)
    train = make_split(TRAIN, rng)
    validation = make_split(VALIDATION, rng, exclude=train)
    return [
        write_jsonl(Path(out_dir) / f"{stem}_train.jsonl", train),
        write_jsonl(Path(out_dir) / f"{stem}_validation.jsonl", validation),
    ]


def write_jsonl(path: Path, records: Iterable[dict]) -> Path:
    """Write records as UTF-8 JSON Lines with "\\n" endings (identical bytes on every platform)."""
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode("utf-8"))
    return path


def sample_values(rng: random.Random, split: str) -> dict[str, str]:
    """One value per slot, so several sentences can talk about the same job coherently."""
    return {slot: " ".join(make(rng, split)) for slot, (_, make) in SLOTS.items()}


def render(template: str, values: dict[str, str]) -> str:
    """Substitute ``{SLOT}`` markers in natural text (no tagging)."""
    return re.sub(r"\{[A-Z]+\}", lambda m: values[m.group()], template)
