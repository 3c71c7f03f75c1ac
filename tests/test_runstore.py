import multiprocessing as mp
import sqlite3
import time

import pytest

from nexa_core.runstore import SCHEMA_VERSION, TERMINAL, RunState, RunStore


def _mp_context():
    """fork is quick (spawn re-imports pytest in each child); safe: the store keeps no connection open."""
    return mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")


@pytest.fixture
def store(tmp_path):
    return RunStore(tmp_path / "runs.sqlite")


def test_default_path_is_under_nexa_home(nexa_home):
    assert RunStore().path == nexa_home / "runs.sqlite"


def test_run_round_trip_and_terminal_state(store):
    store.create_run(
        "r1",
        name="first",
        spec={"lr": 1e-4},
        run_dir="/x",
        gpus=[0, 1],
        command=["nexa", "train"],
        estimate={"peak": 3},
    )
    run = store.get_run("r1")
    assert run["state"] == "queued" and run["kind"] == "train" and run["spec"] == {"lr": 1e-4}
    assert run["gpus"] == [0, 1] and run["command"] == ["nexa", "train"] and run["estimate"] == {"peak": 3}
    assert run["created_at"] and run["started_at"] is None and run["last_step"] == 0
    assert store.get_run("missing") is None
    store.set_state("r1", RunState.RUNNING)
    assert store.get_run("r1")["started_at"] is not None and store.get_run("r1")["ended_at"] is None
    store.set_state("r1", RunState.FAILED, reason="boom", exit_code=1)
    run = store.get_run("r1")
    assert run["state"] == "failed" and run["reason"] == "boom" and run["exit_code"] == 1 and run["ended_at"]
    assert [r["id"] for r in store.list_runs()] == ["r1"]
    assert {RunState.SUCCEEDED, RunState.FAILED, RunState.STOPPED} == TERMINAL


def test_update_run_whitelists_and_serialises(store):
    store.create_run("r", name="r", spec={}, run_dir="/x")
    store.update_run("r", pid=42, pid_create_time=1.5, spec={"a": [1]}, gpus_json=[3], state=RunState.RUNNING)
    run = store.get_run("r")
    assert (run["pid"], run["pid_create_time"], run["spec"], run["gpus"], run["state"]) == (
        42,
        1.5,
        {"a": [1]},
        [3],
        "running",
    )
    with pytest.raises(ValueError):
        store.update_run("r", not_a_column=1)
    with pytest.raises(ValueError):
        store.update_run("r", **{"id = 'x'; --": 1})
    with pytest.raises(ValueError):
        store.set_state("r", "exploded")


def test_state_transitions_keep_and_clear_outcomes(store):
    store.create_run("r", name="r", spec={}, run_dir="/x", state=RunState.RUNNING)
    started = store.get_run("r")["started_at"]
    assert started is not None
    store.create_run("done", name="d", spec={}, run_dir="/x", state="succeeded")
    assert store.get_run("done")["ended_at"] is not None and store.get_run("done")["started_at"] is None
    store.set_state("r", RunState.FAILED, reason="OOM")
    ended = store.get_run("r")["ended_at"]
    store.set_state("r", RunState.FAILED, exit_code=1)  # the launcher adds the exit code later
    run = store.get_run("r")
    assert (run["reason"], run["exit_code"], run["ended_at"]) == ("OOM", 1, ended)
    store.set_state("r", RunState.RUNNING)  # resume
    run = store.get_run("r")
    assert run["ended_at"] is None and run["reason"] is None and run["exit_code"] is None
    assert run["started_at"] == started
    store.set_state("r", RunState.STOPPED, stopped_by="user")
    run = store.get_run("r")
    assert run["state"] == "stopped" and run["stopped_by"] == "user" and run["ended_at"] >= ended


def test_list_runs_newest_first_filtered_and_delete(store):
    for i in range(3):
        store.create_run(f"r{i}", name=str(i), spec={}, run_dir="/x")
    store.set_state("r1", RunState.SUCCEEDED)
    assert [r["id"] for r in store.list_runs()] == ["r2", "r1", "r0"]
    assert [r["id"] for r in store.list_runs(limit=2)] == ["r2", "r1"]
    assert [r["id"] for r in store.list_runs(state="succeeded")] == ["r1"]
    store.log_metrics("r1", 1, {"loss": 1.0})
    store.log_memory("r1", [{"t": 1.0, "rss_bytes": 1}])
    store.add_event("r1", "hello")
    store.delete_run("r1")
    assert store.get_run("r1") is None and store.metrics("r1") == {}
    assert store.memory("r1") == [] and store.events("r1") == []


def test_metric_rows_are_idempotent_per_step(store):
    store.create_run("r", name="r", spec={}, run_dir="/x")
    store.log_metrics("r", 1, {"loss": 2.0, "lr": 1e-3}, wall_time=10.0)
    store.log_metrics("r", 2, {"loss": 1.5, "lr": float("nan"), "gn": float("inf")})
    store.log_metrics("r", 2, {"loss": 1.4})  # a resumed run rewrites step 2
    rows = store.metrics("r")
    assert [(s, v) for s, v, _ in rows["loss"]] == [(1, 2.0), (2, 1.4)]
    assert rows["loss"][0][2] == 10.0
    assert rows["lr"][1][1] is None and rows["gn"] == [(2, None, rows["gn"][0][2])]  # NULL, row kept
    assert store.get_run("r")["last_step"] == 2
    store.log_metrics("r", 1, {"loss": 1.9})  # an older step never lowers last_step
    assert store.get_run("r")["last_step"] == 2
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM metrics WHERE name = 'loss'").fetchone()[0] == 2
    assert store.metrics("r", ["loss", "absent"], since_step=1) == {
        "loss": [(2, 1.4, rows["loss"][1][2])],
        "absent": [],
    }


def test_memory_events_and_peaks(store):
    from nexa_core.runs import measured

    assert measured(store, "p")["peak_host_rss_bytes"] is None
    store.log_memory(
        "p",
        [
            {"t": 1, "rank": 0, "host": "h", "rss_bytes": 100, "gpu_index": 0, "gpu_allocated_bytes": 7},
            {"t": 1, "rank": 1, "host": "h", "rss_bytes": 50, "gpu_index": 1, "nvml_used_bytes": 9},
        ],
    )
    store.log_memory(
        "p", [{"t": 2, "rank": 0, "host": "h", "rss_bytes": 80, "gpu_index": 0, "gpu_reserved_bytes": 8}]
    )
    peaks = measured(store, "p")
    assert peaks["peak_host_rss_bytes"] == 150  # rank 0's sampled peak + rank 1's
    assert peaks["peak_host_rss_source"] == "sampled"
    assert peaks["peak_gpu_bytes"] == {"0": 8, "1": 9}  # NVML's figure, else the reserved bytes
    # each rank's kernel high-water mark, once recorded, wins over the samples (they miss spikes)
    store.log_metrics("p", 3, {"peak_rss_bytes/rank0": 120, "peak_rss_bytes/rank1": 70})
    peaks = measured(store, "p")
    assert peaks["peak_host_rss_bytes"] == 190 and peaks["peak_host_rss_source"].startswith("kernel")
    assert peaks["peak_rss_bytes_per_rank"] == {"0": 120, "1": 70}
    assert [r["t"] for r in store.memory("p")] == [1, 1, 2] and len(store.memory("p", since_t=1)) == 1
    store.add_event("p", "started")
    store.add_event("p", "slow", level="warning")
    assert [(e["level"], e["message"]) for e in store.events("p")] == [
        ("info", "started"),
        ("warning", "slow"),
    ]


def test_wal_mode_and_schema_version(store):
    store.create_run("r", name="r", spec={}, run_dir="/x")
    RunStore(store.path).get_run("r")  # a second store on the same file: schema creation is idempotent
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def _writer(path: str, worker: int) -> None:
    store = RunStore(path)
    for step in range(200):
        store.log_metrics("shared", step, {f"m{worker}": float(step)})
        store.log_memory("shared", [{"t": time.time(), "rank": worker, "step": step, "rss_bytes": step}])


def test_concurrent_writers_never_see_database_locked(store):
    store.create_run("shared", name="s", spec={}, run_dir="/x")
    ctx = _mp_context()
    procs = [ctx.Process(target=_writer, args=(str(store.path), w)) for w in range(4)]
    for p in procs:
        p.start()
    reads = 0
    while any(p.is_alive() for p in procs):  # a reader (and writer) in the middle of it all
        store.metrics("shared")
        store.memory("shared", since_t=time.time() - 1)
        store.add_event("shared", "poll")
        reads += 1
    for p in procs:
        p.join()
    assert all(p.exitcode == 0 for p in procs) and reads > 0
    rows = store.metrics("shared")
    assert all([s for s, _, _ in rows[f"m{w}"]] == list(range(200)) for w in range(4))
    memory = store.memory("shared")
    assert len(memory) == 800 and all(sum(r["rank"] == w for r in memory) == 200 for w in range(4))
    assert store.get_run("shared")["last_step"] == 199


def _first_open(path: str, barrier) -> None:
    barrier.wait()  # every process opens the new file at the same moment, like the ranks of a run
    RunStore(path).get_run("any")


def test_processes_opening_a_new_store_together_never_see_database_locked(tmp_path):
    """The ranks of a first run open a store that does not exist yet, all at once. Switching a new
    file to WAL takes an exclusive lock without SQLite's busy handler; before the retry, about one
    round in six here failed with "database is locked" (the 2-process accelerate test hit it in CI)."""
    ctx = _mp_context()
    for round_ in range(40):
        path = tmp_path / f"round{round_}.sqlite"
        barrier = ctx.Barrier(4)
        procs = [ctx.Process(target=_first_open, args=(str(path), barrier)) for _ in range(4)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=60)
        assert [p.exitcode for p in procs] == [0, 0, 0, 0], f"round {round_}"
        with sqlite3.connect(path) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_a_version_1_store_is_migrated(tmp_path):
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as conn:  # the v1 layout: no total_steps column
        conn.execute(
            "CREATE TABLE runs (id TEXT PRIMARY KEY, name TEXT, kind TEXT DEFAULT 'train', state TEXT NOT NULL,"
            " spec_json TEXT, command_json TEXT, run_dir TEXT, pid INTEGER, pid_create_time REAL, created_at REAL,"
            " started_at REAL, ended_at REAL, exit_code INTEGER, reason TEXT, stopped_by TEXT, estimate_json TEXT,"
            " gpus_json TEXT, last_step INTEGER)"
        )
        conn.execute("INSERT INTO runs (id, name, state) VALUES ('old', 'old', 'succeeded')")
        conn.execute("PRAGMA user_version=1")
    store = RunStore(path)
    store.update_run("old", total_steps=40)
    assert store.get_run("old")["total_steps"] == 40 and store.get_run("old")["state"] == "succeeded"
    assert store.get_run("old")["tags"] is None  # v1 -> v4 in one go


def test_a_version_3_store_gains_tags_and_a_note(tmp_path):
    """v4 (issue 17): runs.tags_json and runs.note, added to a v3 store in place; rows keep their data."""
    path = tmp_path / "v3.sqlite"
    RunStore(path).create_run("kept", name="kept", spec={"model": "m"}, run_dir="/x")
    with sqlite3.connect(path) as conn:  # back to the v3 layout: no tags or note columns
        conn.execute("ALTER TABLE runs DROP COLUMN tags_json")
        conn.execute("ALTER TABLE runs DROP COLUMN note")
        conn.execute("PRAGMA user_version=3")
    store = RunStore(path)
    assert store.get_run("kept")["tags"] is None and store.get_run("kept")["note"] is None
    store.update_run("kept", tags=["baseline", "lr-sweep"], note="first try")
    run = store.get_run("kept")
    assert (run["tags"], run["note"], run["spec"]) == (["baseline", "lr-sweep"], "first try", {"model": "m"})
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
