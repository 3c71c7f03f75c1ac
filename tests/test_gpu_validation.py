"""The GPU validation kit: its case matrix covers what the issue asks, its time estimate fits the
budget, and its --dry-run (the same code path on CPU) runs end to end, so it never rots."""

import json

import pytest

from benchmarks import gpu_validation as gv
from nexa_core.enums import Task
from nexa_core.gpu_metrics import GpuMetric, comparable_bytes
from nexa_core.models import size_model


def test_case_matrix_covers_the_layouts_techniques_and_sizes(tmp_path):
    names = [c.name for c in gv.CASES]
    assert len(set(names)) == len(names)
    layouts = [gv.layout_of(c.train) for c in gv.CASES]
    deepspeed = [str(c.train.deepspeed) == "on" for c in gv.CASES]
    assert {lay[0] for lay, on in zip(layouts, deepspeed) if on} >= {0, 2, 3}
    assert any(lay[1] for lay in layouts) and any(lay[2] for lay in layouts)  # both offloads
    assert (
        sum(lay[1] or lay[2] for lay in layouts) < len(layouts) / 2
    )  # the template's offloads do not leak in
    trains = [c.train for c in gv.CASES]
    assert any(t.lora for t in trains) and any(t.gradient_checkpointing for t in trains)
    assert {str(t.precision) for t in trains} >= {"bf16", "fp32"} and not all(deepspeed)
    assert all(t.random_init and t.pad_to_seq_len and not t.save and t.max_steps >= 3 for t in trains)
    params = {}
    for i, case in enumerate(gv.CASES):
        config = gv.case_config(case, dry_run=False)
        assert config["model_type"] in gv.TINY  # every model has a --dry-run shape
        if config["model_type"] == "llama":
            assert config["num_key_value_heads"] < config["num_attention_heads"]  # GQA
        folder = tmp_path / str(i)
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps(config))
        params[case.name] = gv.plan_for(case, folder, False, 80)[0].size.params
    assert any(0.08e9 < p < 0.2e9 for p in params.values())
    assert any(0.25e9 < p < 0.5e9 for p in params.values())
    assert any(0.9e9 < p < 1.5e9 for p in params.values())
    llama_small = next(c for c in gv.CASES if c.overrides)
    assert 0.08e9 < params[llama_small.name] < 0.2e9  # the scaled-down Llama is ~0.1B


def test_estimated_device_time_fits_the_budget():
    total = gv.jit_seconds(gv.CASES, False)
    for case in gv.CASES:
        total += gv.estimated_seconds(
            case, size_model(case.train.model, Task.CAUSAL_LM, 7, None).params, False
        )
    assert total < gv.BUDGET_S


@pytest.mark.slow
def test_dry_run_measures_every_case_and_compares_with_the_planner(tmp_path, capsys):
    out = tmp_path / "dry.json"
    assert gv.main(["--dry-run", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["dry_run"] is True and data["environment"]["torch"] and data["date"]
    expected = [c for c in gv.CASES if c.dry_run]
    assert [r["case"]["name"] for r in data["cases"]] == [c.name for c in expected]
    for row, case in zip(data["cases"], expected):
        res = row["result"]
        assert "error" not in res, res
        assert [s["step"] for s in res["steps"]] == [1, 2]  # a measurement per optimizer step
        assert res["peak_rss_bytes"] > 100 * 2**20
        assert res["deepspeed"] is (str(case.train.deepspeed) == "on") and res["optimizer"]
        if gv.layout_of(case.train)[1]:
            assert "DeepSpeedCPUAdam" in res["optimizer"]
        assert row["estimate"]["host_total_bytes"] > 0 and row["errors"]["host_rss"] is not None
    printed = capsys.readouterr().out
    assert all(c.name in printed for c in expected) and "host_rss: median |error|" in printed


def test_gpu_report_compares_each_metric_with_its_share_of_the_estimate(tmp_path):
    """The GPU branch cannot run here; feed it what the worker writes on a GPU."""
    case = next(c for c in gv.CASES if c.name == "gpt2 bf16 zero2")
    (tmp_path / "config.json").write_text(json.dumps(gv.case_config(case, dry_run=False)))
    _, est = gv.plan_for(case, tmp_path, False, 80)
    live = comparable_bytes(est.per_gpu, GpuMetric.ALLOCATED)
    result = {
        "peak_allocated_bytes": live,  # exactly the live terms: 0 % error
        "peak_reserved_bytes": 2 * comparable_bytes(est.per_gpu, GpuMetric.RESERVED),  # -50 %
        "nvml_used_peak_bytes": None,  # NVML could not see the process
        "wall_s": 12.0,
    }
    errors = gv.compare(result, est, dry_run=False)
    assert errors["allocated"] == pytest.approx(0, abs=1e-9)
    assert errors["reserved"] == pytest.approx(-0.5)
    assert errors["nvml"] is None
    estimate = {
        "allocated_bytes": live,
        "reserved_bytes": comparable_bytes(est.per_gpu, GpuMetric.RESERVED),
        "per_gpu_total_bytes": est.per_gpu.total_bytes,
    }
    row = {"case": {"name": case.name}, "estimate": estimate, "result": result, "errors": errors}
    failed = {
        "case": {"name": "broken"},
        "estimate": estimate,
        "result": {"error": "exit 1: boom"},
        "errors": {},
    }
    text = gv.report([row, failed], dry_run=False)
    assert "+0.0%" in text and "-50.0%" in text and "broken" in text and "FAILED: exit 1: boom" in text
    assert "allocated: median |error| 0.0%" in text and "reserved: median |error| 50.0%" in text


def test_replan_puts_the_recorded_gpu_measurements_against_todays_planner(tmp_path, capsys):
    """The H200 results in benchmarks/results: every measured case planned anew, the measurement as
    recorded, the error from the new estimate; a failed case is left out."""
    recorded = sorted(gv.RESULTS.glob("gpu_validation-*-nvidia-h200-run*.json"))
    assert recorded, "the committed GPU results are missing"
    measured = [r for p in recorded for r in json.loads(p.read_text())["cases"] if "error" not in r["result"]]
    rows, dry = gv.replan(recorded)
    assert dry is False and [r["case"]["name"] for r in rows] == [r["case"]["name"] for r in measured]
    for row, old in zip(rows, measured):
        assert row["result"] == old["result"]
        allocated = row["result"]["peak_allocated_bytes"]
        assert row["errors"]["allocated"] == pytest.approx(row["estimate"]["allocated_bytes"] / allocated - 1)
    # a case planned today from its name gives what plan_for gives it
    first = next(c for c in gv.CASES if c.name == rows[0]["case"]["name"])
    (tmp_path / "config.json").write_text(json.dumps(gv.case_config(first, dry_run=False)))
    gpu_gb = json.loads(recorded[0].read_text())["environment"]["gpu_memory_bytes"] / 2**30
    _, est = gv.plan_for(first, tmp_path, False, gpu_gb)
    assert rows[0]["estimate"]["per_gpu_total_bytes"] == est.per_gpu.total_bytes

    assert gv.main(["--replan", *map(str, recorded)]) == 0
    assert "allocated: median |error|" in capsys.readouterr().out
    dry_file = tmp_path / "dry.json"
    dry_file.write_text(json.dumps({"dry_run": True, "environment": {}, "cases": []}))
    with pytest.raises(SystemExit):
        gv.main(["--replan", str(recorded[0]), str(dry_file)])
    assert "dry-run and GPU results files" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        gv.main(["--replan", str(tmp_path / "missing.json")])
    assert "no such results file" in capsys.readouterr().err
