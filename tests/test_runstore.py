import multiprocessing as mp
import sqlite3

import pytest

from nexa_core import paths
from nexa_core.errors import ConfigError
from nexa_core.runstore import RunState, RunStore


@pytest.fixture
def store(tmp_path):
    return RunStore(tmp_path / "runs.sqlite")


def test_run_round_trip_and_terminal_state(store):
    store.create_run(
        "r1", name="first", spec={"lr": 1e-4}, run_dir="/x", gpus=[0, 1], command=["nexa", "train"]
    )
    run = store.get_run("r1")
    assert run["state"] == "queued" and run["spec"] == {"lr": 1e-4} and run["gpus"] == [0, 1]
    store.set_state("r1", RunState.RUNNING)
    assert store.get_run("r1")["started_at"] is not None and store.get_run("r1")["ended_at"] is None
    store.set_state("r1", RunState.FAILED, reason="boom", exit_code=1)
    run = store.get_run("r1")
    assert run["state"] == "failed" and run["reason"] == "boom" and run["exit_code"] == 1 and run["ended_at"]
    assert [r["id"] for r in store.list_runs()] == ["r1"]
    with pytest.raises(ValueError):
        store.update_run("r1", not_a_column=1)


def test_metric_rows_are_idempotent_per_step(store):
    store.create_run("r", name="r", spec={}, run_dir="/x")
    store.log_metrics("r", 1, {"loss": 2.0, "lr": 1e-3})
    store.log_metrics("r", 2, {"loss": 1.5, "lr": float("nan")})
    store.log_metrics("r", 2, {"loss": 1.4})  # a resumed run rewrites step 2
    rows = store.metrics("r")
    assert [(s, v) for s, v, _ in rows["loss"]] == [(1, 2.0), (2, 1.4)]
    assert rows["lr"][1][1] is None  # NaN kept as NULL, the row is not lost
    assert store.get_run("r")["last_step"] == 2


def test_wal_mode(store):
    store.create_run("r", name="r", spec={}, run_dir="/x")
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def _writer(path: str, worker: int) -> None:
    store = RunStore(path)
    for step in range(200):
        store.log_metrics("shared", step, {f"m{worker}": float(step)})
        if step % 20 == 0:
            store.log_memory("shared", [{"t": float(step), "rank": worker, "rss_bytes": step}])


def test_concurrent_writers_never_see_database_locked(store):
    store.create_run("shared", name="s", spec={}, run_dir="/x")
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(store.path), w)) for w in range(4)]
    for p in procs:
        p.start()
    while any(p.is_alive() for p in procs):
        store.metrics("shared")  # a reader in the middle of it all
    assert all(p.exitcode == 0 for p in procs)
    rows = store.metrics("shared")
    assert all(len(rows[f"m{w}"]) == 200 for w in range(4))
    assert len(store.memory("shared")) == 40


def test_peak_memory_sums_ranks(store):
    store.log_memory(
        "p",
        [
            {"t": 1, "rank": 0, "host": "h", "rss_bytes": 100},
            {"t": 1, "rank": 1, "host": "h", "rss_bytes": 50},
        ],
    )
    store.log_memory("p", [{"t": 2, "rank": 0, "host": "h", "rss_bytes": 80}])
    assert store.peak_memory("p")["peak_rss_bytes"] == 150


@pytest.mark.parametrize("bad", ["../x", "-rf", "a/b", "", ".."])
def test_run_ids_cannot_escape(nexa_home, bad):
    with pytest.raises(ConfigError, match="run_id"):
        paths.run_dir(bad)


def test_symlink_in_runs_root_is_refused(nexa_home, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (paths.runs_root() / "sneaky").symlink_to(outside)
    with pytest.raises(ConfigError, match="outside"):
        paths.run_dir("sneaky")


def test_new_run_ids_are_valid_and_unique(nexa_home):
    ids = {paths.new_run_id("My Run!") for _ in range(50)}
    assert len(ids) == 50 and all("my-run" in i for i in ids)
    assert paths.run_dir(next(iter(ids))).parent == paths.runs_root().resolve()
