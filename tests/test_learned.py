"""Estimates that learn: the correction from past runs, their pairs read back from the run store,
and where the planner shows it (beside the formula estimate, never in its place)."""

import json

import pytest

from nexa_core import cli, learned, runs
from nexa_core.learned import GPU, HOST, Outcome, correction, correction_for
from nexa_core.memory import GIB
from nexa_core.planner import PlanConfig, make_plan
from nexa_core.runstore import RunState, RunStore
from nexa_core.telemetry import PEAK_RSS_METRIC


def test_correction_is_the_median_ratio_with_a_10_to_90_percentile_band():
    # ratios 0.8, 0.9, 1.0, 1.1, 1.2 (estimates of different sizes: ratios pool them)
    pairs = [(1000, 800), (2000, 1800), (500, 500), (4000, 4400), (100, 120)]
    found = correction(pairs)
    assert found.runs == 5 and found.ratio == pytest.approx(1.0)
    assert found.low == pytest.approx(0.84) and found.high == pytest.approx(1.16)  # linear interpolation
    assert found.band == pytest.approx(0.16)
    applied = found.apply(10 * GIB)
    assert applied["corrected_bytes"] == 10 * GIB and applied["low_bytes"] == int(10 * GIB * 0.84)
    assert applied["text"] == "based on 5 of your runs on this machine: ±16 %"


def test_one_odd_run_does_not_move_the_median():
    pairs = [(1000, 950), (1000, 960), (1000, 970), (1000, 3000)]
    assert correction(pairs).ratio == pytest.approx(0.965)


def test_fewer_than_three_runs_give_no_correction():
    assert correction([(1000, 900), (1000, 950)]) is None
    assert correction([(1000, 900), (0, 950), (1000, 0)]) is None  # unusable pairs do not count


def _outcome(i, term=HOST, layout="ZeRO-0", technique="ZeRO-0 · fp32 · 1 rank", ratio=1.0, machine="m1"):
    return Outcome(f"r{i}", machine, term, layout, technique, 1000, int(1000 * ratio))


def test_the_scope_narrows_to_the_technique_then_the_layout_when_runs_allow():
    history = [_outcome(i, ratio=0.9) for i in range(3)]
    history += [
        _outcome(10 + i, layout="ZeRO-2", technique="ZeRO-2 · fp32 · 1 rank", ratio=1.2) for i in range(3)
    ]
    history += [
        _outcome(20 + i, layout="ZeRO-2", technique="ZeRO-2 · LoRA · fp32 · 1 rank", ratio=1.5)
        for i in range(2)
    ]
    assert correction_for(history, HOST, "ZeRO-0", "ZeRO-0 · fp32 · 1 rank").scope == "this technique"
    lora = correction_for(history, HOST, "ZeRO-2", "ZeRO-2 · LoRA · fp32 · 1 rank")
    assert lora.scope == "this layout" and lora.runs == 5  # 2 LoRA runs are too few alone
    other = correction_for(history, HOST, "ZeRO-3", "ZeRO-3 · fp32 · 1 rank")
    assert other.scope == "all layouts" and other.runs == 8
    assert correction_for(history, GPU, "ZeRO-0") is None  # no GPU pairs at all


def _finished_run(store, run_id, machine, host_est, peaks, gpus=None, state=RunState.SUCCEEDED):
    estimate = {
        "label": "ZeRO-0", "host_total_bytes": 2 * host_est, "expected_host_total_bytes": host_est,
        "per_gpu_total_bytes": 0, "precision": "fp32", "ranks_per_node": len(peaks), "nodes": 1,
        "machine": {"id": machine},
    }  # fmt: skip
    store.create_run(run_id, name=run_id, spec={"lora": False}, run_dir="/x", estimate=estimate)
    store.log_metrics(run_id, 3, {f"{PEAK_RSS_METRIC}{r}": float(p) for r, p in enumerate(peaks)})
    for i, used in (gpus or {}).items():
        store.log_memory(
            run_id, [{"t": 1.0, "rank": i, "host": "h", "gpu_index": i, "nvml_used_bytes": used}]
        )
    store.set_state(run_id, state)


def test_history_pairs_each_finished_run_on_this_machine_with_its_recorded_estimate(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    # two ranks: the per-rank estimate is half the node's expected total; the larger rank counts
    _finished_run(store, "two-ranks", "m1", 2000, [900, 1100])
    _finished_run(store, "elsewhere", "m2", 1000, [1000])
    _finished_run(store, "failed", "m1", 1000, [1000], state=RunState.FAILED)
    (pair,) = runs.learned_history(store, "m1")
    assert (pair.run_id, pair.term, pair.estimated_bytes, pair.measured_bytes) == (
        "two-ranks",
        HOST,
        1000,
        1100,
    )
    assert pair.technique == "ZeRO-0 · fp32 · 2 ranks"


def test_a_gpu_run_gives_a_pair_per_term_the_busiest_device_for_the_gpu(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    _finished_run(store, "gpu-run", "m1", 1000, [1200], gpus={0: 5 * GIB, 1: 6 * GIB})
    run = store.get_run("gpu-run")
    run["estimate"]["per_gpu_total_bytes"] = 8 * GIB  # (recorded at the cap; no expected figure)
    store.update_run("gpu-run", estimate=run["estimate"])
    host, gpu = sorted(runs.learned_history(store, "m1"), key=lambda o: o.term, reverse=True)
    assert (host.term, host.estimated_bytes, host.measured_bytes) == (HOST, 1000, 1200)
    assert (gpu.term, gpu.estimated_bytes, gpu.measured_bytes) == (GPU, 8 * GIB, 6 * GIB)


def test_the_plan_shows_the_correction_beside_the_formula_and_says_how_many_runs(nexa_home):
    history = [_outcome(i, ratio=r) for i, r in enumerate((0.80, 0.85, 0.90))]
    config = PlanConfig(gpus=0, host_memory_gb=64)
    plan = make_plan(config, history=history)
    zero0 = plan.estimates[0]
    applied = zero0.learned[HOST]
    assert applied["runs"] == 3 and applied["corrected_bytes"] == int(zero0.host.total_bytes * 0.85)
    assert plan.to_dict()["learned_from"] == {"machine": "m1", "runs": 3}
    assert make_plan(config).estimates[0].host == zero0.host  # the formula estimate is unchanged
    elsewhere = make_plan(PlanConfig(gpus=0, nodes=2, host_memory_gb=64), history=history)
    assert all(not e.learned for e in elsewhere.estimates)
    assert any("plan is for another" in n for n in elsewhere.notes)


def test_nexa_plan_json_has_the_learned_field_from_this_machines_runs(nexa_home, capsys):
    store = RunStore()
    me = learned.this_machine().id
    for i, peak in enumerate((900, 950, 1000)):
        _finished_run(store, f"mine{i}", me, 1000, [peak])
    _finished_run(store, "other", "not-this-machine", 1000, [5000])
    assert (
        cli.main(
            [
                "plan",
                "sentence-transformers/all-MiniLM-L6-v2",
                "--gpus",
                "0",
                "--host-memory-gb",
                "64",
                "--json",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["learned_from"] == {"machine": me, "runs": 3}
    host = out["estimates"][0]["learned"][HOST]
    assert host["runs"] == 3 and host["ratio"] == pytest.approx(0.95)
    assert host["text"].startswith("based on 3 of your runs on this machine")


def test_machine_fingerprint_names_its_parts_and_is_stable():
    m = learned.this_machine()
    assert m.id == learned.Machine(m.hostname, m.cpu_model, m.ram_total_bytes, m.gpu_names).id
    assert m.id != learned.Machine(m.hostname, m.cpu_model, m.ram_total_bytes + 1, m.gpu_names).id
    assert set(m.to_dict()) == {"id", "hostname", "cpu_model", "ram_total_bytes", "gpu_names"}
