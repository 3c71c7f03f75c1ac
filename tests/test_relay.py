"""The relay: what a cluster job's ranks write to files in the shared run folder, folded into the run
store by the panel's machine, exactly once, and only the fields a rank may change."""

from __future__ import annotations

import json
import sqlite3

from nexa_core import relay
from nexa_core.runstore import SCHEMA_VERSION, RunState, RunStore


def _store(tmp_path) -> RunStore:
    store = RunStore(tmp_path / "runs.sqlite")
    store.create_run("r", name="r", spec={}, run_dir=str(tmp_path / "runs" / "r"))
    return store


def test_a_ranks_writes_reach_the_store_once_and_a_half_written_line_waits(tmp_path, monkeypatch):
    store, folder = _store(tmp_path), tmp_path / "relay"
    monkeypatch.setenv(relay.RELAY_ENV, str(folder))
    rank = relay.job_store()
    assert isinstance(rank, relay.RelayStore) and rank.get_run("r")["stopped_by"] is None
    rank.set_state("r", RunState.RUNNING)
    rank.log_metrics("r", 1, {"loss": 2.5}, wall_time=100.0)
    rank.log_memory("r", [{"t": 100.5, "rank": 1, "host": "node-b", "rss_bytes": 7}])
    rank.add_event("r", "checkpoint step-0000001 saved")
    rank.update_run("r", last_step=1, pid=4242)  # a rank may report progress, not a pid
    rank.set_state("r", RunState.FAILED, reason="ValueError: x")  # the scheduler reports the outcome
    with open(rank.path, "a") as f:
        f.write('{"op": "log_metrics", "run_id": "r", "step": 2')  # still being written

    assert relay.ingest(store, "r", folder) == 5
    run = store.get_run("r")
    assert (run["state"], run["last_step"], run["pid"], run["reason"]) == ("running", 1, None, None)
    assert store.metrics("r", ["loss"])["loss"] == [(1, 2.5, 100.0)]
    assert [(m["rank"], m["host"], m["t"]) for m in store.memory("r")] == [(1, "node-b", 100.5)]
    assert [e["message"] for e in store.events("r")] == ["checkpoint step-0000001 saved"]

    assert relay.ingest(store, "r", folder) == 0  # nothing new: nothing applied twice
    with open(rank.path, "a") as f:
        f.write(', "values": {"loss": 2.0}, "wall_time": 101.0}\n')
    assert relay.ingest(store, "r", folder) == 1
    assert [s for s, _, _ in store.metrics("r", ["loss"])["loss"]] == [1, 2]
    assert len(store.memory("r")) == 1 and store.relay_offsets("r") == {
        rank.path.name: rank.path.stat().st_size
    }


def test_a_line_naming_another_run_is_ignored(tmp_path):
    store, folder = _store(tmp_path), tmp_path / "relay"
    folder.mkdir()
    (folder / "h-1.jsonl").write_text(json.dumps({"op": "log_metrics", "run_id": "other", "step": 1,
                                                  "values": {"loss": 1.0}}) + "\nnot json\n")  # fmt: skip
    assert relay.ingest(store, "r", folder) == 0 and store.metrics("r") == {}


def test_without_the_relay_variable_a_process_writes_the_run_store(tmp_path, monkeypatch):
    monkeypatch.delenv(relay.RELAY_ENV, raising=False)
    monkeypatch.setenv("NEXA_HOME", str(tmp_path))
    assert isinstance(relay.job_store(), RunStore)


def test_a_v2_store_gains_the_job_tables_and_keeps_its_runs(tmp_path):
    path = tmp_path / "v2.sqlite"
    RunStore(path).create_run("old", name="old", spec={}, run_dir="x", state=RunState.SUCCEEDED)
    with sqlite3.connect(path) as conn:  # back to the v2 layout: no jobs, no relay_offsets
        conn.execute("DROP TABLE jobs")
        conn.execute("DROP TABLE relay_offsets")
        conn.execute("PRAGMA user_version=2")
    store = RunStore(path)
    store.record_job("old", scheduler="slurm", job_id="7", request={"partition": "debug"})
    assert store.get_run("old")["state"] == "succeeded"
    assert store.job("old")["job_id"] == "7" and store.job("old")["request"] == {"partition": "debug"}
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    store.delete_run("old")
    assert store.job("old") is None
