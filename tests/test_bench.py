"""`nexa bench` on the packaged MiniLM: real short runs per technique, one process each."""

import json
import os
import re
import subprocess
import sys

import pytest

from nexa_core.bench import BenchConfig
from nexa_core.bench_report import figures, table_rows
from nexa_core.comparisons import compiling
from nexa_core.errors import ConfigError

pytestmark = pytest.mark.slow


def test_bench_measures_each_technique_and_writes_a_self_contained_report(nexa_home, tmp_path):
    """One ZeRO stage with offload and a GPU-only technique beside the baseline: each ZeRO stage,
    offload and LoRA is trained, and its engine layout read back, in tests/test_trainer.py; a LoRA
    run's estimate is held to its measurement in tests/test_estimate_accuracy.py."""
    # the report goes into a folder that does not exist yet: bench creates it before measuring
    report, table, pngs = tmp_path / "out" / "report.html", tmp_path / "table.csv", tmp_path / "png"
    out = subprocess.run(
        [sys.executable, "-m", "nexa_core", "bench", "sentence-transformers/all-MiniLM-L6-v2", "--task", "ner",
         "--techniques", "baseline,zero3-offload,fp16", "--steps", "4", "--batch-size", "4",
         "--seq-len", "32", "--json", "--report", str(report), "--csv", str(table), "--png-dir", str(pngs)],
        capture_output=True, text=True, timeout=1200, env=dict(os.environ, NEXA_HOME=str(nexa_home)),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)  # stdout holds the JSON document only (library chatter goes to stderr)
    rows = {r["technique"]: r for r in result["rows"]}
    assert list(rows) == ["baseline", "zero3-offload", "fp16"]
    for name in ("baseline", "zero3-offload"):
        row = rows[name]
        assert row["status"] == "measured", row
        m = row["measured"]
        assert m["peak_host_rss_bytes"] > 100 * 2**20 and m["step_time_s"] > 0 and m["samples_per_s"] > 0
        assert row["estimate"]["host_total_bytes"] > 0 and row["estimate"]["per_gpu_total_bytes"] == 0
        assert abs(row["host_estimate_error"]) < 1.0
    assert rows["fp16"]["status"] == "skipped" and "GPU" in rows["fp16"]["reason"]
    html = report.read_text()
    assert "<script" in html and not re.search(r'<script[^>]+src="https?://', html)  # plotly inline
    for name in rows:
        assert f"<td>{name}</td>" in html
    assert table.read_text().count("\n") == len(rows) + 1
    for chart in ("memory", "slowdown"):  # rendered by kaleido in the Chromium the test set-up installs
        image = (pngs / f"{chart}.png").read_bytes()
        assert image.startswith(b"\x89PNG\r\n\x1a\n") and len(image) > 10_000


def test_png_export_without_a_browser_is_one_clear_message(nexa_home, monkeypatch, tmp_path):
    from nexa_core import bench_report, cli

    monkeypatch.setattr(bench_report, "png_browser", lambda: None)
    with pytest.raises(ConfigError, match="needs Chrome or Chromium"):
        bench_report.to_png({"rows": []}, "memory")
    with pytest.raises(ConfigError, match="not a report chart"):
        bench_report.to_png({"rows": []}, "pie")
    # the CLI refuses before measuring anything: exit 2, no bench run started
    assert cli.main(["bench", "--techniques", "baseline", "--png-dir", str(tmp_path / "png")]) == 2
    assert not (tmp_path / "png").exists() and not (nexa_home / "runs").exists()


def test_outputs_that_cannot_be_written_are_refused_before_anything_is_measured(nexa_home, tmp_path, capsys):
    from nexa_core import cli

    (tmp_path / "a-folder").mkdir()
    (tmp_path / "a-file").write_text("x")
    argv = ["bench", "--techniques", "baseline", "--csv", str(tmp_path / "a-folder"),
            "--report", str(tmp_path / "a-file" / "report.html")]  # fmt: skip
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "csv (--csv): " in err and "is a folder; give a file name" in err
    assert "report (--report): cannot create " in err
    assert not (nexa_home / "runs").exists()  # no technique run was started


def test_bench_config_validation():
    with pytest.raises(ConfigError) as err:
        BenchConfig(model="x", techniques=("zero9", "magic"), steps=1)
    assert len(err.value.problems) == 3 and "zero2-offload" in str(err.value)


def test_table_marks_savings_against_baseline():
    result = {
        "rows": [
            {"technique": "baseline", "status": "measured", "measured": {"peak_host_rss_bytes": 1000, "step_time_s": 1.0},
             "estimate": {"host_total_bytes": 900}, "host_estimate_error": -0.1},
            {"technique": "zero3", "status": "measured", "measured": {"peak_host_rss_bytes": 750, "step_time_s": 1.5},
             "estimate": {"host_total_bytes": 800}, "host_estimate_error": 0.0667},
        ]
    }  # fmt: skip
    rows = table_rows(result)
    assert rows[1]["host memory saved vs baseline"] == "+25.0%" and rows[1]["slower vs baseline"] == "+50.0%"


def test_step_time_ratios_from_too_few_timed_steps_are_labelled_not_drawn():
    """3 steps leave 1 timed step after the 2 warm-up ones: its median is noise (it was charted)."""

    def row(name: str, step_time: float, timed: int) -> dict:
        return {"technique": name, "status": "measured", "estimate": {"host_total_bytes": 1, "per_gpu_total_bytes": 0},
                "measured": {"peak_host_rss_bytes": 1000, "step_time_s": step_time, "timed_steps": timed}}  # fmt: skip

    result = {
        "config": {"steps": 6},
        "rows": [row("baseline", 1.0, 4), row("zero2", 1.5, 4), row("zero3", 3.0, 1)],
    }
    rows = table_rows(result)
    assert [r["slower vs baseline"] for r in rows] == [
        "+0.0%",
        "+50.0%",
        "too noisy (fewer than 3 timed steps)",
    ]
    assert [r["timed steps"] for r in rows] == [4, 4, 1]
    slowdown = figures(result)["slowdown"]
    assert list(slowdown.data[0].x) == ["baseline", "zero2"]
    assert (
        "median of 4 timed steps" in slowdown.layout.title.text and "too noisy" in slowdown.layout.title.text
    )
    noisy_base = {"config": {"steps": 3}, "rows": [row("baseline", 1.0, 1), row("zero2", 1.5, 1)]}
    assert {r["slower vs baseline"] for r in table_rows(noisy_base)} == {
        "too noisy (fewer than 3 timed steps)"
    }
    assert not figures(noisy_base)["slowdown"].data


def test_a_run_with_a_compiler_among_its_processes_reads_as_compiling(tmp_path):
    """DeepSpeed JIT-builds its CPU ops silently (verbose=False): ninja and the compiler running
    under the run are the sign (zero3-offload sat at "now: zero3-offload" for minutes, no hint)."""
    import shutil

    import psutil

    me = psutil.Process()
    run = {"id": "r", "pid": me.pid, "pid_create_time": me.create_time()}  # the run: this process
    assert not compiling(run)
    ninja = tmp_path / "ninja"
    ninja.symlink_to(shutil.which("sleep"))  # a process named ninja under the run
    build = subprocess.Popen([str(ninja), "30"])
    try:
        assert compiling(run)
    finally:
        build.kill()
        build.wait()
    assert not compiling(run)
