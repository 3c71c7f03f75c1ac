"""The Monitor page, driven with AppTest, over one real (3-step) training run and hand-made rows."""

import json
import os
import time
from pathlib import Path

import psutil
import pytest
from streamlit.testing.v1 import AppTest

from nexa_core import runner, runs
from nexa_core.launch import RunSpec
from nexa_core.runstore import RunState, RunStore
from nexa_core.train_config import TrainConfig

# Absolute: AppTest resolves a relative path against this test file, not the working directory.
ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "pages" / "monitor.py"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One real run (the packaged MiniLM, 3 steps) in a private NEXA_HOME, shared by this module."""
    home = tmp_path_factory.mktemp("monitor_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NEXA_HOME", str(home))
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.chdir(ROOT)
        spec = RunSpec(TrainConfig(max_steps=3, batch_size=4, seq_len=32))
        run_id = runner.launch(spec, estimate=runs.estimate_for(spec))  # as the Launch page does
        run = runner.wait(run_id, timeout_s=300)
        assert run["state"] == "succeeded", runner.logs(run_id)[-3000:]
        yield home, run_id


def _page(run_id: str) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.session_state["monitor_run"] = run_id
    return at.run()


def _chart(at: AppTest, title: str) -> dict:
    for chart in at.get("plotly_chart"):
        spec = json.loads(chart.proto.spec)
        if spec["layout"]["title"]["text"] == title:
            return spec
    raise AssertionError(f"no chart titled {title!r}")


def _metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def test_a_finished_run_shows_its_curves_outcome_and_export(trained, monkeypatch):
    home, run_id = trained
    monkeypatch.setenv("NEXA_HOME", str(home))
    at = _page(run_id)
    assert not at.exception
    assert at.selectbox(key="monitor_pick").value == run_id
    assert _metric(at, "State") == "succeeded" and _metric(at, "Step") == "3 / 3"
    assert any("Succeeded" in s.value for s in at.success)
    loss = _chart(at, "Loss")
    raw = next(t for t in loss["data"] if t["name"] == "loss")
    assert raw["x"] == [1, 2, 3] and len(raw["y"]) == 3
    gpu = bool(runs.summary(RunStore(), RunStore().get_run(run_id))["measured"]["peak_gpu_bytes"])
    titles = [json.loads(c.proto.spec)["layout"]["title"]["text"] for c in at.get("plotly_chart")]
    assert sorted(titles) == sorted(
        ["Loss", "Learning rate", "Throughput", "Host memory (RSS per rank)"]
        + (["GPU memory (per device)"] if gpu else [])
    )  # no empty GPU chart for a run without one (issue 17)
    host = _chart(at, "Host memory (RSS per rank)")
    assert host["data"] and [s["line"]["dash"] for s in host["layout"]["shapes"]] == ["dash"]  # the estimate
    assert not [b for b in at.button if b.key == "monitor_stop"]  # no Stop for an ended run
    assert [b.label for b in at.get("form_submit_button")] == ["Export", "Try it"]
    assert str(home / "exports" / run_id) in [t.value for t in at.text_input]
    at.toggle(key="monitor_log_y").set_value(True).run()
    assert not at.exception and _chart(at, "Loss")["layout"]["yaxis"]["type"] == "log"


def test_the_finished_model_can_be_tried_on_a_sentence(trained, monkeypatch):
    home, run_id = trained
    monkeypatch.setenv("NEXA_HOME", str(home))
    at = _page(run_id)
    sentence = "Crew replaced the recloser on Feeder 1104 under WO-483920 ."
    at.text_input(key="monitor_try_text").input(sentence)
    at.button(key="FormSubmitter:monitor_try_form-Try it").click().run()
    assert not at.exception and not at.error
    result = at.session_state["monitor_try_result"]
    assert result["task"] == "ner" and "".join(piece for piece, _ in result["spans"]) == sentence
    tagged = [m.value for m in at.markdown if "nexa-tagged" in m.value]
    assert tagged and all(f">{e['text']}" in tagged[0] for e in result["entities"])  # entities marked
    assert (home / "runs" / run_id / "try-model").is_dir()  # exported once, into the run folder


@pytest.fixture
def hand_made(tmp_path, monkeypatch):
    """A store with an active run owned by this very process (so refresh keeps it active) and a
    failed one. The active one is marked stopped by hand afterwards: runner.stop would signal us."""
    monkeypatch.setenv("NEXA_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(ROOT)
    store = RunStore()
    store.create_run(
        "failed-run", name="broken", spec={"max_steps": 10}, run_dir=str(tmp_path), state=RunState.RUNNING
    )
    store.set_state("failed-run", RunState.FAILED, reason="out of memory: CUDA out of memory", exit_code=1)
    store.create_run(
        "live-run", name="live", spec={"max_steps": 10}, run_dir=str(tmp_path), state=RunState.RUNNING
    )
    store.update_run("live-run", pid=os.getpid(), pid_create_time=psutil.Process().create_time())
    store.log_metrics("live-run", 1, {"loss": 2.0, "lr": 1e-5})
    yield store
    store.set_state("live-run", RunState.STOPPED, reason="test over")


def test_an_active_run_has_a_stop_button_and_live_progress(hand_made):
    at = _page("live-run")
    assert not at.exception
    assert [b.label for b in at.button if b.key == "monitor_stop"] == ["Stop run"]  # present, never pressed
    assert _metric(at, "State") == "running" and _metric(at, "Step") == "1 / 10"
    assert at.get("progress") and not at.get("form_submit_button")
    assert "GPU memory" not in json.dumps([c.proto.spec for c in at.get("plotly_chart")])
    assert hand_made.get_run("live-run")["state"] == "running"


def test_validation_curves_are_charted_while_the_run_trains(hand_made):
    for step, f1 in ((1, 0.1), (2, 0.3)):  # validation every step (--eval-every 1)
        hand_made.log_metrics("live-run", step, {"eval_loss": 1.0 / step, "eval_f1": f1})
    at = _page("live-run")
    assert not at.exception
    evaluation = _chart(at, "Evaluation (validation set)")
    assert [(t["name"], t["x"], t["y"]) for t in evaluation["data"]] == [("entity F1", [1, 2], [0.1, 0.3])]
    validation = next(t for t in _chart(at, "Loss")["data"] if t["name"] == "validation loss")
    assert validation["y"] == [1.0, 0.5]


def test_a_failed_run_shows_its_reason_and_the_picker_switches_runs(hand_made):
    at = _page("failed-run")
    assert not at.exception
    assert len(at.error) == 1 and "out of memory" in at.error[0].value
    assert not [b for b in at.button if b.key == "monitor_stop"]
    at.selectbox(key="monitor_pick").set_value("live-run").run()
    assert not at.exception and not at.error
    assert at.session_state["monitor_run"] == "live-run"
    assert _metric(at, "State") == "running"


def test_no_runs_yet(tmp_path, monkeypatch):
    monkeypatch.setenv("NEXA_HOME", str(tmp_path / "home"))
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    assert not at.exception and "No runs yet" in at.info[0].value


def test_a_slurm_run_shows_its_job_and_what_the_scheduler_says(tmp_path, monkeypatch):
    monkeypatch.setenv("NEXA_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(ROOT)
    store = RunStore()
    store.create_run("job-run", name="queued", kind="slurm", spec={"max_steps": 10}, run_dir=str(tmp_path))
    # polled just now (as far as refresh can tell), so no scheduler is asked in this test
    store.record_job("job-run", scheduler="slurm", job_id="42", partition="gpu", nodes=2,
                     sched_state="PENDING", sched_reason="Priority", polled_at=time.time() + 3600)  # fmt: skip
    at = _page("job-run")
    assert not at.exception and _metric(at, "State") == "queued"
    assert "Slurm 42 · gpu · 2 node(s) · the scheduler says PENDING (Priority)" in [
        c.value for c in at.caption
    ]
    assert [b.label for b in at.button if b.key == "monitor_stop"] == ["Stop run"]
