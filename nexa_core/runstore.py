"""The run store: one SQLite file shared by trainers (subprocesses), the app and the CLI.

WAL mode lets readers run while a trainer writes; every write is a short ``BEGIN IMMEDIATE``
transaction (the write lock is taken up front, so no reader-to-writer upgrade can deadlock) with
a 30 s busy timeout. Metric rows are keyed by (run, step, metric): a resumed run rewrites them.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Any
from urllib.parse import quote

from nexa_core import paths
from nexa_core.errors import ConfigError
from nexa_core.queue_table import QUEUE_SCHEMA, QueueTable

SCHEMA_VERSION = 5
SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY, name TEXT, kind TEXT DEFAULT 'train', state TEXT NOT NULL,
    spec_json TEXT, command_json TEXT, run_dir TEXT, pid INTEGER, pid_create_time REAL,
    created_at REAL, started_at REAL, ended_at REAL, exit_code INTEGER, reason TEXT,
    stopped_by TEXT, estimate_json TEXT, gpus_json TEXT, last_step INTEGER, total_steps INTEGER
);
CREATE TABLE IF NOT EXISTS metrics (
    run_id TEXT, step INTEGER, name TEXT, value REAL, wall_time REAL,
    PRIMARY KEY (run_id, step, name)
);
CREATE TABLE IF NOT EXISTS memory (
    run_id TEXT, t REAL, rank INTEGER, host TEXT, step INTEGER, rss_bytes INTEGER,
    gpu_index INTEGER, gpu_allocated_bytes INTEGER, gpu_reserved_bytes INTEGER, nvml_used_bytes INTEGER
);
CREATE INDEX IF NOT EXISTS memory_run_t ON memory (run_id, t);
-- one metric's curve without scanning the run's other metrics (the Monitor page reads by name)
CREATE INDEX IF NOT EXISTS metrics_run_name ON metrics (run_id, name, step, value, wall_time);
CREATE TABLE IF NOT EXISTS events (run_id TEXT, t REAL, level TEXT, message TEXT);
CREATE INDEX IF NOT EXISTS events_run ON events (run_id, t);
-- v3: runs submitted to a cluster scheduler (nexa_core/slurm.py), and how far each relay file of a
-- job's ranks has been folded into this store (nexa_core/relay.py)
CREATE TABLE IF NOT EXISTS jobs (
    run_id TEXT PRIMARY KEY, scheduler TEXT, job_id TEXT, partition TEXT, nodes INTEGER, node_list TEXT,
    sched_state TEXT, sched_reason TEXT, request_json TEXT, submitted_at REAL, polled_at REAL
);
CREATE TABLE IF NOT EXISTS relay_offsets (
    run_id TEXT, source TEXT, offset INTEGER, PRIMARY KEY (run_id, source)
);
"""
_RUN_COLUMNS = {
    "name", "kind", "state", "spec", "command", "run_dir", "pid", "pid_create_time", "created_at", "started_at",
    "ended_at", "exit_code", "reason", "stopped_by", "estimate", "gpus", "last_step", "total_steps", "tags", "note",
}  # fmt: skip
_JSON_COLUMNS = {"spec", "command", "estimate", "gpus", "tags"}
_JOB_COLUMNS = {
    "scheduler", "job_id", "partition", "nodes", "node_list", "sched_state", "sched_reason", "request",
    "submitted_at", "polled_at",
}  # fmt: skip
_MEMORY_COLUMNS = "run_id t rank host step rss_bytes gpu_index gpu_allocated_bytes gpu_reserved_bytes nvml_used_bytes".split()


class RunState(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    STOPPED = "stopped"

    def __str__(self) -> str:
        return self.value


TERMINAL = {RunState.SUCCEEDED, RunState.FAILED, RunState.STOPPED}


class RunStore(QueueTable):
    """Runs, metrics, memory samples and events in one SQLite file; safe for many processes at once.
    The run queue's table and its SQL are in nexa_core/queue_table.py."""

    def __init__(self, path: Path | str | None = None) -> None:
        self.path = Path(path) if path is not None else paths.store_path()
        self._batch = threading.local()  # the connection of a batch() in progress, per thread

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Every call in the block (in this thread) shares one connection and one write transaction:
        all of its writes land, or none do (the relay's fold of a file and its new offset)."""
        with self._connect() as conn, _transaction(conn):
            self._batch.conn = conn
            try:
                yield
            finally:
                self._batch.conn = None

    @property
    def read_only(self) -> bool:
        """Whether this process can read the store but not write it (a read-only NEXA_HOME or file):
        runs can then be listed and shown, not started or changed."""
        return self.path.is_file() and not (
            os.access(self.path, os.W_OK) and os.access(self.path.parent, os.W_OK)
        )

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """A short-lived connection in WAL mode; creates the schema when the file lacks it. A store
        that cannot be used (damaged, a folder, read-only for a write) is a ConfigError saying so.
        Inside ``batch()`` the batch's connection is reused."""
        batch = getattr(self._batch, "conn", None)
        if batch is not None:
            yield batch
            return
        if self.path.is_dir():
            raise ConfigError([f"run store ({self.path}): is a folder, not a file; move it away"])
        read_only = self.read_only
        try:
            conn = (
                _open_read_only(self.path)
                if read_only
                else sqlite3.connect(self.path, timeout=30, isolation_level=None)
            )
        except sqlite3.Error as exc:
            raise ConfigError([_store_problem(self.path, exc) or f"run store ({self.path}): {exc}"]) from None
        try:
            conn.row_factory = sqlite3.Row
            if not read_only:
                _prepare(conn)
            yield conn
        except sqlite3.DatabaseError as exc:
            problem = _store_problem(self.path, exc)
            if problem is None:  # an integrity error, a lock held too long: the caller's business
                raise
            raise ConfigError([problem]) from None
        finally:
            conn.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        if getattr(self._batch, "conn", None) is not None:  # already inside batch()'s transaction
            with self._connect() as conn:
                yield conn
            return
        with self._connect() as conn, _transaction(conn):
            yield conn

    # ---------------------------------------------------------------- runs
    def create_run(
        self,
        run_id: str,
        *,
        name: str,
        spec: dict[str, Any],
        run_dir: str,
        kind: str = "train",
        state: RunState = RunState.QUEUED,
        estimate: dict[str, Any] | None = None,
        command: list[str] | None = None,
        gpus: list[int] | None = None,
    ) -> None:
        """Insert a new run (an existing id raises sqlite3.IntegrityError); created ``running`` sets
        ``started_at``, created in a terminal state sets ``ended_at``."""
        state, now = RunState(state), time.time()
        with self._write() as conn:
            conn.execute(
                "INSERT INTO runs (id, name, kind, state, spec_json, command_json, run_dir, created_at, started_at,"
                " ended_at, estimate_json, gpus_json, last_step) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0)",
                (run_id, name, kind, state.value, _dump(spec), _dump(command), run_dir, now,
                 now if state is RunState.RUNNING else None, now if state in TERMINAL else None,
                 _dump(estimate), _dump(gpus)),
            )  # fmt: skip

    def update_run(self, run_id: str, **fields: Any) -> None:
        """Set whitelisted columns; ``spec``/``command``/``estimate``/``gpus`` (or their ``*_json``
        names) are stored as JSON."""
        fields = {
            k.removesuffix("_json") if k.removesuffix("_json") in _JSON_COLUMNS else k: v
            for k, v in fields.items()
        }
        unknown = set(fields) - _RUN_COLUMNS
        if unknown:
            raise ValueError(f"unknown run field(s): {sorted(unknown)}")
        if not fields:
            return
        if "state" in fields:
            fields["state"] = RunState(fields["state"])
        cols = [f"{k}_json" if k in _JSON_COLUMNS else k for k in fields]
        values = [
            _dump(v) if k in _JSON_COLUMNS else (v.value if isinstance(v, Enum) else v)
            for k, v in fields.items()
        ]
        with self._write() as conn:
            conn.execute(
                f"UPDATE runs SET {', '.join(c + ' = ?' for c in cols)} WHERE id = ?", (*values, run_id)
            )

    def set_state(
        self,
        run_id: str,
        state: RunState,
        *,
        reason: str | None = None,
        exit_code: int | None = None,
        stopped_by: str | None = None,
        only_from: tuple[RunState, ...] | None = None,
    ) -> bool:
        """Move a run to ``state``. A terminal state sets ``ended_at`` (the first time) and keeps outcome
        fields already recorded unless given anew; the first ``running`` sets ``started_at``; a
        non-terminal state (a resume) clears ``ended_at`` and the previous outcome. With
        ``only_from`` the change happens only if the run is in one of those states, checked in the
        same statement (so a run that ended meanwhile is never overwritten); returns whether it did."""
        state, now = RunState(state), time.time()
        keep = "COALESCE(?, {0})" if state in TERMINAL else "?"
        where, args = "id = ?", [run_id]
        if only_from is not None:
            where += f" AND state IN ({', '.join('?' * len(only_from))})"
            args += [RunState(s).value for s in only_from]
        with self._write() as conn:
            cursor = conn.execute(
                f"UPDATE runs SET state = ?, reason = {keep.format('reason')},"
                f" exit_code = {keep.format('exit_code')}, stopped_by = {keep.format('stopped_by')},"
                " started_at = CASE WHEN ? AND started_at IS NULL THEN ? ELSE started_at END,"
                f" ended_at = CASE WHEN ? THEN COALESCE(ended_at, ?) END WHERE {where}",
                (state.value, reason, exit_code, stopped_by, state is RunState.RUNNING, now,
                 state in TERMINAL, now, *args),
            )  # fmt: skip
            return cursor.rowcount > 0

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        """The run's row with JSON columns decoded into ``spec``, ``command``, ``estimate``, ``gpus``."""
        with self._connect() as conn:
            row = conn.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        return _run_dict(row) if row else None

    def list_runs(self, limit: int = 200, state: RunState | str | None = None) -> list[dict[str, Any]]:
        """Runs, newest first, optionally only those in ``state``."""
        query, args = "SELECT * FROM runs", []
        if state is not None:
            query, args = query + " WHERE state = ?", [RunState(state).value]
        with self._connect() as conn:
            rows = conn.execute(
                query + " ORDER BY created_at DESC, rowid DESC LIMIT ?", (*args, limit)
            ).fetchall()
        return [_run_dict(r) for r in rows]

    def delete_run(self, run_id: str) -> None:
        """Remove the run and its metrics, memory samples and events (not its folder)."""
        with self._write() as conn:
            for table, key in (
                ("runs", "id"),
                ("metrics", "run_id"),
                ("memory", "run_id"),
                ("events", "run_id"),
                ("jobs", "run_id"),
                ("relay_offsets", "run_id"),
                ("queue", "run_id"),
            ):
                conn.execute(f"DELETE FROM {table} WHERE {key} = ?", (run_id,))

    # ------------------------------------------------------------- metrics
    def log_metrics(
        self, run_id: str, step: int, values: dict[str, float], wall_time: float | None = None
    ) -> None:
        """Idempotent per (run, step, metric): a resumed run rewrites rows instead of duplicating them."""
        wall = time.time() if wall_time is None else wall_time
        rows = [(run_id, step, k, _finite(v), wall) for k, v in values.items()]
        with self._write() as conn:
            conn.executemany("INSERT OR REPLACE INTO metrics VALUES (?, ?, ?, ?, ?)", rows)
            conn.execute(
                "UPDATE runs SET last_step = MAX(COALESCE(last_step, 0), ?) WHERE id = ?", (step, run_id)
            )

    def metrics(
        self, run_id: str, names: list[str] | None = None, since_step: int | None = None
    ) -> dict[str, list[tuple[int, float | None, float]]]:
        """name -> [(step, value, wall_time)] by step; ``since_step`` keeps steps after it (for polling)."""
        return self._metric_rows(run_id, names, since_step, "step, value, wall_time")

    def metric_names(self, run_id: str) -> list[str]:
        """The names of the metrics the run has recorded, sorted."""
        with self._connect() as conn:
            rows = conn.execute("SELECT DISTINCT name FROM metrics WHERE run_id = ? ORDER BY name", (run_id,))
            return [r[0] for r in rows]

    def curves(
        self, run_id: str, names: list[str], since_step: int | None = None
    ) -> dict[str, list[tuple[int, float | None]]]:
        """name -> [(step, value)] by step: ``metrics`` without the wall time, the charts' bulk path
        (a quarter less to read for a 100,000-step run)."""
        return self._metric_rows(run_id, names, since_step, "step, value")

    def _metric_rows(
        self, run_id: str, names: list[str] | None, since_step: int | None, columns: str
    ) -> dict:
        with self._connect() as conn:
            if not names:
                names = [
                    r[0]
                    for r in conn.execute("SELECT DISTINCT name FROM metrics WHERE run_id = ?", (run_id,))
                ]
            out: dict[str, list[tuple]] = {}
            for name in names:
                # One curve at a time through the covering index (run_id, name, step, value, wall_time),
                # as plain tuples: a 100,000-step run reads without touching the table.
                cursor = conn.cursor()
                cursor.row_factory = None
                query = f"SELECT {columns} FROM metrics WHERE run_id = ? AND name = ?"
                args: list[Any] = [run_id, name]
                if since_step is not None:
                    query += " AND step > ?"
                    args.append(since_step)
                out[name] = cursor.execute(query + " ORDER BY step", args).fetchall()
        return out

    # -------------------------------------------------------------- memory
    def metric_maxima(self, run_id: str, prefix: str) -> dict[str, float]:
        """The largest value of every metric whose name starts with ``prefix`` (e.g. per-rank peaks)."""
        escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT name, MAX(value) FROM metrics WHERE run_id = ? AND name LIKE ? ESCAPE '\\' GROUP BY name",
                (run_id, escaped + "%"),
            ).fetchall()
        return {name: value for name, value in rows if value is not None}

    def log_memory(self, run_id: str, samples: list[dict[str, Any]]) -> None:
        """Append samples (dicts keyed by memory column names; missing keys are NULL) in one transaction."""
        if not samples:
            return
        rows = [tuple(run_id if c == "run_id" else s.get(c) for c in _MEMORY_COLUMNS) for s in samples]
        with self._write() as conn:
            conn.executemany(f"INSERT INTO memory VALUES ({', '.join('?' * len(_MEMORY_COLUMNS))})", rows)

    def memory_rows(self, run_id: str, fields: tuple[str, ...], since_t: float | None = None) -> list[tuple]:
        """Memory samples as plain tuples of ``fields`` by time (the bulk path for charts)."""
        unknown = set(fields) - set(_MEMORY_COLUMNS)
        if unknown:
            raise ValueError(f"unknown memory field(s): {sorted(unknown)}")
        query, args = f"SELECT {', '.join(fields)} FROM memory WHERE run_id = ?", [run_id]
        if since_t is not None:
            query, args = query + " AND t > ?", [run_id, since_t]
        with self._connect() as conn:
            cursor = conn.cursor()
            cursor.row_factory = None
            return cursor.execute(query + " ORDER BY t", args).fetchall()

    def memory(self, run_id: str, since_t: float | None = None) -> list[dict[str, Any]]:
        """Memory samples by time; ``since_t`` keeps those after it."""
        query, args = "SELECT * FROM memory WHERE run_id = ?", [run_id]
        if since_t is not None:
            query, args = query + " AND t > ?", [run_id, since_t]
        with self._connect() as conn:
            return [dict(r) for r in conn.execute(query + " ORDER BY t", args)]

    # -------------------------------------------------------------- events
    def add_event(self, run_id: str, message: str, level: str = "info", t: float | None = None) -> None:
        """Append a timestamped message (``t``: when it happened, default now) to the run's log."""
        with self._write() as conn:
            conn.execute(
                "INSERT INTO events VALUES (?, ?, ?, ?)",
                (run_id, time.time() if t is None else t, level, message),
            )

    def events(self, run_id: str) -> list[dict[str, Any]]:
        """The run's events, oldest first."""
        with self._connect() as conn:
            return [
                dict(r) for r in conn.execute("SELECT * FROM events WHERE run_id = ? ORDER BY t", (run_id,))
            ]

    # ---------------------------------------------------- scheduler jobs
    def record_job(self, run_id: str, **fields: Any) -> None:
        """Insert or update the run's scheduler job (columns in ``_JOB_COLUMNS``; ``request`` is JSON)."""
        unknown = set(fields) - _JOB_COLUMNS
        if unknown:
            raise ValueError(f"unknown job field(s): {sorted(unknown)}")
        cols = ["request_json" if k == "request" else k for k in fields]
        values = [_dump(v) if k == "request" else v for k, v in fields.items()]
        with self._write() as conn:
            conn.execute("INSERT OR IGNORE INTO jobs (run_id) VALUES (?)", (run_id,))
            if cols:
                conn.execute(
                    f"UPDATE jobs SET {', '.join(c + ' = ?' for c in cols)} WHERE run_id = ?",
                    (*values, run_id),
                )

    def job(self, run_id: str) -> dict[str, Any] | None:
        """The run's scheduler job (``request`` decoded), or None for a run started on this machine."""
        with self._connect() as conn:
            row = conn.execute("SELECT * FROM jobs WHERE run_id = ?", (run_id,)).fetchone()
        if row is None:
            return None
        out = dict(row)
        raw = out.pop("request_json", None)
        out["request"] = json.loads(raw) if raw else None
        return out

    def relay_offsets(self, run_id: str) -> dict[str, int]:
        """source -> bytes of that relay file already folded into the store."""
        with self._connect() as conn:
            rows = conn.execute("SELECT source, offset FROM relay_offsets WHERE run_id = ?", (run_id,))
            return {source: offset for source, offset in rows}

    def set_relay_offset(self, run_id: str, source: str, offset: int) -> None:
        with self._write() as conn:
            conn.execute("INSERT OR REPLACE INTO relay_offsets VALUES (?, ?, ?)", (run_id, source, offset))


def _prepare(conn: sqlite3.Connection) -> None:
    """WAL mode, the busy timeout, and the schema when the file lacks it (or has an older one)."""
    conn.execute("PRAGMA busy_timeout=30000")
    _enter_wal(conn)
    conn.execute("PRAGMA synchronous=NORMAL")
    if conn.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
        with _transaction(conn):  # re-checked under the write lock: racing creators both succeed
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version < SCHEMA_VERSION:
                for statement in filter(str.strip, SCHEMA.split(";")):
                    conn.execute(statement)
                if version == 1:  # v2 added runs.total_steps (and an index, created above)
                    conn.execute("ALTER TABLE runs ADD COLUMN total_steps INTEGER")
                # v3 added the jobs and relay_offsets tables: created above, nothing to alter
                if version < 4:  # v4: a run's tags (a JSON list) and note, set on Runs / `nexa runs tag|note`
                    _add_columns(conn, "runs", {"tags_json": "TEXT", "note": "TEXT"})
                if version < 5:  # v5: the run queue (nexa_core/queue_table.py)
                    conn.execute(QUEUE_SCHEMA)
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")


def _add_columns(conn: sqlite3.Connection, table: str, columns: dict[str, str]) -> None:
    """ALTER TABLE ... ADD COLUMN for each of ``columns`` the table does not have yet."""
    have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
    for name, kind in columns.items():
        if name not in have:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")


def _open_read_only(path: Path) -> sqlite3.Connection:
    """A store this process may not write. WAL readers need the -shm file, which a read-only folder
    cannot get once the last writer removed it: then the file is read as immutable (nobody can be
    writing it here anyway)."""
    uri = "file:" + quote(str(path))
    conn = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=30, isolation_level=None)
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return conn
    except sqlite3.OperationalError:
        conn.close()
        return sqlite3.connect(f"{uri}?mode=ro&immutable=1", uri=True, isolation_level=None)


def _store_problem(path: Path, exc: sqlite3.Error) -> str | None:
    """One line for a store that cannot be used as it is, with the fix; None for other errors."""
    text = str(exc)
    if isinstance(exc, sqlite3.IntegrityError | sqlite3.ProgrammingError | sqlite3.InterfaceError):
        return None
    if "not a database" in text or "malformed" in text:
        return (
            f"run store ({path}): damaged ({text}); move it aside (mv {path} {path}.damaged) and NEXA "
            "starts an empty one, or restore it from a backup"
        )
    if "readonly" in text or "read-only" in text:
        return (
            f"run store ({path}): read-only here ({text}); runs can be listed and shown, but starting, "
            f"stopping or changing them needs NEXA_HOME ({path.parent}) writable"
        )
    if "unable to open" in text or "disk I/O" in text:
        return f"run store ({path}): cannot be opened ({text}); NEXA_HOME ({path.parent}) must be a writable folder"
    return None


def _enter_wal(conn: sqlite3.Connection, timeout_s: float = 30.0) -> None:
    """Switch the file to WAL (persistent; a no-op once it is in WAL), retrying while it is locked.

    The switch takes an exclusive lock without calling the busy handler (SQLite's pager.c,
    ``pagerOpenWal``), so when the ranks of a new run open a new store together, all but one got
    "database is locked" at once. The retry waits for the winner, after which the switch is a no-op."""
    deadline = time.monotonic() + timeout_s
    delay_s = 0.005
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(delay_s)
            delay_s = min(delay_s * 2, 0.2)


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """``BEGIN IMMEDIATE``: the write lock is taken up front, so a reader never upgrades (no deadlock)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _dump(value: Any) -> str | None:
    return None if value is None else json.dumps(value, default=str)


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _run_dict(row: sqlite3.Row) -> dict[str, Any]:
    out = dict(row)
    for key in _JSON_COLUMNS:
        raw = out.pop(f"{key}_json", None)
        out[key] = json.loads(raw) if raw else None
    return out
