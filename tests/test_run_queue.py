"""The run queue (nexa_core/run_queue.py): order, moves and cancel in the store, the v5 migration,
and real runs queued behind a busy device that start when it frees: by the ending run's supervisor,
or by runner.refresh after a crash that left no supervisor to do it."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from nexa_core import run_queue, runner
from nexa_core.errors import ConfigError
from nexa_core.launch import RunSpec
from nexa_core.run_queue import Entry, ready, waiting_for
from nexa_core.runstore import SCHEMA_VERSION, RunState, RunStore
from nexa_core.train_config import TrainConfig
from tests.run_helpers import tiny_bert, wait_for_step


def _entry(run_id: str, *devices: str) -> Entry:
    return Entry(run_id, 0, devices, False, 0.0)


def test_first_in_first_out_per_device_and_other_devices_are_not_held_up():
    entries = [_entry("a", "cpu"), _entry("b", "gpu0", "gpu1"), _entry("c", "gpu1"), _entry("d", "gpu0"),
               _entry("e", "gpu2")]  # fmt: skip
    busy = {"cpu": "r0", "gpu1": "r1"}
    # d's gpu0 is free, but b (ahead of it) waits for gpu0 and gpu1 together: d must not overtake b
    assert [e.run_id for e in ready(entries, busy)] == ["e"]
    assert waiting_for(entries, busy) == {"a": ["r0"], "b": ["r1"], "c": ["r1"], "d": ["b"], "e": []}
    assert [e.run_id for e in ready(entries, {})] == ["a", "b", "e"]


def test_queue_order_moves_and_removal_in_the_store(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    for run_id in "abc":
        store.create_run(run_id, name=run_id, spec={}, run_dir=str(tmp_path / run_id))
        store.queue_add(run_id, ["cpu"])
    assert [(e.run_id, e.position) for e in store.queue_entries()] == [("a", 1), ("b", 2), ("c", 3)]
    assert run_queue.move(store, "c", "top") == "moved c top: now 1 of 3 in the queue"
    assert store.queue_move("c", "down") == 2 and store.queue_move("b", "up") == 2
    assert [e.run_id for e in store.queue_entries()] == ["a", "b", "c"]
    assert store.queue_move("b", "top") == 1
    assert [e.run_id for e in store.queue_entries()] == ["b", "a", "c"]
    assert store.queue_move("b", "up") == 1 and store.queue_move("c", "bottom") == 3  # at the ends: stays put
    with pytest.raises(
        ConfigError, match="'sideways' is not a queue move; choose one of up, down, top, bottom"
    ):
        store.queue_move("a", "sideways")
    with pytest.raises(ConfigError, match="'zz' is not waiting in the queue"):
        store.queue_move("zz", "up")
    assert store.queue_remove("a") and not store.queue_remove("a")
    store.delete_run("b")  # deleting a run takes it out of the line too
    assert [(e.run_id, e.position) for e in store.queue_entries()] == [("c", 1)]


def test_a_version_4_store_gains_the_queue_and_keeps_its_runs(tmp_path):
    path = tmp_path / "v4.sqlite"
    RunStore(path).create_run("old", name="old", spec={}, run_dir="/x", state=RunState.SUCCEEDED)
    with sqlite3.connect(path) as conn:  # back to the v4 layout: every table but the queue
        conn.execute("DROP TABLE queue")
        conn.execute("PRAGMA user_version=4")
    store = RunStore(path)
    assert store.get_run("old")["state"] == "succeeded"
    store.create_run("new", name="new", spec={}, run_dir="/x")
    assert store.queue_add("new", ["cpu"]) == 1
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 5


def test_a_run_started_by_another_runs_supervisor_gets_the_launchers_environment(monkeypatch):
    """The supervisor of run A starts queued run B: A's own variables (GPU pinning, USE_DEEPSPEED)
    must not leak into B; B gets the environment A was launched from, plus its own."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")  # A's pinning; the launcher had none
    monkeypatch.setenv("USE_DEEPSPEED", "true")  # A's launcher mode; the launcher had "false"
    monkeypatch.setenv(
        runner.ENV_BEFORE_RUN, json.dumps({"CUDA_VISIBLE_DEVICES": None, "USE_DEEPSPEED": "false"})
    )
    monkeypatch.delenv("PYTHONUNBUFFERED", raising=False)  # the launcher's: unset
    env = runner._run_environment({"NEXA_RUN_ID": "b", "PYTHONUNBUFFERED": "1"})
    assert "CUDA_VISIBLE_DEVICES" not in env and env["USE_DEEPSPEED"] == "false" and env["NEXA_RUN_ID"] == "b"
    # and B's supervisor, starting C in turn, restores the same launcher environment
    monkeypatch.setattr(os, "environ", env)
    again = runner._run_environment({"NEXA_RUN_ID": "c"})
    assert "CUDA_VISIBLE_DEVICES" not in again and again["USE_DEEPSPEED"] == "false"
    assert "PYTHONUNBUFFERED" not in again and again["NEXA_RUN_ID"] == "c"


def _spec(model: Path, **fields) -> RunSpec:
    return RunSpec(TrainConfig(model=str(model), random_init=True, deepspeed="off", batch_size=4, seq_len=32,
                               eval=False, save=False, **fields))  # fmt: skip


def _no_zombie_children(timeout_s: float = 30) -> bool:
    """Every run this process started has been reaped (the panel must not collect zombies)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        children = psutil.Process().children()
        if not [c for c in children if c.status() == psutil.STATUS_ZOMBIE]:
            return True
        time.sleep(0.2)
    return False


@pytest.mark.slow
def test_a_queued_launch_waits_survives_a_restart_moves_and_starts_when_the_run_before_it_ends(
    nexa_home, tmp_path
):
    model = tiny_bert(tmp_path / "tiny")
    store = RunStore()
    first = runner.launch(_spec(model, max_steps=100_000, name="first"))
    wait_for_step(first, 1)
    with pytest.raises(ConfigError, match=rf"busy \(cpu by run {first}\)"):
        runner.launch(_spec(model, max_steps=2))  # without queue: refused as before, nothing recorded
    second = runner.launch(_spec(model, max_steps=2, name="second"), queue=True)
    third = runner.launch(_spec(model, max_steps=2, name="third"), queue=True)
    assert [store.get_run(r)["state"] for r in (second, third)] == ["queued", "queued"]
    assert store.get_run(second)["pid"] is None and run_queue.position(store, third) == 2
    store.update_run(second, created_at=time.time() - 3600)  # long past the launch grace period
    assert runner.refresh(store) == [] and store.get_run(second)["state"] == "queued"  # waiting, not vanished

    # another process (a restarted panel, the CLI) sees the same queue, and moves a run in it
    env = {**os.environ, "NEXA_HOME": str(nexa_home)}
    cli = [sys.executable, "-m", "nexa_core", "runs", "queue"]
    listed = subprocess.run(cli, capture_output=True, text=True, env=env, timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert [line.split()[:2] for line in listed.stdout.splitlines()] == [["1.", second], ["2.", third]]
    assert f"waiting for: {first} (running)" in listed.stdout
    moved = subprocess.run([*cli, "up", third], capture_output=True, text=True, env=env, timeout=120)
    assert moved.stdout.strip() == f"moved {third} up: now 1 of 2 in the queue", moved.stderr
    wrong = subprocess.run([*cli, "sideways", third], capture_output=True, text=True, env=env, timeout=120)
    assert wrong.returncode == 2 and "choose one of list, up, down, top, bottom, cancel" in wrong.stderr

    assert runner.stop(second) == "stopped"  # cancelled before it ever started
    assert store.get_run(second)["reason"] == "cancelled by user while waiting in the queue"
    assert [e.run_id for e in store.queue_entries()] == [third]

    assert runner.stop(first, grace_s=30) == "stopped"  # its supervisor starts the next in line
    run = runner.wait(third, timeout_s=300)
    assert run["state"] == "succeeded" and store.queue_entries() == []
    assert store.get_run(second)["state"] == "stopped"  # a cancelled run stays cancelled
    assert f"nexa: started the next queued run, {third}" in runner.logs(first)
    assert _no_zombie_children(), [(c.pid, c.status()) for c in psutil.Process().children()]


@pytest.mark.slow
def test_a_crashed_run_and_a_run_that_cannot_start_do_not_block_the_queue(nexa_home, tmp_path):
    """kill -9 of the whole run, supervisor first: nobody is left to start the next run, so the next
    refresh (any page, `nexa runs`) marks it failed and starts the queue. A queued run whose folder
    is gone fails with the reason and the run behind it starts."""
    model = tiny_bert(tmp_path / "tiny")
    store = RunStore()
    first = runner.launch(_spec(model, max_steps=100_000, name="first"))
    wait_for_step(first, 1)
    broken = runner.launch(_spec(model, max_steps=2, name="broken"), queue=True)
    after = runner.launch(_spec(model, max_steps=2, name="after"), queue=True)
    (Path(store.get_run(broken)["run_dir"]) / "run_config.json").unlink()
    procs = runner.run_processes(store.get_run(first))
    supervisor = psutil.Process(store.get_run(first)["pid"])
    supervisor.kill()  # first: it must not get to record the outcome or start the next run
    for proc in procs:
        if proc.pid != supervisor.pid:
            proc.kill()
    psutil.wait_procs(procs, timeout=30)
    assert store.get_run(first)["state"] == "running" and store.get_run(after)["state"] == "queued"

    assert runner.refresh(store) == [first, after]  # marked failed, then the queue moved on
    assert store.get_run(first)["state"] == "failed" and "vanished" in store.get_run(first)["reason"]
    reason = store.get_run(broken)["reason"]
    assert store.get_run(broken)["state"] == "failed" and reason.startswith(
        "could not start from the queue: "
    )
    assert runner.wait(after, timeout_s=300)["state"] == RunState.SUCCEEDED.value
