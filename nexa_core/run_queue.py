"""The run queue: launches and comparison techniques that wait for a busy device, kept in the run
store (table ``queue``), so they survive a panel restart and need no browser session.

A queued run is a run row in state ``queued`` plus a queue row (its place in line, the devices it
needs, whether it resumes). Its folder holds its configuration from the moment it is queued, so
starting it later needs nothing else. Order is first in, first out per device: a run starts once
none of its devices is busy and no run ahead of it in line waits for one of them.

Who starts the next run (docs/RELIABILITY.md, "The run queue"): the supervisor of a run that ends
(``nexa_core.supervise``), and ``runner.refresh``, which every page of the panel, ``nexa runs`` and
every launch call, and which first marks a crashed run failed, so a crash never blocks the line.
Both go through ``runner.dispatch`` under the launch lock, with the one-run-per-device check.
Slurm runs are never queued here: the cluster's scheduler queues them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nexa_core.errors import ConfigError
from nexa_core.queue_table import MOVES, Entry, not_queued  # noqa: F401 (not_queued: for the CLI and the Runs page)
from nexa_core.runstore import RunState, RunStore

if TYPE_CHECKING:
    from nexa_core.launch import RunSpec

ACTIONS = ("list", *MOVES, "cancel")


def ready(entries: list[Entry], busy: dict[str, str]) -> list[Entry]:
    """The entries that may start now, in order: none of their devices is busy (``busy``: device ->
    run holding it) or wanted by an entry ahead of them that cannot start yet."""
    taken = dict(busy)
    out = []
    for entry in entries:
        if not any(device in taken for device in entry.devices):
            out.append(entry)
        for device in entry.devices:
            taken.setdefault(device, entry.run_id)
    return out


def waiting_for(entries: list[Entry], busy: dict[str, str]) -> dict[str, list[str]]:
    """run id -> the runs it waits for (holding one of its devices, or ahead of it for one)."""
    taken: dict[str, str] = dict(busy)
    out = {}
    for entry in entries:
        out[entry.run_id] = sorted({taken[d] for d in entry.devices if d in taken})
        for device in entry.devices:
            taken.setdefault(device, entry.run_id)
    return out


def describe(store: RunStore, busy: dict[str, str]) -> list[dict[str, Any]]:
    """The queue as rows for the Runs page and ``nexa runs queue``: position, run, name, devices,
    resume, what it waits for (and that run's state), how long it has waited."""
    entries = store.queue_entries()
    blockers = waiting_for(entries, busy)
    rows = []
    now = time.time()
    for entry in entries:
        run = store.get_run(entry.run_id) or {}
        waits = [f"{b} ({(store.get_run(b) or {}).get('state', 'gone')})" for b in blockers[entry.run_id]]
        rows.append(
            {
                "position": entry.position,
                "run_id": entry.run_id,
                "name": run.get("name") or entry.run_id,
                "devices": ", ".join(entry.devices),
                "resume": entry.resume,
                "waiting_for": ", ".join(waits) or "nothing: it starts at the next refresh",
                "waited_s": now - entry.enqueued_at,
            }
        )
    return rows


def move(store: RunStore, run_id: str, where: str) -> str:
    """Move a waiting run (``where``: up, down, top or bottom) and say where it is now."""
    position = store.queue_move(run_id, where)
    return f"moved {run_id} {where}: now {position} of {len(store.queue_entries())} in the queue"


def cancelled(run_id: str) -> str:
    return f"cancelled {run_id}: it left the queue without starting (state stopped)"


def position(store: RunStore, run_id: str) -> int | None:
    """The run's place in line (1 is next), or None when it is not queued."""
    return next((e.position for e in store.queue_entries() if e.run_id == run_id), None)


def start_due(
    store: RunStore, busy: Callable[[], dict[str, str]], start: Callable[[RunSpec, str], None]
) -> list[str]:
    """Start every queued run whose turn has come, in order (the caller holds the launch lock;
    ``busy`` lists the devices live runs hold, ``start`` starts one run). A run that cannot start
    (its folder gone, no process could be made) is failed with the reason and leaves the line, so
    it never blocks the runs behind it. Returns the ids started."""
    from nexa_core import presets

    started: list[str] = []
    while True:
        due = ready(store.queue_entries(), busy())
        if not due:
            return started
        for entry in due:  # each pass takes at least one run out of the line
            store.queue_remove(entry.run_id)
            run = store.get_run(entry.run_id)
            if run is None or run["state"] != RunState.QUEUED.value:
                continue  # deleted or ended meanwhile
            try:
                start(presets.of_run(Path(run["run_dir"]), entry.run_id, resume=entry.resume), entry.run_id)
            except (ConfigError, OSError) as exc:
                why = "; ".join(exc.problems) if isinstance(exc, ConfigError) else str(exc)
                store.set_state(entry.run_id, RunState.FAILED, reason=f"could not start from the queue: {why}",
                                only_from=(RunState.QUEUED,))  # fmt: skip
            else:
                started.append(entry.run_id)


def cancel(store: RunStore, run_id: str, by: str) -> bool:
    """Take a waiting run out of the line, stopped with the reason (the caller holds the launch
    lock, so the dispatcher is not starting it); whether it was waiting."""
    if not store.queue_remove(run_id):
        return False
    store.set_state(run_id, RunState.STOPPED, reason=f"cancelled by {by} while waiting in the queue",
                    stopped_by=by, only_from=(RunState.QUEUED,))  # fmt: skip
    return True
