"""The queue section of the Runs page (nexa_ui/queue_view.py), driven with AppTest over a store filled
by hand: a run recorded as running with this test's own pid holds the CPU, so the queued runs stay
queued (nothing is started) while they are moved and cancelled."""

from pathlib import Path

import psutil
import pytest
from streamlit.testing.v1 import AppTest

from nexa_core import paths
from nexa_core.runstore import RunState, RunStore

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "pages" / "runs.py"
HOLDER = "20260101-000000-holder-aaaaaa"
QUEUED = ["20260101-000001-a-aaaaaa", "20260101-000002-b-bbbbbb", "20260101-000003-c-cccccc"]


@pytest.fixture
def store(home):
    store = RunStore()
    me = psutil.Process()
    store.create_run(HOLDER, name="holder", spec={}, run_dir=str(paths.run_dir(HOLDER)), gpus=["cpu"])
    store.update_run(HOLDER, pid=me.pid, pid_create_time=me.create_time())  # alive: the CPU is busy
    store.set_state(HOLDER, RunState.RUNNING)
    for run_id in QUEUED:
        store.create_run(
            run_id, name=run_id.split("-")[2], spec={}, run_dir=str(paths.run_dir(run_id)), gpus=["cpu"]
        )
        store.queue_add(run_id, ["cpu"])
    yield store
    store.set_state(HOLDER, RunState.SUCCEEDED)  # never leave "our own pid" recorded as a live run


def _lines(at: AppTest) -> list[str]:
    return [m.value for m in at.markdown if m.value.startswith("**") and "`20260101" in m.value]


def test_waiting_runs_are_listed_in_order_and_can_be_moved_and_cancelled(store):
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    assert not at.exception
    assert [h.value for h in at.subheader] == ["Queue (3 waiting)"]
    lines = _lines(at)
    assert [line.split("`")[1] for line in lines] == QUEUED
    assert all(f"waiting for: {HOLDER} (running)" in line for line in lines)
    assert (
        at.button(key=f"queue_up_{QUEUED[0]}").disabled and at.button(key=f"queue_down_{QUEUED[2]}").disabled
    )

    at.button(key=f"queue_down_{QUEUED[0]}").click().run()
    assert not at.exception
    assert [s.value for s in at.success] == [f"Moved {QUEUED[0]} down: now 2 of 3 in the queue."]
    assert [line.split("`")[1] for line in _lines(at)] == [QUEUED[1], QUEUED[0], QUEUED[2]]

    at.button(key=f"queue_cancel_{QUEUED[2]}").click().run()
    assert not at.exception
    assert [s.value for s in at.success] == [
        f"Cancelled {QUEUED[2]}: it left the queue without starting (state stopped)."
    ]
    assert [line.split("`")[1] for line in _lines(at)] == [QUEUED[1], QUEUED[0]]
    assert store.get_run(QUEUED[2])["state"] == "stopped"
    assert store.get_run(QUEUED[1])["state"] == "queued"  # nothing started: the CPU is still held


def test_no_queue_section_when_nothing_waits(store):
    for run_id in QUEUED:
        store.queue_remove(run_id)
        store.set_state(run_id, RunState.STOPPED)
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    assert not at.exception
    assert not [h for h in at.subheader if h.value.startswith("Queue")]
