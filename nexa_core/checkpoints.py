"""Checkpoint folders: ``<run>/checkpoints/step-N`` written atomically (a temporary folder, fsync,
rename, then the completion marker last), listed complete-only, and what a crash mid-save leaves."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("nexa.checkpoints")
COMPLETE_MARKER = "COMPLETE"
STATE_FILE = "nexa_state.json"


@dataclass
class StepInfo:
    step: int
    epoch: int
    batches_into_epoch: int


def checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first. A folder without the marker (a crash mid-save) is ignored."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    done = [
        p
        for p in root.iterdir()
        if p.is_dir() and p.name.startswith("step-") and (p / COMPLETE_MARKER).exists()
    ]
    return sorted(done, key=lambda p: int(p.name.split("-")[1]))


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = checkpoints(run_dir)
    return found[-1] if found else None


def partial_checkpoints(run_dir: Path) -> list[Path]:
    """What a crash mid-save leaves: ``.tmp-step-N`` folders (killed before the rename) and
    ``step-N`` folders without the marker (killed between the rename and the marker)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(
        p
        for p in root.iterdir()
        if p.is_dir()
        and (
            p.name.startswith(".tmp-step-")
            or (p.name.startswith("step-") and not (p / COMPLETE_MARKER).exists())
        )
    )


def fsync_path(path: Path) -> None:
    """Flush a file or a folder entry to disk: a rename or a marker must survive a power cut, not
    only a killed process (the page cache survives kill -9, not a reboot)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def fault_pause(where: str) -> None:
    """TEST-ONLY fault injection: with ``NEXA_TEST_PAUSE_IN_SAVE`` set to ``before-rename`` or
    ``before-marker`` the save stops at that point (for up to an hour) so a test can kill -9 the
    trainer exactly there. Unset, as in every real run, it does nothing."""
    if os.environ.get("NEXA_TEST_PAUSE_IN_SAVE") == where:
        log.warning("NEXA_TEST_PAUSE_IN_SAVE=%s: pausing inside the checkpoint save (test only)", where)
        time.sleep(3600)
