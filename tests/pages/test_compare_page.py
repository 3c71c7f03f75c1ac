"""The Compare page, driven with AppTest over comparisons written by hand: results, and technique runs
recorded in the store (a run "running" under this test's own pid holds the CPU, so nothing trains)."""

import json
import shutil
import subprocess
from pathlib import Path

import psutil
import pytest
from streamlit.testing.v1 import AppTest

from nexa_core import paths
from nexa_core.comparisons import comparisons_dir, list_comparisons, save_comparison
from nexa_core.costs import load_instances
from nexa_core.memory import GIB
from nexa_core.models import DEFAULT_MODEL
from nexa_core.runstore import RunState, RunStore

# Absolute: AppTest resolves a relative path against this test file, not the working directory.
ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "pages" / "compare.py"
MIB = 1024**2
DONE_ID = "20240101-120000-compare-minilm-abc123"
RUNNING_ID = "20240102-120000-compare-minilm-def456"
FAILED_ID = "20240103-120000-compare-minilm-aaa111"
HOLDER = "20240101-000000-holder-ffffff"


def _row(technique: str, host_mib: int, step_time_s: float, label: str, timed: int = 4) -> dict:
    return {
        "technique": technique, "status": "measured", "reason": None, "run_id": f"run-{technique}",
        "estimate": {"label": label, "per_gpu_total_bytes": 0, "host_total_bytes": (host_mib + 20) * MIB},
        "measured": {
            "peak_gpu_bytes": None, "peak_gpu_bytes_per_device": {}, "peak_host_rss_bytes": host_mib * MIB,
            "step_time_s": step_time_s, "samples_per_s": 8 / step_time_s, "timed_steps": timed,
        },
        "host_estimate_error": 20 / host_mib,
    }  # fmt: skip


CONFIG = {"model": DEFAULT_MODEL, "task": "ner", "techniques": ["baseline", "zero2", "fp16"], "steps": 6,
          "batch_size": 8, "seq_len": 128}  # fmt: skip
ENVIRONMENT = {"date": "2024-01-01 12:00", "machine": "Linux-test-x86_64", "cpu_cores": 2,
               "host_ram_bytes": 8 * GIB, "gpus": [], "measured_on": "cpu",
               "versions": {"torch": "2.4.0", "deepspeed": "0.15.0", "accelerate": "1.0.0",
                            "transformers": "4.45.0", "peft": None}}  # fmt: skip
RESULT = {
    "config": CONFIG,
    "environment": ENVIRONMENT,
    "rows": [
        _row("baseline", 900, 0.5, "ZeRO-0"),
        _row("zero2", 700, 0.8, "ZeRO-2"),
        {"technique": "fp16", "status": "skipped", "run_id": None,
         "reason": "fp16 mixed precision needs a GPU (CPU autocast supports bf16 only)"},
    ],
}  # fmt: skip


def _page() -> AppTest:
    return AppTest.from_file(PAGE, default_timeout=120).run()


def _charts(at: AppTest) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def _costs(at: AppTest):
    (table,) = at.table
    return table.value.set_index("instance")


@pytest.fixture
def cpu_held(home):
    """A live run (this process) holds the CPU: queued technique runs wait and never start."""
    store = RunStore()
    me = psutil.Process()
    store.create_run(HOLDER, name="holder", spec={}, run_dir=str(paths.run_dir(HOLDER)))
    store.update_run(HOLDER, pid=me.pid, pid_create_time=me.create_time())
    store.set_state(HOLDER, RunState.RUNNING)
    yield store
    for entry in store.queue_entries():  # nothing of ours may ever start after the test
        store.queue_remove(entry.run_id)
        store.set_state(entry.run_id, RunState.STOPPED)
    store.set_state(HOLDER, RunState.SUCCEEDED)


def _technique_run(store: RunStore, run_id: str, state: RunState, step: int = 0) -> None:
    folder = paths.run_dir(run_id)
    folder.mkdir(parents=True, exist_ok=True)
    store.create_run(run_id, name=run_id, spec={"deepspeed": "on"}, run_dir=str(folder))
    if state is RunState.QUEUED:
        store.queue_add(run_id, ["cpu"])
        return
    me = psutil.Process()  # recorded as this process: alive, so refresh leaves it running
    store.update_run(run_id, pid=me.pid, pid_create_time=me.create_time(), last_step=step)
    store.set_state(run_id, state)


def _plan(comparison_id: str, rows: list[tuple[str, str | None]]) -> None:
    plan = {"config": CONFIG, "environment": ENVIRONMENT, "created_at": 0,
            "rows": [{"technique": t, "run_id": r, "reason": None} for t, r in rows]}  # fmt: skip
    (comparisons_dir() / f"{comparison_id}.runs.json").write_text(json.dumps(plan))


def test_empty_home_renders_a_form_that_enter_does_not_submit_and_the_cost_view(home):
    at = _page()
    assert not at.exception
    assert any("No comparisons yet" in i.value for i in at.info)
    assert at.multiselect(key="compare_techniques").value == [
        "baseline",
        "zero2",
        "zero3",
        "zero3-offload",
        "lora",
    ]
    assert at.selectbox(key="compare_model").value == DEFAULT_MODEL
    assert at.number_input(key="compare_steps").value == 6  # 4 timed steps after the 2 warm-up ones
    # Enter in a field of the form must not start anything (it started four comparisons before)
    (form,) = [b for b in at.main.children.values() if b.type == "form"]
    assert form.proto.form.form_id == "compare_form" and form.proto.form.enter_to_submit is False
    assert not at.get("plotly_chart")
    # Cost view: one row per instance of the shipped catalogue, none with a measured throughput.
    instances, _ = load_instances()
    costs = _costs(at)
    assert sorted(costs.index) == sorted(i.name for i in instances)
    assert (
        costs.loc["cpu-16-64", "hours"] == "—"
        and "needs a throughput measured on a CPU" in costs.loc["cpu-16-64", "throughput"]
    )
    assert all(costs.loc[i.name, "throughput"].startswith("FLOPs model") for i in instances if i.gpus)
    assert all(
        i.source in costs.loc[i.name, "price"] and i.price_date in costs.loc[i.name, "price"]
        for i in instances
    )
    assert at.number_input(key="compare_cost_samples_none").value is None
    assert any("deployment/instances.yaml" in c.value and "example prices" in c.value for c in at.caption)


@pytest.mark.parametrize("browser", [None, "/usr/bin/chromium"])
def test_done_comparison_shows_charts_table_reasons_and_downloads(home, monkeypatch, browser):
    """PNG downloads are offered when kaleido has a Chromium to drive; otherwise the page says how
    to save a chart with its camera button."""
    from nexa_core import bench_report

    monkeypatch.setattr(bench_report, "png_browser", lambda: browser)
    save_comparison(DONE_ID, RESULT)
    at = _page()
    assert not at.exception
    assert at.selectbox(key="compare_pick").value == DONE_ID
    memory, slowdown = _charts(at)
    assert "measured vs estimated" in memory["layout"]["title"]["text"]
    assert [t["x"] for t in memory["data"]] == [["baseline", "zero2"]] * 2
    assert slowdown["data"][0]["y"] == [1.0, pytest.approx(1.6)]
    assert "median of 4 timed steps" in slowdown["layout"]["title"]["text"]
    table = at.dataframe[0].value
    assert list(table["technique"]) == ["baseline", "zero2", "fp16"]
    assert "peak host MiB (measured)" in table.columns and list(table["timed steps"])[:2] == [4, 4]
    assert any("fp16" in w.value and "needs a GPU" in w.value for w in at.warning)
    assert any("Linux-test-x86_64" in c.value and "deepspeed 0.15.0" in c.value for c in at.caption)
    assert any("camera" in c.value and "PNG" in c.value for c in at.caption) == (browser is None)
    downloads = at.get("download_button")
    assert len(downloads) == (2 if browser is None else 4)


def test_a_cpu_measured_comparison_times_only_cpu_instances_by_it_and_gpus_by_flops(home):
    """Before, the CPU's baseline samples/s was applied to every instance: 8×H100 took as long as the
    2-core CPU (172 h for 10^8 tokens at 1.26 samples/s) and cost more than 1×L4."""
    slow = {**RESULT, "rows": [_row("baseline", 900, 8 / 1.26, "ZeRO-0")]}
    save_comparison(DONE_ID, slow)
    at = _page()
    assert not at.exception
    assert at.number_input(key=f"compare_cost_samples_{DONE_ID}").value == pytest.approx(1.26)
    assert at.selectbox(key=f"compare_cost_device_{DONE_ID}").value == "cpu"
    costs = _costs(at)
    assert costs.loc["cpu-16-64", "hours"] == "172 h"
    assert costs.loc["cpu-16-64", "throughput"].startswith(
        "measured on cpu: 1.26 samples/s; baseline, 4 timed steps"
    )
    for name in ("1x-L4-24GB", "1x-A100-80GB", "8x-H100-80GB"):
        assert costs.loc[name, "throughput"].startswith("FLOPs model: 6·Ψ·tokens at 35% MFU"), name
        assert "another device type" in costs.loc[name, "throughput"]
    hours = {
        name: float(costs.loc[name, "hours"].removesuffix(" h")) for name in ("8x-H100-80GB", "1x-L4-24GB")
    }
    assert hours["8x-H100-80GB"] < hours["1x-L4-24GB"] < 1  # FLOPs: 22.6 M parameters, 10^8 tokens

    # A throughput said to be measured on an H100 applies to the H100 instances, scaled by their GPUs
    at.selectbox(key=f"compare_cost_device_{DONE_ID}").set_value("NVIDIA H100 80GB HBM3").run()
    costs = _costs(at)
    assert costs.loc["8x-H100-80GB", "throughput"].startswith(
        "measured on NVIDIA H100 80GB HBM3: 1.26 samples/s × 8"
    )
    assert costs.loc["1x-H100-80GB", "hours"] == "172 h" and costs.loc["8x-H100-80GB", "hours"] == "21.5 h"
    assert costs.loc["cpu-16-64", "hours"] == "—" and costs.loc["1x-L4-24GB", "throughput"].startswith(
        "FLOPs"
    )


def test_a_running_comparison_shows_the_current_technique_and_that_deepspeed_is_compiling(cpu_held, tmp_path):
    """DeepSpeed builds its CPU ops the first time, silently, for minutes: ninja among the run's
    processes (here a child of this process, which the run row names) is shown as compiling."""
    store = cpu_held
    _technique_run(store, "run-baseline", RunState.SUCCEEDED)
    _technique_run(store, "run-zero2", RunState.RUNNING, step=0)
    _technique_run(store, "run-lora", RunState.QUEUED)
    _plan(RUNNING_ID, [("baseline", "run-baseline"), ("zero2", "run-zero2"), ("lora", "run-lora")])
    at = _page()
    bars = [p.proto.text for p in at.get("progress") if "techniques measured" in p.proto.text]
    assert bars == ["1 of 3 techniques measured · now: zero2, starting: loading the model and data (the first "
                    "DeepSpeed run on a machine also builds its CPU ops: minutes)"]  # fmt: skip
    (tmp_path / "ninja").symlink_to(shutil.which("sleep"))
    build = subprocess.Popen([str(tmp_path / "ninja"), "60"])
    try:
        at = _page()
    finally:
        build.kill()
        build.wait()
    assert not at.exception
    bars = [p.proto.text for p in at.get("progress") if "techniques measured" in p.proto.text]
    assert len(bars) == 1 and bars[0].startswith(
        "1 of 3 techniques measured · now: zero2, compiling DeepSpeed's CPU ops"
    )
    assert not at.get("plotly_chart") and not at.get("download_button")


def test_the_newest_running_comparison_opens_rather_than_a_newer_failed_one(cpu_held):
    store = cpu_held
    _technique_run(store, "run-a", RunState.RUNNING, step=4)
    _plan(RUNNING_ID, [("baseline", "run-a")])
    _technique_run(store, "run-b", RunState.FAILED)
    _plan(FAILED_ID, [("baseline", "run-b")])  # newer, and failed
    assert [c["state"] for c in list_comparisons()] == ["failed", "running"]
    at = _page()
    assert not at.exception
    assert at.selectbox(key="compare_pick").value == RUNNING_ID
    bars = [p.proto.text for p in at.get("progress") if "techniques measured" in p.proto.text]
    assert bars == ["0 of 1 techniques measured · now: baseline, timed step 2 of 4"]


def test_a_comparison_whose_runs_vanished_is_failed_not_running_forever(home):
    """The technique's process died (an OOM kill, a reboot): refresh marks its run failed, and the
    comparison ends with why instead of showing progress forever."""
    store = RunStore()
    folder = paths.run_dir("run-gone")
    folder.mkdir(parents=True)
    store.create_run("run-gone", name="gone", spec={}, run_dir=str(folder))
    store.update_run("run-gone", pid=2**22 - 3, pid_create_time=1.0, last_step=3)
    store.set_state("run-gone", RunState.RUNNING)
    _plan(RUNNING_ID, [("baseline", "run-gone")])
    at = _page()
    assert not at.exception
    assert any("no technique was measured" in e.value and "vanished" in e.value for e in at.error)
    assert not [p for p in at.get("progress") if "techniques measured" in p.proto.text]


def test_no_techniques_is_an_error_and_starts_nothing(home):
    at = _page()
    at.multiselect(key="compare_techniques").set_value([])
    at.button(key="compare_run").click().run()
    assert not at.exception
    assert len(at.error) == 1 and "techniques" in at.error[0].value
    assert list_comparisons() == []
    assert "compare_id" not in at.session_state


@pytest.mark.slow
def test_one_click_queues_one_run_per_technique_with_the_typed_values_and_a_double_click_no_second(cpu_held):
    store = cpu_held
    at = _page()
    at.multiselect(key="compare_techniques").set_value(["baseline", "lora"])
    at.number_input(key="compare_steps").set_value(5)
    at.number_input(key="compare_batch").set_value(2)
    at.number_input(key="compare_seq").set_value(32)
    at.button(key="compare_run").click().run()
    assert not at.exception
    (listed,) = list_comparisons()
    assert listed["state"] == "running" and at.session_state["compare_id"] == listed["id"]
    assert any(s.value.startswith(f"Queued comparison {listed['id']}") for s in at.success)
    plan = json.loads((comparisons_dir() / f"{listed['id']}.runs.json").read_text())
    assert (plan["config"]["steps"], plan["config"]["batch_size"], plan["config"]["seq_len"]) == (5, 2, 32)
    waiting = [e.run_id for e in store.queue_entries()]
    assert waiting == [r["run_id"] for r in plan["rows"]]  # both techniques wait behind the busy CPU
    assert [store.get_run(r)["spec"]["max_steps"] for r in waiting] == [5, 5]
    bars = [p.proto.text for p in at.get("progress") if "techniques measured" in p.proto.text]
    assert bars and f"waiting in the queue (position 1, behind run {HOLDER})" in bars[0]

    at.button(key="compare_run").click().run()  # the same values again at once: a double click
    assert not at.exception
    assert len(list_comparisons()) == 1 and len(store.queue_entries()) == 2
    assert any("was not started twice" in s.value for s in at.success)
