"""Ranks on other machines report through files, not through SQLite.

SQLite's WAL mode needs every process that opens the database on one host (it shares memory
through the ``-shm`` file; https://www.sqlite.org/wal.html), so the ranks of a cluster job must not
open ``runs.sqlite`` over a network file system. Instead each rank process appends its store
writes (metrics, memory samples, events, progress) as JSON lines to its own file under
``<run folder>/relay/``, on the shared file system; the machine that runs the panel folds new lines
into its own store (``ingest``, from ``slurm.refresh``). One writer per file and append-only lines
are safe on NFS; the reader only takes complete lines.

A job's rank uses the relay when ``NEXA_STORE_RELAY`` names its folder (the sbatch script sets it).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

from nexa_core import paths
from nexa_core.runstore import TERMINAL, RunState, RunStore

RELAY_ENV = "NEXA_STORE_RELAY"
RELAY_DIR = "relay"
# What a rank may change in the run row: its progress. Its state, pid and outcome are the
# scheduler's to report (nexa_core/slurm.py).
_RUN_FIELDS = {"last_step", "total_steps"}


def job_store() -> Any:
    """The store a training process writes to: the relay inside a cluster job, else the run store."""
    folder = os.environ.get(RELAY_ENV)
    return RelayStore(Path(folder)) if folder else RunStore()


class RelayStore:
    """The RunStore methods a trainer calls, written as JSON lines to this process's own file."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"{socket.gethostname()}-{os.getpid()}.jsonl"
        self._lock = threading.Lock()  # the trainer and its memory sampler thread share the file

    def _append(self, op: str, **args: Any) -> None:
        line = json.dumps({"op": op, **args}, default=str) + "\n"
        # one whole line in append mode, then close: on NFS close() sends it to the server
        with self._lock, open(self.path, "a", encoding="utf-8") as f:
            f.write(line)

    def get_run(self, run_id: str) -> dict[str, Any]:
        """The panel created the run's row when it submitted the job; a rank cannot read that store."""
        return {"id": run_id, "state": RunState.RUNNING.value, "run_dir": str(paths.run_dir(run_id)),
                "stopped_by": None}  # fmt: skip

    def set_state(self, run_id: str, state: RunState, **fields: Any) -> bool:
        self._append("set_state", run_id=run_id, state=RunState(state).value, **fields)
        return True

    def update_run(self, run_id: str, **fields: Any) -> None:
        self._append("update_run", run_id=run_id, fields=fields)

    def log_metrics(
        self, run_id: str, step: int, values: dict[str, float], wall_time: float | None = None
    ) -> None:
        self._append(
            "log_metrics", run_id=run_id, step=step, values=values, wall_time=wall_time or time.time()
        )

    def log_memory(self, run_id: str, samples: list[dict[str, Any]]) -> None:
        if samples:
            self._append("log_memory", run_id=run_id, samples=samples)

    def add_event(self, run_id: str, message: str, level: str = "info") -> None:
        self._append("add_event", run_id=run_id, message=message, level=level, t=time.time())


def ingest(store: RunStore, run_id: str, folder: Path) -> int:
    """Fold the relay files' new complete lines into ``store``; returns how many were applied.

    Each file's lines and its new offset are written in one transaction, so a crash never applies a
    line twice. Callers serialise ingests of one run (slurm.refresh holds a lock). A rank's terminal
    state is not applied: the scheduler reports how the job ended."""
    if not folder.is_dir():
        return 0
    offsets = store.relay_offsets(run_id)
    applied = 0
    for path in sorted(folder.glob("*.jsonl")):
        start = offsets.get(path.name, 0)
        try:
            with path.open("rb") as f:
                f.seek(start)
                chunk = f.read()
        except OSError:
            continue
        end = chunk.rfind(b"\n") + 1  # a line still being written waits for the next ingest
        if end == 0:
            continue
        records = []
        for raw in chunk[:end].splitlines():
            try:
                records.append(json.loads(raw))
            except ValueError:
                continue  # a damaged line (a disk error) is skipped, not retried forever
        with store.batch():
            for record in records:
                applied += _apply(store, run_id, record)
            store.set_relay_offset(run_id, path.name, start + end)
    return applied


def _apply(store: RunStore, run_id: str, record: dict[str, Any]) -> int:
    op = record.get("op")
    if record.get("run_id") != run_id:  # a file can only speak for its own run
        return 0
    if op == "log_metrics":
        store.log_metrics(run_id, int(record["step"]), record.get("values") or {}, record.get("wall_time"))
    elif op == "log_memory":
        store.log_memory(run_id, list(record.get("samples") or []))
    elif op == "add_event":
        store.add_event(
            run_id, str(record.get("message")), str(record.get("level") or "info"), record.get("t")
        )
    elif op == "update_run":
        fields = {k: v for k, v in (record.get("fields") or {}).items() if k in _RUN_FIELDS}
        if not fields:
            return 0
        store.update_run(run_id, **fields)
    elif op == "set_state" and record.get("state") not in {s.value for s in TERMINAL}:
        store.set_state(run_id, RunState.RUNNING, only_from=(RunState.QUEUED,))
    else:
        return 0
    return 1
