import json

import pytest

from nexa_core.costs import Measured, cost_view, load_instances, same_device
from nexa_core.errors import ConfigError
from nexa_core.planner import PlanConfig
from nexa_core.probe import find_batch_size
from nexa_core.train_config import TrainConfig


@pytest.mark.slow
def test_find_batch_size_under_a_budget_that_binds(nexa_home):
    # Measured peaks here (2026-12-04): batch 1 1.04 GiB, 2 1.19, 4 1.45, 5 1.58, 6 1.65. A budget of
    # 1.12 GiB (two probes) failed in a clean-clone run: batch 1 peaked above it there.
    budget = int(1.5 * 2**30)
    config = TrainConfig(seq_len=256, deepspeed="off")
    result = find_batch_size(config, budget, max_batch=6)
    probes = {p["batch_size"]: p for p in result["probes"]}
    best = result["batch_size"]
    peaks = {b: p["peak_host_rss_bytes"] for b, p in probes.items()}
    assert best is not None and probes[best]["fits"] and probes[best]["peak_host_rss_bytes"] <= budget, peaks
    too_big = [b for b, p in probes.items() if not p["fits"]]
    assert too_big, "the budget must bind for this test to mean anything"
    assert all(b > best for b in too_big)
    assert best + 1 in too_big  # the search proved the next size does not fit
    assert all(p["state"] == "succeeded" for p in probes.values())  # over budget is an answer, not a crash


def _fake_probe(fits_up_to: int, broken_at: int | None = None):
    """Stands in for real probe processes so the search logic itself can be checked quickly."""
    from nexa_core.probe import ProbeResult

    def fake(config, budget_bytes, on_gpu=False, store=None):
        b = config.batch_size
        if b == broken_at:
            return ProbeResult(
                b, False, None, None, None, None, "failed", "ValueError: bad label", "r", False
            )
        if b > fits_up_to:  # killed by the kernel: the classifier's "probably out of memory"
            return ProbeResult(
                b, False, None, None, None, None, "failed", "killed, probably out of memory", "r", True
            )
        return ProbeResult(b, True, b, None, None, None, "succeeded", None, "r", False)

    return fake


def test_search_treats_out_of_memory_as_an_answer_and_other_failures_as_errors(monkeypatch):
    import nexa_core.probe as probe_module

    monkeypatch.setattr(probe_module, "probe", _fake_probe(fits_up_to=37))
    found = find_batch_size(TrainConfig(deepspeed="off"), 2**30, max_batch=256)
    assert found["batch_size"] == 37 and found["error"] is None
    assert len(found["probes"]) <= 2 * 8 + 1  # doubling then bisection: O(log max_batch)

    monkeypatch.setattr(probe_module, "probe", _fake_probe(fits_up_to=37, broken_at=32))
    found = find_batch_size(TrainConfig(deepspeed="off"), 2**30, max_batch=256)
    assert found["batch_size"] is None and "ValueError: bad label" in found["error"]


SOURCE = "source: {title: example, url: 'https://example.org/prices', date: 2026-05-07}"


def test_cost_view_ranks_instances_from_the_yaml(tmp_path):
    catalogue = tmp_path / "instances.yaml"
    catalogue.write_text(
        "assumed_mfu: 0.5\ninstances:\n"
        f"  - {{name: small, gpus: 1, gpu_model: x, gpu_memory_gb: 8, host_memory_gb: 32, peak_tflops: 100, price_per_hour: 1, {SOURCE}}}\n"
        f"  - {{name: big, gpus: 1, gpu_model: y, gpu_memory_gb: 80, host_memory_gb: 256, peak_tflops: 300, price_per_hour: 2, {SOURCE}}}\n"
        f"  - {{name: fast, gpus: 1, gpu_model: z, gpu_memory_gb: 80, host_memory_gb: 256, peak_tflops: 900, price_per_hour: 4, {SOURCE}}}\n"
    )
    rows = cost_view(
        PlanConfig(model="gpt2-xl", task="causal-lm", batch_size=4, seq_len=512), 10**8, path=catalogue
    )
    assert [r["instance"] for r in rows] == [
        "fast",
        "big",
        "small",
    ]  # 1.33 h × $4 < 4 h × $2; small fits nothing
    assert rows[-1]["cost"] is None and rows[-1]["recommended"] is None
    params = rows[0]["hours"] * 3600 * 900e12 * 0.5 / (6 * 10**8)
    assert params == pytest.approx(1_557_611_200, rel=1e-6)  # the FLOP formula used the exact count


def test_a_measured_throughput_applies_only_to_instances_of_its_device_type():
    """A CPU's samples/s was applied to every GPU instance before (8×H100 as slow as a 2-core CPU)."""
    config = PlanConfig(model="gpt2", task="causal-lm", seq_len=100)
    on_cpu = {r["instance"]: r for r in cost_view(config, 3_600_000, Measured(10.0, "cpu", "2 CPU cores"))}
    assert on_cpu["cpu-16-64"]["basis"] == "measured" and on_cpu["cpu-16-64"]["hours"] == pytest.approx(1.0)
    assert on_cpu["cpu-16-64"]["throughput_source"] == "measured on cpu: 10 samples/s; 2 CPU cores"
    gpu_rows = [r for r in on_cpu.values() if r["gpus"]]
    assert gpu_rows and all(r["basis"] == "flops" and r["hours"] < 0.1 for r in gpu_rows)
    on_h100 = {
        r["instance"]: r for r in cost_view(config, 3_600_000, Measured(10.0, "NVIDIA H100 80GB HBM3"))
    }
    assert on_h100["1x-H100-80GB"]["hours"] == pytest.approx(1.0) and on_h100["8x-H100-80GB"][
        "hours"
    ] == pytest.approx(1 / 8)
    assert on_h100["1x-A100-80GB"]["basis"] == "flops" and on_h100["cpu-16-64"]["basis"] == "none"
    assert on_h100["cpu-16-64"]["hours"] is None and on_h100["cpu-16-64"]["cost"] is None


def test_a_gpu_measurement_matches_the_catalogues_gpu_by_its_words():
    assert same_device("NVIDIA A100 80GB", "NVIDIA A100-SXM4-80GB")
    assert same_device("NVIDIA L4", "NVIDIA L4") and not same_device("NVIDIA L4", "NVIDIA L40S")
    assert not same_device("NVIDIA A10G", "NVIDIA A10") and not same_device(
        "NVIDIA A100 80GB", "NVIDIA A100-PCIE-40GB"
    )


def test_bad_catalogue_lists_every_problem(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "assumed_mfu: 3\ninstances:\n  - {name: a}\n  - {name: b, gpus: -1, gpu_memory_gb: 1, host_memory_gb: 1, peak_tflops: 1, price_per_hour: 1}\n"
    )
    with pytest.raises(ConfigError) as err:
        load_instances(bad)
    assert len(err.value.problems) == 3
    unsourced = tmp_path / "unsourced.yaml"
    unsourced.write_text(
        "instances:\n  - {name: a, gpus: 0, gpu_memory_gb: 0, host_memory_gb: 1, peak_tflops: 0, price_per_hour: 1}\n"
        "  - {name: b, gpus: 0, gpu_memory_gb: 0, host_memory_gb: 1, peak_tflops: 0, price_per_hour: 1,"
        " source: {title: t, url: 'https://x.org', date: last week}}\n"
    )
    with pytest.raises(ConfigError) as err:
        load_instances(unsourced)
    assert err.value.problems == [
        "instances[0] (a): source needs the price's title and public url (http...)",
        "instances[1] (b): source.date must be YYYY, YYYY-MM or YYYY-MM-DD, got 'last week'",
    ]


def test_shipped_catalogue_is_valid_and_says_prices_are_examples():
    from nexa_core.costs import DEFAULT_INSTANCES

    instances, mfu = load_instances()
    assert len(instances) >= 4 and 0 < mfu <= 1
    assert "EXAMPLE PRICES" in DEFAULT_INSTANCES.read_text()
    assert all("(https://" in i.source and i.price_date[:4].isdigit() for i in instances)  # dated, sourced


def test_nexa_cost_needs_the_device_a_throughput_was_measured_on(capsys):
    from nexa_core import cli

    base = ["cost", "--params", "1000000", "--tokens", "1000000"]
    assert cli.main([*base, "--samples-per-s", "5"]) == 2
    err = capsys.readouterr().err
    assert "samples_per_s (--samples-per-s) and measured_on (--measured-on): give both" in err
    assert "cpu, NVIDIA L4, NVIDIA A10G" in err
    assert cli.main([*base, "--samples-per-s", "5", "--measured-on", "cpu", "--json"]) == 0
    rows = {r["instance"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["cpu-16-64"]["basis"] == "measured" and rows["1x-L4-24GB"]["basis"] == "flops"
