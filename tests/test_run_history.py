"""nexa_core/run_history: the Runs table's rows, search and filters, tags and notes, the parameter table."""

from __future__ import annotations

import pytest

from nexa_core import run_history, runs
from nexa_core.errors import ConfigError
from nexa_core.memory import GIB
from nexa_core.runstore import RunState, RunStore


@pytest.fixture
def store(tmp_path):
    return RunStore(tmp_path / "runs.sqlite")


def _summary(**fields) -> dict:
    base = {"run_id": "r1", "name": "r1", "state": "succeeded", "model": "org/model", "task": "ner",
            "zero_stage": None, "offload_optimizer": None, "offload_param": None, "estimate": None,
            "measured": {}, "final_loss": None, "f1": None, "accuracy": None, "perplexity": None,
            "duration_s": None, "step": 0, "total_steps": None, "tags": [], "slurm": None}  # fmt: skip
    return {**base, **fields}


def test_history_rows_are_text_without_none_or_defaults():
    """Issue 17: the table showed literal 'None', 'opt default / param default' and needed sideways
    scrolling for the memory peaks."""
    rows = run_history.history_rows([
        _summary(zero_stage=2, duration_s=12.3, step=5, total_steps=5, final_loss=0.41234, f1=0.8531,
                 estimate={"host_total_bytes": 2 * GIB, "per_gpu_total_bytes": 0, "label": "ZeRO-2"},
                 measured={"peak_host_rss_bytes": GIB, "peak_gpu_bytes": {}}, tags=["b", "a"]),
        _summary(run_id="r2", name=None, state="failed", model=None, task=None),  # nothing recorded yet
    ])  # fmt: skip
    first, second = rows
    assert first == {"run": "r1", "state": "succeeded", "tags": "b, a", "model": "model", "task": "ner",
                     "layout": "ZeRO-2", "step": "5/5", "time": "12s", "host GiB peak / est.": "1.00 / 2.00",
                     "loss": "0.4123", "score": "F1 0.853"}  # fmt: skip
    assert second["run"] == "r2" and second["host GiB peak / est."] == "" and second["layout"] == ""
    cells = [v for row in rows for v in row.values()]
    assert all(isinstance(v, str) for v in cells)
    assert not any("None" in v or "default" in v for v in cells)
    assert len(first) <= 11  # no GPU or Slurm column when no run has one


def test_history_rows_show_gpu_memory_and_the_layout_from_the_spec():
    (row,) = run_history.history_rows([
        _summary(zero_stage=3, offload_optimizer="cpu", offload_param="none", accuracy=0.5,
                 measured={"peak_gpu_bytes": {"0": 3 * GIB, "1": 4 * GIB}})
    ])  # fmt: skip
    assert row["layout"] == "ZeRO-3 + optimizer→CPU" and row["GPU GiB peak / est."] == "4.00 / –"
    assert row["score"] == "acc 0.500"


def test_filters_search_tags_states_models_and_hide_bench_runs():
    summaries = [
        _summary(run_id="a", name="alpha", tags=["baseline", "lr"], note="first try with warmup"),
        _summary(run_id="b", name="beta", state="failed", model="gpt2", tags=["lr"]),
        _summary(run_id="c", name="bench zero3"),  # a Compare-page run
        _summary(run_id="d", name="probe b8"),  # a Plan-page probe
    ]
    ids = lambda found: [s["run_id"] for s in found]  # noqa: E731
    assert ids(run_history.filter_summaries(summaries)) == ["a", "b"]  # bench and probe runs hidden
    assert ids(run_history.filter_summaries(summaries, show_bench=True)) == ["a", "b", "c", "d"]
    assert ids(run_history.filter_summaries(summaries, search="WARMUP")) == ["a"]  # the note, any case
    assert ids(run_history.filter_summaries(summaries, search="lr gpt2")) == ["b"]  # every word
    assert ids(run_history.filter_summaries(summaries, tags=["lr"])) == ["a", "b"]
    assert ids(run_history.filter_summaries(summaries, tags=["lr", "baseline"])) == ["a"]
    assert ids(run_history.filter_summaries(summaries, states=["failed"])) == ["b"]
    assert ids(run_history.filter_summaries(summaries, models=["org/model"])) == ["a"]


def test_tags_and_a_note_are_kept_in_the_store_and_validated(store):
    store.create_run("r", name="r", spec={}, run_dir="", state=RunState.SUCCEEDED)
    assert run_history.set_tags(store, "r", add=["lr-sweep", "baseline"]) == ["baseline", "lr-sweep"]
    assert run_history.set_tags(store, "r", add=["v2"], remove=["baseline"]) == ["lr-sweep", "v2"]
    assert run_history.set_tags(store, "r", add=["only"], replace=True) == ["only"]
    with pytest.raises(ConfigError) as bad:
        run_history.set_tags(store, "r", add=["has space", "-x", "ok"])
    assert len(bad.value.problems) == 2 and "'has space' is not a tag" in bad.value.problems[0]
    assert store.get_run("r")["tags"] == ["only"]  # nothing kept from a refused change
    assert run_history.set_note(store, "r", "  tried lr 1e-4\nloss flat  ") == "tried lr 1e-4\nloss flat"
    assert runs.summary(store, store.get_run("r"))["note"] == "tried lr 1e-4\nloss flat"
    assert run_history.set_note(store, "r", "") is None and store.get_run("r")["note"] is None
    with pytest.raises(ConfigError, match="at most 2000"):
        run_history.set_note(store, "r", "x" * 2001)
    with pytest.raises(ConfigError, match="no run 'nope'"):
        run_history.set_tags(store, "nope", add=["a"])


def test_param_table_names_the_fields_that_differ():
    rows, differing = run_history.param_table([
        {"id": "a", "name": "alpha", "spec": {"model": "m", "lr": 5e-5, "lora": False, "dataset": "/u/x-d.jsonl"}},
        {"id": "b", "name": None, "spec": {"model": "m", "lr": 1e-4, "lora": False, "seed": 3}},
    ])  # fmt: skip
    assert differing == ["lr", "dataset", "seed"]
    assert rows[0] == {"run": "alpha", "model": "m", "lr": "5e-05", "lora": "false", "dataset": "x-d.jsonl",
                       "seed": ""}  # fmt: skip
    assert rows[1]["run"] == "b" and rows[1]["seed"] == "3"


def test_nexa_runs_tag_note_and_list_filters(tmp_path, monkeypatch, capsys):
    from nexa_core.cli import main

    monkeypatch.setenv("NEXA_HOME", str(tmp_path / "home"))
    store = RunStore()
    for run_id, model in (("run-a", "m1"), ("run-b", "m2")):
        store.create_run(run_id, name=run_id, spec={"model": model}, run_dir="", state=RunState.SUCCEEDED)
    assert main(["runs", "tag", "run-a", "baseline", "lr"]) == 0
    assert capsys.readouterr().out.strip() == "baseline lr"
    assert main(["runs", "tag", "run-a", "--remove", "lr", "--json"]) == 0
    assert capsys.readouterr().out.strip() == '["baseline"]'
    assert (
        main(["runs", "note", "run-b", "loss", "went", "flat"]) == 0
        and "loss went flat" in capsys.readouterr().out
    )
    assert main(["runs", "note", "run-b"]) == 0 and capsys.readouterr().out.strip() == "loss went flat"
    assert main(["runs", "list", "--tag", "baseline"]) == 0
    listed = capsys.readouterr().out
    assert "run-a" in listed and "#baseline" in listed and "run-b" not in listed
    assert main(["runs", "list", "--search", "FLAT", "--model", "m2"]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()] == ["run-b"]
    assert main(["runs", "tag", "run-a", "bad tag"]) == 2
    assert "tags (--tag): 'bad tag' is not a tag" in capsys.readouterr().err
    assert main(["runs", "note", "run-b", ""]) == 0 and store.get_run("run-b")["note"] is None
    assert main(["runs", "list", "--state", "done"]) == 2
    assert (
        "state (--state): 'done' is not a run state; choose one of queued, running" in capsys.readouterr().err
    )
