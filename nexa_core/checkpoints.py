"""Checkpoint folders: ``<run>/checkpoints/step-N`` written atomically (a temporary folder, fsync,
rename, then the completion marker last), listed complete-only, and what a crash mid-save leaves;
saving and resuming an Accelerate/DeepSpeed state through them (docs/RELIABILITY.md)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nexa_core.errors import ConfigError

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


Event = Callable[..., None]  # event(message, level="info"): the trainer's run-store event log


def save_state(accelerator: Any, output_dir: Path, info: StepInfo, keep_last: int, event: Event) -> Path:
    """Accelerate/DeepSpeed state into ``.tmp-step-N``, then one rename to ``step-N``, then the
    COMPLETE marker, each flushed to disk; then only the last ``keep_last`` complete ones are kept.
    A crash at any point leaves either the previous complete checkpoints untouched or a folder
    without the marker, which resume ignores. Every rank calls it (the save is collective)."""
    acc = accelerator
    root = Path(output_dir) / "checkpoints"
    final = root / f"step-{info.step:07d}"
    tmp = root / f".tmp-step-{info.step:07d}"
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        root.mkdir(parents=True, exist_ok=True)
    acc.wait_for_everyone()
    acc.save_state(str(tmp))  # collective under DeepSpeed: every rank writes its partition
    acc.wait_for_everyone()
    if acc.is_main_process:
        # every rank's files on disk before the rename makes them count (after a power cut a
        # renamed folder could otherwise hold empty files)
        for path in sorted(tmp.rglob("*"), reverse=True):
            fsync_path(path)
        write_durably(tmp / STATE_FILE, json.dumps(info.__dict__))
        fsync_path(tmp)
        fault_pause("before-rename")
        # Re-saving a step (a resumed run reaching it again) replaces it; older checkpoints
        # stay complete meanwhile, so there is always one to resume from.
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        fsync_path(root)
        fault_pause("before-marker")
        write_durably(final / COMPLETE_MARKER, time.strftime("%Y-%m-%dT%H:%M:%S"))
        fsync_path(final)
        for old in checkpoints(output_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
        event(f"checkpoint {final.name} saved")
    acc.wait_for_everyone()
    return final


def load_latest_state(accelerator: Any, output_dir: Path, event: Event) -> StepInfo:
    """Load the newest complete checkpoint that loads; never start over without saying so.

    Partial folders (a crash mid-save) are removed and reported. A complete checkpoint that fails
    to load (a damaged disk, a truncated file) is reported and the next older one tried; if every
    complete one fails the resume is refused (ConfigError). With no complete checkpoint at all (the
    run died before its first save) it returns step 0, with a warning event."""
    from nexa_core.safe_load import weights_only_torch_load  # imports torch: only when resuming

    acc = accelerator
    acc.wait_for_everyone()
    if acc.is_main_process:
        for partial in partial_checkpoints(output_dir):
            shutil.rmtree(partial, ignore_errors=True)
            event(
                f"resume: ignored and removed the partial checkpoint {partial.name} (a save cut short)",
                "warning",
            )
    acc.wait_for_everyone()
    complete = checkpoints(output_dir)
    if not complete:
        event(
            f"resume: no complete checkpoint under {Path(output_dir) / 'checkpoints'}; starting again from step 0",
            "warning",
        )
        return StepInfo(0, 0, 0)
    failures = []
    for ckpt in reversed(complete):
        try:
            info = StepInfo(**json.loads((ckpt / STATE_FILE).read_text()))
            with weights_only_torch_load():  # DeepSpeed would unpickle anything (safe_load.py)
                acc.load_state(str(ckpt))
        except Exception as exc:  # any unreadable checkpoint: say which and why, try the older one
            reason = f"{type(exc).__name__}: {str(exc)[:300]}"
            failures.append(f"{ckpt.name} ({reason})")
            event(
                f"resume: checkpoint {ckpt.name} could not be loaded ({reason}); trying an older one",
                "warning",
            )
            continue
        event(f"resumed from {ckpt.name} (step {info.step})")
        return info
    raise ConfigError(
        [
            f"resume: none of the complete checkpoints under {Path(output_dir) / 'checkpoints'} could be loaded: "
            + "; ".join(failures)
            + ". Start a new run, or restore the checkpoint folder from a backup"
        ]
    )
