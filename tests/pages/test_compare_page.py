"""The Compare page, driven with AppTest over comparisons saved by hand (no bench run, no training)."""

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from nexa_core.bench import list_comparisons, save_comparison, save_progress
from nexa_core.costs import load_instances
from nexa_core.memory import GIB
from nexa_core.models import DEFAULT_MODEL

# Absolute: AppTest resolves a relative path against this test file, not the working directory.
ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "pages" / "compare.py"
MIB = 1024**2
DONE_ID = "20240101-120000-compare-minilm-abc123"
RUNNING_ID = "20240102-120000-compare-minilm-def456"


def _row(technique: str, host_mib: int, step_time_s: float, label: str) -> dict:
    return {
        "technique": technique, "status": "measured", "reason": None, "run_id": f"run-{technique}",
        "estimate": {"label": label, "per_gpu_total_bytes": 0, "host_total_bytes": (host_mib + 20) * MIB},
        "measured": {
            "peak_gpu_bytes": None, "peak_gpu_bytes_per_device": {}, "peak_host_rss_bytes": host_mib * MIB,
            "step_time_s": step_time_s, "samples_per_s": 8 / step_time_s,
        },
        "host_estimate_error": 20 / host_mib,
    }  # fmt: skip


RESULT = {
    "config": {"model": DEFAULT_MODEL, "task": "ner", "techniques": ["baseline", "zero2", "fp16"],
               "steps": 6, "batch_size": 8, "seq_len": 128},
    "environment": {"date": "2024-01-01 12:00", "machine": "Linux-test-x86_64", "cpu_cores": 2,
                    "host_ram_bytes": 8 * GIB, "gpus": [],
                    "versions": {"torch": "2.4.0", "deepspeed": "0.15.0", "accelerate": "1.0.0",
                                 "transformers": "4.45.0", "peft": None}},
    "rows": [
        _row("baseline", 900, 0.5, "ZeRO-0"),
        _row("zero2", 700, 0.8, "ZeRO-2"),
        {"technique": "fp16", "status": "skipped", "run_id": None,
         "reason": "fp16 mixed precision needs a GPU (CPU autocast supports bf16 only)"},
    ],
}  # fmt: skip


def _page() -> AppTest:
    return AppTest.from_file(PAGE, default_timeout=60).run()


def _charts(at: AppTest) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def test_empty_home_renders_form_and_cost_view(home):
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
    assert not at.get("plotly_chart")
    # Cost view: one row per instance of the shipped catalogue, with no measured throughput.
    instances, _ = load_instances()
    table = at.dataframe[0].value
    assert sorted(table["instance"]) == sorted(i.name for i in instances)
    assert {"fits", "recommended", "hours", "cost", "throughput_source"} <= set(table.columns)
    assert all(s.startswith("estimated") for s in table["throughput_source"])
    assert at.number_input(key="compare_cost_samples_none").value is None
    assert any("deployment/instances.yaml" in c.value and "example prices" in c.value for c in at.caption)


@pytest.mark.parametrize("browser", [None, "/usr/bin/chromium"])
def test_done_comparison_shows_charts_table_reasons_and_downloads(home, monkeypatch, browser):
    """PNG downloads are offered when kaleido has a Chromium to drive; otherwise the page says how
    to save a chart with its camera button."""
    from nexa_core import bench_report

    monkeypatch.setattr(bench_report, "png_browser", lambda: browser)
    save_progress(DONE_ID, 3, 3, "done")
    save_comparison(DONE_ID, RESULT)
    at = _page()
    assert not at.exception
    assert at.selectbox(key="compare_pick").value == DONE_ID
    memory, slowdown = _charts(at)
    assert "measured vs estimated" in memory["layout"]["title"]["text"]
    assert [t["x"] for t in memory["data"]] == [["baseline", "zero2"]] * 2
    assert slowdown["data"][0]["y"] == [1.0, pytest.approx(1.6)]
    table = at.dataframe[0].value
    assert list(table["technique"]) == ["baseline", "zero2", "fp16"]
    assert "peak host MiB (measured)" in table.columns and "host MiB (estimated)" in table.columns
    assert any("fp16" in w.value and "needs a GPU" in w.value for w in at.warning)
    assert any("Linux-test-x86_64" in c.value and "deepspeed 0.15.0" in c.value for c in at.caption)
    assert any("camera" in c.value and "PNG" in c.value for c in at.caption) == (browser is None)
    downloads = at.get("download_button")
    assert len(downloads) == (2 if browser is None else 4)
    # The cost view takes the baseline's measured throughput by default.
    assert at.number_input(key=f"compare_cost_samples_{DONE_ID}").value == pytest.approx(16.0)
    costs = at.dataframe[1].value
    assert set(costs["throughput_source"]) == {"measured"}


def test_running_comparison_shows_progress(home):
    save_progress(RUNNING_ID, 1, 5, "zero2")
    at = _page()
    assert not at.exception
    bars = [p for p in at.get("progress") if "techniques measured" in p.proto.text]
    assert len(bars) == 1
    assert "1 of 5" in bars[0].proto.text and "zero2" in bars[0].proto.text
    assert not at.get("plotly_chart") and not at.get("download_button")


def test_failed_comparison_shows_why(home):
    save_progress(RUNNING_ID, 0, 5, "failed: RuntimeError: boom")
    at = _page()
    assert not at.exception
    assert any("RuntimeError: boom" in e.value for e in at.error)


def test_no_techniques_is_an_error_and_starts_nothing(home):
    at = _page()
    before = list_comparisons()
    at.multiselect(key="compare_techniques").set_value([])
    at.button(key="compare_run").click().run()
    assert not at.exception
    assert len(at.error) == 1 and "techniques" in at.error[0].value
    assert list_comparisons() == before == []
    assert "compare_id" not in at.session_state


def test_comparison_whose_bench_process_died_is_failed_not_running_forever(home):
    import subprocess

    bench = subprocess.Popen(["sleep", "30"])
    save_progress(RUNNING_ID, 1, 5, "zero2", pid=bench.pid)
    assert list_comparisons()[0]["state"] == "running"
    bench.kill()  # an OOM kill or a reboot: the bench never writes its result
    bench.wait()
    assert list_comparisons()[0]["state"] == "failed"
    at = _page()
    assert not at.exception
    assert any("ended without a result" in e.value for e in at.error)
    assert not [p for p in at.get("progress") if "techniques measured" in p.proto.text]
