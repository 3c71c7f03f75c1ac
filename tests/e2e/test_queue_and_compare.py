"""Issue 17 in a real browser: a second launch on the busy CPU waits in the run queue and starts when
the first run ends; a comparison typed with Enter in every field starts once, on the one click; the
cost view of that CPU-measured comparison times GPU instances with the FLOPs model. Each is its own
test function (the same app, started once for this file by tests/e2e/conftest.py).

Run it alone with `bash scripts/test.sh -m e2e tests/e2e/test_queue_and_compare.py`."""

from __future__ import annotations

import re
import time

import psutil
import pytest
from playwright.sync_api import expect

from nexa_core.runstore import RunStore
from tests.e2e.test_first_ten_minutes import TIMEOUT_MS, Tour, _type_number

RUN_TIMEOUT_S = 900  # real training on 2 contended CPU cores, start-up included
RUN_ID = re.compile(r"\b\d{8}-\d{6}-\S+")


def _launch(tour: Tour, steps: int) -> str:
    """A short run on the bundled NER sample from the Launch page; returns the id Monitor shows."""
    tour.open("Launch", "Launch a training run")
    page = tour.page
    page.get_by_role("radiogroup", name="Dataset").get_by_text("bundled sample").click()
    page.get_by_role("radiogroup", name="Train for").get_by_text("max steps").click()
    _type_number(tour, "Max steps", steps)
    _type_number(tour, "Sequence length", 64)
    tour.see(page.get_by_role("heading", name="What will run"))
    page.get_by_role("button", name="Launch", exact=True).click()
    tour.see(page.get_by_role("heading", name="Monitor a run"))
    picked = page.get_by_role("combobox", name="Run (newest first)").input_value()
    found = RUN_ID.search(picked)
    assert found, f"no run id in the run picker: {picked!r}"
    return found.group()


def _state(tour: Tour) -> str:
    """The State metric of the Monitor page ("" while it is being drawn)."""
    metric = tour.page.get_by_test_id("stMetric").filter(has_text="State")
    return metric.first.get_by_test_id("stMetricValue").inner_text() if metric.count() else ""


def _panel_zombies(app) -> list[int]:
    """Zombie children of the panel's server process (a comparison left three behind before)."""
    zombies = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if "streamlit" not in " ".join(proc.info["cmdline"] or []):
                continue
            if proc.environ().get("NEXA_HOME") != str(app.home):
                continue
            zombies += [c.pid for c in proc.children() if c.status() == psutil.STATUS_ZOMBIE]
        except psutil.Error:
            continue
    return zombies


def _pick(tour: Tour, label: str, run_id: str) -> None:
    """Choose the run in the picker labelled `label` (options read "name · state · id")."""
    tour.page.get_by_role("combobox", name=label).click()
    tour.see(tour.page.get_by_role("option", name=re.compile(re.escape(run_id)))).click()
    tour.page.keyboard.press("Escape")


@pytest.mark.e2e
@pytest.mark.slow
def test_a_second_launch_waits_in_the_queue_and_starts_when_the_first_ends(
    app, page, screenshot_dir, no_run_left
):
    page.set_default_timeout(TIMEOUT_MS)
    tour = Tour(page, app, screenshot_dir)
    with tour.reporting():
        page.goto(app.url)
        tour.see(page.get_by_role("heading", name="Plan memory before a run"))
        first = _launch(tour, steps=10_000)  # runs until stopped below, however fast the machine
        tour.step = "first run running"
        expect(page.get_by_test_id("stMetric").filter(has_text="State").first).to_contain_text("running")
        second = _launch(tour, steps=3)  # the CPU is busy: queued, not refused
        assert second != first
        tour.step = "second run queued"
        expect(page.get_by_test_id("stMetric").filter(has_text="State").first).to_contain_text("queued")

        tour.open("Runs", "Run history")
        tour.see(page.get_by_role("heading", name="Queue (1 waiting)"))
        waiting = (
            page.get_by_test_id("stMarkdownContainer").filter(has_text=second).filter(has_text="waiting for")
        )
        expect(tour.see(waiting)).to_contain_text(f"waiting for: {first} (running)")
        tour.screenshot("runs-queue")

        tour.step = "stop the first run"
        _pick(tour, "Runs to compare or act on", first)
        page.get_by_role("button", name="Open in Monitor").click()
        tour.see(page.get_by_role("heading", name="Monitor a run"))
        page.get_by_role("button", name="Stop run").click()
        tour.see(page.get_by_text(re.compile(r"^Stopped")))

        tour.step = "the second run starts after the first ended, with no page asking for it"
        _pick(tour, "Run (newest first)", second)
        expect(page.get_by_role("combobox", name="Run (newest first)")).to_have_value(re.compile(second))
        store = RunStore(app.home / "runs.sqlite")
        deadline = time.monotonic() + RUN_TIMEOUT_S
        seen: list[str] = []
        while time.monotonic() < deadline:
            state = _state(tour)
            if state and (not seen or seen[-1] != state):
                seen.append(state)
            if state == "succeeded" or store.get_run(second)["state"] in ("failed", "stopped"):
                break
            tour.no_exception()
            page.wait_for_timeout(700)
        assert seen and seen[-1] == "succeeded", f"the second run's states on Monitor: {seen}"
        one, two = store.get_run(first), store.get_run(second)
        assert one["state"] == "stopped" and two["started_at"] >= one["ended_at"], (one, two)
        assert (
            f"nexa: started the next queued run, {second}"
            in (app.home / "runs" / first / "run.log").read_text()
        )
        tour.open("Runs", "Run history")
        tour.see(page.get_by_test_id("stDataFrame"))
        assert not page.get_by_role("heading", name=re.compile(r"^Queue")).count()


@pytest.mark.e2e
@pytest.mark.slow
def test_enter_in_the_compare_form_starts_nothing_one_click_starts_one_and_gpus_cost_by_flops(
    app, page, screenshot_dir
):
    page.set_default_timeout(TIMEOUT_MS)
    tour = Tour(page, app, screenshot_dir)
    with tour.reporting():
        page.goto(f"{app.url}/compare")
        tour.see(page.get_by_role("heading", name="Compare memory-saving techniques"))
        tour.step = "Compare form"
        for technique in ("zero2", "zero3", "zero3-offload", "lora"):
            page.get_by_role("button", name=f"Remove {technique}", exact=True).click()
        # Enter in each field, as a person finishing a value does: it used to start a comparison each
        _type_number(tour, "Steps per technique", 5)
        _type_number(tour, "Micro-batch", 2)
        _type_number(tour, "Sequence length (every batch padded to it)", 32)
        page.wait_for_timeout(3000)  # time for a wrongly started comparison to show
        tour.see(page.get_by_text("No comparisons yet"))
        assert not list((app.home / "comparisons").glob("*.runs.json"))

        page.get_by_role("button", name="Run comparison").click()
        tour.see(page.get_by_text(re.compile(r"^Queued comparison ")))
        tour.step = "comparison runs"
        chart = page.locator(".js-plotly-plot").first
        tour.see(chart, timeout_ms=RUN_TIMEOUT_S * 1000)
        tour.see(page.get_by_text("batch 2 × sequence 32 (padded), 5 steps per technique"))
        assert len(list((app.home / "comparisons").glob("*.runs.json"))) == 1  # one click, one comparison
        page.get_by_role("combobox", name="Comparison (newest first)").click()
        expect(page.get_by_role("option")).to_have_count(1)
        page.keyboard.press("Escape")

        tour.step = "cost view"
        table = page.get_by_test_id("stTable")
        cpu = table.locator("tr").filter(has_text="cpu-16-64")
        expect(cpu).to_contain_text("measured on cpu")
        for instance in ("1x-L4-24GB", "1x-A100-80GB", "8x-H100-80GB"):
            row = table.locator("tr").filter(has_text=instance)
            expect(row).to_contain_text("FLOPs model: 6·Ψ·tokens at 35% MFU")
        rows = [table.locator("tr").filter(has_text=i).inner_text() for i in ("cpu-16-64", "8x-H100-80GB")]
        cpu_hours, h100_hours = (
            float(re.search(r"([\d.,e+-]+) h\b", r).group(1).replace(",", "")) for r in rows
        )
        assert h100_hours < cpu_hours / 100, rows  # the GPU is not timed by the CPU's throughput
        tour.screenshot("compare-measured")
        assert _panel_zombies(app) == []
