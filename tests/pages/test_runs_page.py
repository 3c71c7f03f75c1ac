"""The Runs page, driven with AppTest over a store filled by hand (no training)."""

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from nexa_core import paths
from nexa_core.memory import GIB
from nexa_core.runstore import RunState, RunStore

# Absolute: AppTest resolves a relative path against this test file, not the working directory.
ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "pages" / "runs.py"


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A comparison's run, two finished runs with curves and folders, one failed run, and a folder
    that is no run's."""
    monkeypatch.setenv("NEXA_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(ROOT)
    store = RunStore()
    store.create_run("run-bench", name="bench zero3", run_dir="", state=RunState.SUCCEEDED,
                     spec={"model": "m", "task": "ner", "zero_stage": 3})  # fmt: skip
    for run_id, name, steps, state in (
        ("run-a", "alpha", 4, RunState.SUCCEEDED),
        ("run-b", "beta", 6, RunState.SUCCEEDED),
        ("run-c", "gamma", 2, RunState.FAILED),
    ):
        folder = paths.run_dir(run_id)
        (folder / "checkpoints").mkdir(parents=True)
        (folder / "run.log").write_text("log\n")
        store.create_run(
            run_id, name=name, run_dir=str(folder), state=RunState.RUNNING,
            spec={"model": "m", "task": "ner", "zero_stage": 2, "max_steps": steps, "lr": 1e-4 * steps},
            estimate={"label": "ZeRO-2", "host_total_bytes": 3 * GIB, "per_gpu_total_bytes": 0},
        )  # fmt: skip
        for step in range(1, steps + 1):
            store.log_metrics(run_id, step, {"loss": 1.0 / step})
        store.log_memory(
            run_id, [{"t": 10.0 + i, "rank": 0, "host": "h", "rss_bytes": (i + 1) * GIB} for i in range(3)]
        )
        store.set_state(
            run_id, state, reason="exit code 1: ValueError: boom" if state is RunState.FAILED else None
        )
    (paths.runs_root() / "not-a-run").mkdir()
    return store


def _page() -> AppTest:
    return AppTest.from_file(PAGE, default_timeout=60).run()


def test_lists_every_run_with_measured_and_estimated_memory(home):
    at = _page()
    assert not at.exception
    table = at.dataframe[0].value
    assert list(table["run"]) == ["gamma", "beta", "alpha"]  # newest first; the comparison's run hidden
    assert list(table["state"]) == ["failed", "succeeded", "succeeded"]
    assert list(table["host GiB peak / est."]) == ["3.00 / 3.00"] * 3
    assert list(table["loss"]) == ["0.5000", "0.1667", "0.2500"]
    assert not at.get("plotly_chart")  # nothing selected yet


def test_the_table_has_no_none_or_default_cells_and_no_empty_columns(home):
    """Issue 17: literal 'None', 'opt default / param default', and columns that pushed the memory
    peaks off screen."""
    home.create_run("bare", name="bare", spec={}, run_dir="", state=RunState.FAILED)  # nothing recorded
    table = _page().dataframe[0].value
    cells = [str(v) for v in table.to_numpy().ravel()]
    assert not [c for c in cells if c in ("None", "nan") or "default" in c]
    assert "GPU GiB peak / est." not in table.columns and "where" not in table.columns  # no run has them
    assert len(table.columns) <= 11


def test_bench_runs_are_hidden_until_asked_for_and_the_filters_narrow_the_table(home):
    at = _page()
    at.toggle(key="runs_show_bench").set_value(True).run()
    assert list(at.dataframe[0].value["run"]) == ["gamma", "beta", "alpha", "bench zero3"]
    at.toggle(key="runs_show_bench").set_value(False)
    at.text_input(key="runs_search").input("BETA").run()
    assert list(at.dataframe[0].value["run"]) == ["beta"]
    at.text_input(key="runs_search").input("")
    at.multiselect(key="runs_states").set_value(["succeeded"]).run()
    assert list(at.dataframe[0].value["run"]) == ["beta", "alpha"]
    assert any("2 of 4 runs shown" in c.value for c in at.caption)


def test_tags_and_a_note_are_saved_shown_and_filtered_on(home):
    at = _page()
    at.multiselect(key="runs_pick").set_value(["run-a"]).run()
    at.multiselect(key="runs_tags_run-a").set_value(["baseline", "lr-sweep"])
    at.text_area(key="runs_note_run-a").input("warmup helped")
    at.button(key="FormSubmitter:runs_labels_run-a-Save tags and note").click().run()
    assert not at.exception and any("Saved the tags and note of run run-a" in s.value for s in at.success)
    run = home.get_run("run-a")
    assert (run["tags"], run["note"]) == (["baseline", "lr-sweep"], "warmup helped")
    table = at.dataframe[0].value
    assert table.loc[table["run"] == "alpha", "tags"].item() == "baseline, lr-sweep"
    at.multiselect(key="runs_tags").set_value(["baseline"]).run()
    assert list(at.dataframe[0].value["run"]) == ["alpha"]
    at.multiselect(key="runs_tags").set_value([])
    at.text_input(key="runs_search").input("warmup").run()  # the note is searched too
    assert list(at.dataframe[0].value["run"]) == ["alpha"]


def test_a_bad_tag_is_refused_with_the_rule(home):
    at = _page()
    at.multiselect(key="runs_pick").set_value(["run-a"]).run()
    at.multiselect(key="runs_tags_run-a").set_value(["two words"])
    at.button(key="FormSubmitter:runs_labels_run-a-Save tags and note").click().run()
    assert "'two words' is not a tag" in at.error[0].value and home.get_run("run-a")["tags"] is None


def test_the_parameters_of_selected_runs_name_what_differs(home):
    at = _page()
    at.multiselect(key="runs_pick").set_value(["run-a", "run-b"]).run()
    params = at.dataframe[1].value
    assert list(params.columns) == ["run", "max_steps", "lr"] and list(params["run"]) == ["alpha", "beta"]
    assert any(c.value == "Fields that differ: max_steps, lr" for c in at.caption)
    at.toggle(key="runs_params_all").set_value(True).run()
    assert {"model", "task", "zero_stage"} <= set(at.dataframe[1].value.columns)


def test_validation_curves_are_overlaid(home):
    for run_id, f1 in (("run-a", 0.4), ("run-b", 0.7)):
        home.log_metrics(run_id, 2, {"eval_f1": f1 / 2, "eval_loss": 1.0})
        home.log_metrics(run_id, 4, {"eval_f1": f1, "eval_loss": 0.5})
    at = _page()
    at.multiselect(key="runs_pick").set_value(["run-a", "run-b"]).run()
    assert at.selectbox(key="runs_metric_right").value == "eval_f1"
    evaluation = json.loads(at.get("plotly_chart")[1].proto.spec)
    assert evaluation["layout"]["title"]["text"] == "Validation F1"
    assert [t["y"] for t in evaluation["data"]] == [[0.2, 0.4], [0.35, 0.7]]


def test_overlay_of_two_runs(home):
    at = _page()
    at.multiselect(key="runs_pick").set_value(["run-a", "run-b"]).run()
    assert not at.exception
    charts = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    assert len(charts) == 2
    loss, memory = charts
    assert [len(t["x"]) for t in loss["data"]] == [4, 6]
    assert [t["y"] for t in memory["data"]] == [[1.0, 2.0, 3.0]] * 2
    assert [b.key for b in at.button if b.key.startswith("runs_resume")] == []  # succeeded: nothing to resume
    assert loss["layout"]["yaxis"]["type"] == "linear"
    at.toggle(key="runs_log_y").set_value(True).run()
    loss = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert loss["layout"]["yaxis"]["type"] == "log" and [len(t["x"]) for t in loss["data"]] == [4, 6]


def test_a_failed_run_can_be_resumed(home):
    at = _page()
    at.multiselect(key="runs_pick").set_value(["run-c"]).run()
    assert [b.key for b in at.button if b.key.startswith("runs_resume")] == [
        "runs_resume_run-c"
    ]  # not pressed
    assert any("ValueError: boom" in c.value for c in at.caption)


def test_delete_needs_the_confirmation_and_removes_only_that_runs_folder(home):
    at = _page()
    at.multiselect(key="runs_pick").set_value(["run-a"]).run()
    delete = at.button(key="runs_delete_run-a")
    assert delete.disabled
    at.checkbox(key="runs_confirm_run-a").check().run()
    assert not at.button(key="runs_delete_run-a").disabled
    at.button(key="runs_delete_run-a").click().run()
    assert not at.exception
    assert any("Deleted run run-a; its folder was removed" in s.value for s in at.success)
    assert home.get_run("run-a") is None and home.metrics("run-a") == {}
    root = paths.runs_root()
    assert sorted(p.name for p in root.iterdir()) == ["not-a-run", "run-b", "run-c"]
    assert list(at.dataframe[0].value["run"]) == ["gamma", "beta"]
    assert at.multiselect(key="runs_pick").value == []


def test_no_runs_yet(tmp_path, monkeypatch):
    monkeypatch.setenv("NEXA_HOME", str(tmp_path / "home"))
    at = _page()
    assert not at.exception and "No runs yet" in at.info[0].value


def test_clone_opens_launch_with_the_runs_configuration(home):
    """A past run's configuration (its run_config.json and spec.json) comes back on the Launch
    page, through the router as in the app, ready to launch as a new run."""
    from nexa_core.launch import RunSpec
    from nexa_core.scaling import write_launch_files
    from nexa_core.train_config import RUN_CONFIG, TrainConfig

    folder = paths.run_dir("run-b")
    train = TrainConfig(task="classification", batch_size=2, seq_len=48, max_steps=6, lora=True, lora_rank=4,
                        deepspeed="on", zero_stage=3, seed=11, name="beta")  # fmt: skip
    train.write(folder / RUN_CONFIG)
    write_launch_files(RunSpec(train, "torchrun", 2), folder, has_gpu=False)
    at = AppTest.from_file(ROOT / "app.py", default_timeout=60)
    at.switch_page("pages/runs.py").run()
    at.multiselect(key="runs_pick").set_value(["run-b"]).run()
    at.button(key="runs_clone_run-b").click().run()
    assert not at.exception and not at.error
    assert at.title[0].value == "Launch a training run"
    assert at.selectbox(key="launch_task").value == "classification"
    assert (
        at.number_input(key="launch_max_steps").value == 6
        and at.radio(key="launch_length").value == "max steps"
    )
    assert at.checkbox(key="launch_lora").value and at.selectbox(key="launch_stage").value == 3
    assert (
        at.selectbox(key="launch_mode").value == "torchrun" and at.number_input(key="launch_nproc").value == 2
    )
    assert any("Starting from run run-b" in c.value for c in at.caption)
    assert any("seed=11" in c.value for c in at.caption)
    assert "--mode torchrun --nproc 2" in at.code[0].value and "--nproc_per_node 2" in at.code[1].value


def test_clone_of_a_run_without_its_files_says_so(home):
    at = AppTest.from_file(ROOT / "app.py", default_timeout=60)
    at.switch_page("pages/runs.py").run()
    at.multiselect(key="runs_pick").set_value(["run-a"]).run()
    at.button(key="runs_clone_run-a").click().run()
    assert not at.exception and at.title[0].value == "Launch a training run"
    assert "run 'run-a'" in at.error[0].value  # run-a's folder has no run_config.json
