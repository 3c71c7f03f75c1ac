"""The run queue's table in the run store (schema v5) and its SQL, mixed into RunStore. What the
queue means (order, who starts the next run) is in nexa_core/run_queue.py."""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from nexa_core.errors import ConfigError

# Schema v5 (runstore._prepare creates it for a new store and for an older one).
QUEUE_SCHEMA = """
CREATE TABLE IF NOT EXISTS queue (
    run_id TEXT PRIMARY KEY, position INTEGER NOT NULL, devices_json TEXT NOT NULL,
    resume INTEGER NOT NULL DEFAULT 0, enqueued_at REAL NOT NULL
)
"""
MOVES = ("up", "down", "top", "bottom")


@dataclass(frozen=True)
class Entry:
    """One queued run: its place in line (1 is next), what it needs, whether it resumes."""

    run_id: str
    position: int
    devices: tuple[str, ...]
    resume: bool
    enqueued_at: float


class QueueTable:
    """The queue's SQL, mixed into RunStore (which provides ``_connect`` and ``_write``)."""

    _connect: Any
    _write: Any

    def queue_entries(self) -> list[Entry]:
        """The queue in order, numbered from 1 (empty in an older store opened read-only)."""
        with self._connect() as conn:
            try:
                rows = conn.execute(
                    "SELECT run_id, devices_json, resume, enqueued_at FROM queue ORDER BY position, enqueued_at"
                ).fetchall()
            except sqlite3.OperationalError as exc:
                if "no such table" not in str(exc):
                    raise
                rows = []
        return [
            Entry(r[0], i, tuple(json.loads(r[1])), bool(r[2]), r[3]) for i, r in enumerate(rows, start=1)
        ]

    def queue_add(self, run_id: str, devices: list[str], resume: bool = False) -> int:
        """Append the run to the end of the line; returns its position (1 is next)."""
        with self._write() as conn:
            last = conn.execute("SELECT COALESCE(MAX(position), 0) FROM queue").fetchone()[0]
            conn.execute(
                "INSERT INTO queue VALUES (?, ?, ?, ?, ?)",
                (run_id, last + 1, json.dumps(list(devices)), int(resume), time.time()),
            )
            return conn.execute("SELECT COUNT(*) FROM queue").fetchone()[0]

    def queue_remove(self, run_id: str) -> bool:
        """Take the run out of the line; whether it was in it."""
        with self._write() as conn:
            return conn.execute("DELETE FROM queue WHERE run_id = ?", (run_id,)).rowcount > 0

    def queue_move(self, run_id: str, move: str) -> int:
        """Move the run one place up or down, or to the top or the bottom, in one transaction;
        returns its new position. A run that is not queued is a ConfigError naming it."""
        if move not in MOVES:
            raise ConfigError([f"move: {move!r} is not a queue move; choose one of {', '.join(MOVES)}"])
        with self._write() as conn:
            order = [r[0] for r in conn.execute("SELECT run_id FROM queue ORDER BY position, enqueued_at")]
            if run_id not in order:
                raise ConfigError([not_queued(run_id)])
            i = order.index(run_id)
            order.pop(i)
            where = {"up": max(i - 1, 0), "down": i + 1, "top": 0, "bottom": len(order)}[move]
            order.insert(where, run_id)
            _renumber(conn, order)
            return order.index(run_id) + 1


def _renumber(conn: sqlite3.Connection, order: list[str]) -> None:
    conn.executemany("UPDATE queue SET position = ? WHERE run_id = ?", list(enumerate(order, start=1)))


def not_queued(run_id: str) -> str:
    return f"run_id: {run_id!r} is not waiting in the queue (see `nexa runs queue`); a run that started is stopped instead"
