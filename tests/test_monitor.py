"""The Monitor/Runs data layer: downsampling, smoothing, series from a hand-filled store, figures."""

from __future__ import annotations

import math

import pytest

from nexa_core import charts, monitor, runs
from nexa_core.errors import ConfigError
from nexa_core.memory import GIB
from nexa_core.runstore import RunState, RunStore


@pytest.fixture
def store(tmp_path):
    return RunStore(tmp_path / "runs.sqlite")


def _run(store: RunStore, run_id: str, state=RunState.SUCCEEDED, steps: int = 5, run_dir: str = "") -> None:
    store.create_run(run_id, name=run_id, spec={"max_steps": steps}, run_dir=run_dir, state=state)
    for step in range(1, steps + 1):
        store.log_metrics(
            run_id,
            step,
            {"loss": 2.0 / step, "lr": 1e-4 * step, "samples_per_s": 10.0 + step, "tokens_per_s": 320.0},
        )


# ------------------------------------------------------------------ downsample / smooth


def test_downsample_bounds_the_length_and_keeps_first_last_and_spikes():
    points = [(i, math.sin(i / 500)) for i in range(100_000)]
    points[54_321] = (54_321, 1000.0)  # one spike and one dip, far from any bucket edge a stride would hit
    points[777] = (777, -1000.0)
    for max_points in (2000, 501, 10):
        kept = monitor.downsample(points, max_points)
        assert len(kept) <= max_points
        assert kept[0] == points[0] and kept[-1] == points[-1]
        assert (54_321, 1000.0) in kept and (777, -1000.0) in kept
        assert [x for x, _ in kept] == sorted({x for x, _ in kept})  # in order, no duplicates
        assert set(kept) <= set(points)


def test_downsample_keeps_short_series_and_drops_missing_values():
    points = [(1, 1.0), (2, None), (3, 3.0)]
    assert monitor.downsample(points, 2000) == [(1, 1.0), (3, 3.0)]
    assert monitor.downsample([], 10) == []


def test_smooth_is_an_ema_that_skips_none():
    assert monitor.smooth([1.0, None, 3.0, 3.0], alpha=0.5) == [1.0, None, 2.0, 2.5]
    assert monitor.smooth([4.0], alpha=0.5, start=2.0) == [3.0]
    assert monitor.smooth([]) == []


# ------------------------------------------------------------------ run_series


def _memory_rows(t0: float) -> list[dict]:
    """Two ranks on one host, each writing one row per GPU (same RSS), the way MemorySampler does."""
    rows = []
    for i in range(3):
        for rank in (0, 1):
            for gpu in (0, 1):
                rows.append(
                    {
                        "t": t0 + i + rank * 0.1,
                        "rank": rank,
                        "host": "h",
                        "step": i,
                        "rss_bytes": (1 + rank) * GIB + i,
                        "gpu_index": gpu,
                        "gpu_allocated_bytes": 100 * (rank + 1) if gpu == rank else 0,
                        "nvml_used_bytes": 1000 + gpu,
                    }  # fmt: skip
                )
    return rows


def test_run_series_from_a_hand_filled_store(store):
    _run(store, "r1")
    store.log_memory("r1", _memory_rows(1000.0))
    series = monitor.run_series(store, "r1")
    assert series["loss"] == [(s, 2.0 / s) for s in range(1, 6)]
    assert series["lr"][-1] == (5, pytest.approx(5e-4))
    assert [s for s, _ in series["samples_per_s"]] == [1, 2, 3, 4, 5]
    assert series["tokens_per_s"][0] == (1, 320.0)
    assert series["loss_smoothed"][0] == (1, 2.0)
    assert series["loss_smoothed"][1][1] == pytest.approx(0.1 * 1.0 + 0.9 * 2.0)
    memory = series["memory"]
    assert set(memory["host_rss"]) == {"rank 0", "rank 1"}
    assert memory["host_rss"]["rank 0"] == [
        (0.0, GIB),
        (1.0, GIB + 1),
        (2.0, GIB + 2),
    ]  # one point per sample
    assert memory["host_total"][-1] == (pytest.approx(2.1), 3 * GIB + 4)  # both ranks' latest summed
    assert set(memory["gpu_used"]) == {"GPU 0", "GPU 1"}
    assert [v for _, v in memory["gpu_used"]["GPU 1"]] == [1001, 1001, 1001]  # from one rank only
    assert memory["gpu_allocated"]["GPU 1"][-1][1] == 200  # rank 1's allocation on its own device


def test_run_series_bounds_every_series(store):
    store.create_run("long", name="long", spec={}, run_dir="", state=RunState.SUCCEEDED)
    for step in range(1, 61):
        store.log_metrics("long", step, {"loss": 1.0 + (step == 30) * 50})
    store.log_memory("long", [{"t": float(i), "rank": 0, "host": "h", "rss_bytes": i} for i in range(300)])
    series = monitor.run_series(store, "long", max_points=10)
    assert len(series["loss"]) <= 10 and (30, 51.0) in series["loss"] and series["loss"][-1] == (60, 1.0)
    assert len(series["memory"]["host_rss"]["rank 0"]) <= 10 and len(series["memory"]["host_total"]) <= 10
    assert series["memory"]["gpu_used"] == {}


def test_series_reader_reads_increments_late_samples_and_the_end(store):
    _run(store, "live", state=RunState.RUNNING, steps=2)
    store.log_memory("live", [{"t": 100.0, "rank": 0, "host": "h", "rss_bytes": 1}])
    reader = monitor.SeriesReader(store, "live")
    assert [s for s, _ in reader.series()["loss"]] == [1, 2]
    store.log_metrics("live", 3, {"loss": 0.5})
    store.log_memory("live", [{"t": 130.0, "rank": 0, "host": "h", "rss_bytes": 3}])
    # rank 1 flushes late: its sample is older than rank 0's newest but inside the settle window
    store.log_memory("live", [{"t": 125.0, "rank": 1, "host": "h", "rss_bytes": 2}])
    series = reader.series()
    assert series["loss"][-1] == (3, 0.5)
    assert series["memory"]["host_rss"]["rank 1"] == [(25.0, 2)]
    store.set_state("live", RunState.SUCCEEDED)
    assert reader.series()["memory"]["host_total"][-1] == (30.0, 5)
    assert reader.series() is reader.series()  # an ended run is served without reading again


# ------------------------------------------------------------------ figures, overlay, progress


def _dashed_estimates(fig) -> list:
    return [s for s in fig.layout.shapes if s.line.dash == "dash"]


def test_figures_draw_the_estimate_dashed_on_the_measured_memory(store):
    _run(store, "r1")
    store.log_memory("r1", _memory_rows(1000.0))
    estimate = {"host_total_bytes": 3 * GIB, "per_gpu_total_bytes": 2000}  # GPU samples here are ~1000 B
    figs = charts.figures(monitor.run_series(store, "r1"), estimate, log_y=True)
    assert list(figs) == ["loss", "lr", "throughput", "host_memory", "gpu_memory"]
    assert [t.name for t in figs["loss"].data] == ["loss", "loss (smoothed)"]
    assert len(figs["loss"].data[0].x) == 5 and figs["loss"].layout.yaxis.type == "log"
    host = figs["host_memory"]
    assert [t.name for t in host.data] == ["rank 0 RSS", "rank 1 RSS", "all ranks"]
    (line,) = _dashed_estimates(host)
    assert line.y0 == pytest.approx(3.0)  # GiB
    assert any("estimate" in a.text for a in host.layout.annotations)
    (gpu_line,) = _dashed_estimates(figs["gpu_memory"])
    assert gpu_line.y0 == pytest.approx(2000 / GIB)
    assert not any(charts.NO_GPU_TEXT in (a.text or "") for a in figs["gpu_memory"].layout.annotations)


def test_a_cpu_only_run_has_no_gpu_chart(store):
    """Issue 17: an empty GPU chart took half a row on a CPU-only machine."""
    _run(store, "cpu")
    store.log_memory("cpu", [{"t": 1.0, "rank": 0, "host": "h", "rss_bytes": GIB}])
    series = monitor.run_series(store, "cpu")
    figs = charts.figures(series, {"host_total_bytes": GIB, "per_gpu_total_bytes": 0})
    assert "gpu_memory" not in figs
    assert [t.name for t in figs["host_memory"].data] == ["rank 0 RSS"]  # one rank: no "all ranks" line
    assert not _dashed_estimates(charts.figures({}, None)["host_memory"])  # no estimate, no line
    waiting = charts.figures(series, {"per_gpu_total_bytes": GIB})["gpu_memory"]  # a GPU run, no sample yet
    assert any(charts.NO_GPU_TEXT in a.text for a in waiting.layout.annotations)


def test_loss_smoothed_loss_and_validation_loss_have_distinct_colours(store):
    """Issue 17: the raw and the smoothed loss were two near-identical blues."""
    _run(store, "r1")
    store.log_metrics("r1", 5, {"eval_loss": 1.5, "eval_f1": 0.5})
    loss = charts.figures(monitor.run_series(store, "r1"), None)["loss"]
    assert [t.name for t in loss.data] == ["loss", "loss (smoothed)", "validation loss"]
    colours = [t.line.color for t in loss.data]
    assert None not in colours and len(set(colours)) == 3


def test_memory_lines_break_where_sampling_paused(store):
    """Issue 17: after a resume the memory chart joined the last sample before the stop to the first
    after it with a straight line."""
    _run(store, "resumed")
    before = [{"t": 100.0 + i, "rank": 0, "host": "h", "rss_bytes": GIB} for i in range(10)]
    after = [{"t": 400.0 + i, "rank": 0, "host": "h", "rss_bytes": 2 * GIB} for i in range(10)]
    store.log_memory("resumed", before + after)
    (trace,) = charts.figures(monitor.run_series(store, "resumed"), None)["host_memory"].data
    assert list(trace.y).count(None) == 1 and list(trace.y).index(None) == 10
    assert charts.break_gaps([(0.0, 1.0), (1.0, 1.0), (2.0, 1.0), (3.5, 1.0)]) == [
        (0.0, 1.0), (1.0, 1.0), (2.0, 1.0), (3.5, 1.0)
    ]  # fmt: skip


def test_an_absurd_estimate_does_not_set_the_memory_charts_range(store):
    """Issue 17: a 75,267 GiB estimate drawn as a line squashed the measured 2 GiB curve flat."""
    _run(store, "r1")
    store.log_memory("r1", [{"t": float(i), "rank": 0, "host": "h", "rss_bytes": 2 * GIB} for i in range(5)])
    series = monitor.run_series(store, "r1")
    host = charts.figures(series, {"host_total_bytes": 75_267 * GIB})["host_memory"]
    assert not _dashed_estimates(host)
    (note,) = [a.text for a in host.layout.annotations]
    assert "estimate host 75,267.00 GiB, off the scale (37,634× the measured peak)" in note
    near = charts.figures(series, {"host_total_bytes": 5 * GIB})["host_memory"]
    assert [s.y0 for s in _dashed_estimates(near)] == [pytest.approx(5.0)]  # within reach: the line


def test_evaluation_curves_on_the_monitor_charts(store):
    _run(store, "r1", state=RunState.RUNNING)
    reader = monitor.SeriesReader(store, "r1")
    assert "evaluation" not in charts.figures(reader.series(), None)
    # the evaluation of step 5 lands after step 5's loss row was read: it must still be seen
    store.log_metrics("r1", 2, {"eval_loss": 1.2, "eval_f1": 0.2})
    store.log_metrics("r1", 5, {"eval_loss": 0.9, "eval_f1": 0.6})
    series = reader.series()
    assert series["eval"]["eval_f1"] == [(2, 0.2), (5, 0.6)]
    figs = charts.figures(series, None)
    assert list(figs) == ["loss", "lr", "throughput", "evaluation", "host_memory"]
    (f1,) = figs["evaluation"].data
    assert f1.name == "entity F1" and list(f1.x) == [2, 5] and list(f1.y) == [0.2, 0.6]
    assert list(figs["loss"].data[-1].y) == [1.2, 0.9]


def test_a_run_at_its_first_step_shows_its_point(store):
    _run(store, "first", state=RunState.RUNNING, steps=1)
    loss = charts.figures(monitor.run_series(store, "first"), None)["loss"].data[0]
    assert list(loss.y) == [2.0] and "markers" in loss.mode  # a lone point has no line to draw
    long = [(float(i), 1.0) for i in range(charts.FEW_POINTS + 1)]
    assert charts.figures({"loss": long}, None)["loss"].data[0].mode == "lines"


def test_overlay_one_trace_per_run(store):
    _run(store, "a")
    _run(store, "b", steps=3)
    fig = charts.overlay(store, ["a", "b"], "loss")
    assert [len(t.x) for t in fig.data] == [5, 3]
    store.log_memory("a", [{"t": 5.0, "rank": 0, "host": "h", "rss_bytes": 2 * GIB}])
    fig = charts.overlay(store, ["a", "b"], "host_rss")
    assert list(fig.data[0].y) == [2.0] and list(fig.data[1].y) == []
    store.log_metrics("a", 5, {"eval_f1": 0.7})
    fig = charts.overlay(store, ["a", "b"], "eval_f1")
    assert [list(t.y) for t in fig.data] == [[0.7], []] and "markers" in fig.data[0].mode


def test_progress_and_eta():
    assert monitor.progress({"state": "running", "step": 25, "total_steps": 100, "duration_s": 50}) == (
        0.25,
        150,
    )
    assert monitor.progress({"state": "succeeded", "step": 3, "total_steps": 100}) == (1.0, None)
    assert monitor.progress({"state": "running", "step": 5, "total_steps": None, "duration_s": 9}) == (
        0.0,
        None,
    )
    assert monitor.progress({"state": "failed", "step": 5, "total_steps": 10, "duration_s": 9}) == (0.5, None)
    assert monitor.format_seconds(3723) == "1h 02m 03s" and monitor.format_seconds(None) == "—"


# ------------------------------------------------------------------ history and delete


def test_run_label_names_a_run_once():
    assert runs.run_label("20261125-1", "bert-zero3", "running") == "bert-zero3 · running · 20261125-1"
    assert runs.run_label("20261125-1", "20261125-1", "failed") == "20261125-1 · failed"
    assert runs.run_label("20261125-1", None, "queued") == "20261125-1 · queued"


def test_remove_run_deletes_only_its_own_folder(store, tmp_path, monkeypatch):
    monkeypatch.setenv("NEXA_HOME", str(tmp_path / "home"))
    from nexa_core import paths

    root = paths.runs_root()
    mine, other, outside = root / "mine", root / "other", tmp_path / "outside"
    for folder in (mine, other, outside):
        folder.mkdir()
        (folder / "f.txt").write_text("x")
    _run(store, "mine", run_dir=str(mine))
    _run(store, "forged", run_dir=str(other))  # a run_dir naming another run's folder
    _run(store, "away", run_dir=str(outside))
    _run(store, "busy", state=RunState.RUNNING, run_dir=str(other))
    assert runs.remove_run(store, "mine") == mine.resolve() and not mine.exists()
    assert runs.remove_run(store, "forged") is None and other.exists()
    assert runs.remove_run(store, "away") is None and outside.exists()
    assert store.get_run("forged") is None and store.get_run("away") is None
    with pytest.raises(ConfigError, match="stop it"):
        runs.remove_run(store, "busy")
    assert store.get_run("busy") is not None


def test_a_bulk_read_pauses_the_collector_and_always_restores_it(store):
    import gc

    _run(store, "r1")
    with monitor._bulk_read():
        assert not gc.isenabled()
    assert gc.isenabled()
    try:
        with monitor._bulk_read():
            raise RuntimeError("a failed read")
    except RuntimeError:
        pass
    assert gc.isenabled()
    gc.disable()  # someone else's pause is left as they set it
    try:
        monitor.run_series(store, "r1")
        assert not gc.isenabled()
    finally:
        gc.enable()
