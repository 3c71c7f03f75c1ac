"""The Plan page, driven with Streamlit's AppTest (runs the real page script, no browser)."""

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from nexa_core.enums import Task
from nexa_core.models import DEFAULT_MODEL, size_model

# Absolute: AppTest resolves a relative path against this test file, not the working directory.
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def page(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(ROOT)
    at = AppTest.from_file(ROOT / "pages" / "plan.py", default_timeout=60)
    return at.run()


def _chart(at: AppTest) -> dict:
    charts = at.get("plotly_chart")
    assert len(charts) == 1
    return json.loads(charts[0].proto.spec)


def _model_error(at: AppTest) -> str:
    assert not at.exception
    assert len(at.error) == 1  # every problem in one block
    assert "model" in at.error[0].value
    assert not at.get("plotly_chart")  # nothing rendered from a bad config
    assert "plan_choices" not in at.session_state
    return at.error[0].value


def test_renders_with_defaults_and_recommends(page):
    assert not page.exception
    assert any("Recommended: ZeRO-" in s.value for s in page.success)
    assert any("fastest option that fits" in s.value for s in page.success)
    expected = size_model(DEFAULT_MODEL, Task.NER, 7, None)
    assert page.metric[0].value == f"{expected.params:,}"
    assert page.metric[1].value == f"{expected.trainable_params:,}"
    assert page.metric[2].value == f"{expected.largest_layer_params:,}"
    assert _chart(page)["data"]  # one stacked bar per memory term
    assert page.dataframe and "host total GiB" in page.dataframe[0].value.columns
    assert page.code[0].value.startswith(f"nexa plan {DEFAULT_MODEL} --task ner --num-labels 7")


def test_plan_choices_are_kept_for_launch(page):
    choices = page.session_state["plan_choices"]
    assert choices["model"] == DEFAULT_MODEL and choices["task"] == "ner"
    assert choices["zero_stage"] is not None
    assert choices["offload_optimizer"] in ("cpu", "none") and choices["offload_param"] in ("cpu", "none")


def test_cpu_only_chart_shows_host_memory(page):
    page.number_input(key="plan_gpus").set_value(0).run()
    assert not page.exception
    spec = json.dumps(_chart(page))
    assert "Host memory" in spec and "host RAM capacity" in spec


def test_cpu_only_table_shows_the_host_breakdown(page):
    """Issue 17: on a CPU-only plan every per-term column read 0 and only 'host total' had a number."""
    page.number_input(key="plan_gpus").set_value(0).run()
    table = page.dataframe[0].value
    assert "per-GPU total GiB" not in table.columns
    for term in ("params", "optimizer", "activations"):
        assert (table[f"host {term} GiB"] > 0).all(), term
    # ZeRO 1-3 keep gradient buffers through the step; at ZeRO-0 backward creates the gradients as it
    # frees the activations, so the peak holds whichever is larger (docs/MEMORY.md, "Calibration")
    zero0 = table["option"] == "ZeRO-0"
    assert (table[~zero0]["host gradients GiB"] > 0).all()
    terms = table[[f"host {t} GiB" for t in ("params", "gradients", "optimizer", "activations", "overhead")]]
    assert (terms.sum(axis=1) <= table["host total GiB"] + 0.01).all()  # the terms are part of the total


def test_an_invalid_number_is_named_instead_of_the_old_value_kept(page):
    """Issue 17: batch 0 turned the field red and the plan went on with the previous batch."""
    page.number_input(key="plan_batch").set_value(0).run()
    assert not page.exception and len(page.error) == 1
    assert "batch_size" in page.error[0].value and "got 0" in page.error[0].value
    assert not page.get("plotly_chart") and "plan_choices" not in page.session_state
    page.number_input(key="plan_batch").set_value(4).run()
    assert not page.error and "--batch-size 4" in page.code[0].value


def test_hypothetical_gpus_chart_per_gpu_memory(page):
    page.number_input(key="plan_gpus").set_value(2).run()  # enables the GPU memory field, as in a browser
    page.number_input(key="plan_gpu_gb").set_value(16.0).run()
    assert not page.exception
    spec = json.dumps(_chart(page))
    assert "Per-GPU memory" in spec and "GPU memory capacity 16.0 GiB" in spec
    assert "--gpus 2" in page.code[0].value and "--gpu-memory-gb 16" in page.code[0].value
    assert [b["name"] for b in _chart(page)["data"]] == [
        "parameters",
        "gradients",
        "optimizer",
        "activations",
        "overhead",
    ]


def test_labels_only_for_classification_heads(page):
    assert "plan_labels" in [w.key for w in page.number_input]
    page.selectbox(key="plan_task").set_value("embedding").run()
    assert not page.exception
    assert "plan_labels" not in [w.key for w in page.number_input]
    assert "--num-labels" not in page.code[0].value


def test_lora_changes_trainable_count(page):
    page.checkbox(key="plan_lora").check().run()
    assert not page.exception
    assert int(page.metric[1].value.replace(",", "")) < int(page.metric[0].value.replace(",", ""))
    assert "--lora --lora-rank 8" in page.code[0].value


def test_nonsense_model_name_is_an_error_not_a_traceback(page):
    page.text_input(key="plan_model_text").input("not a model!!").run()
    assert "not a catalogue entry" in _model_error(page)


def test_option_like_model_is_refused(page):
    page.text_input(key="plan_model_text").input("--evil").run()
    assert "option" in _model_error(page)


def test_unreachable_hub_id_says_offline(page):
    page.text_input(key="plan_model_text").input("someone/unknown-model").run()
    message = _model_error(page)
    assert "offline" in message and "catalogue" in message


def test_app_router_runs(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(ROOT)
    at = AppTest.from_file(ROOT / "app.py", default_timeout=60).run()
    assert not at.exception
    assert at.title and at.title[0].value == "Plan memory before a run"  # Plan is the default page


def test_probe_expander_renders_its_inputs_and_buttons(page):
    """The buttons start real training runs, so they are only checked here, not pressed."""
    assert not page.exception
    assert [e.label for e in page.expander][-1] == "Probe this plan"
    assert page.number_input(key="plan_probe_budget").value > 0  # the plan's memory budget, in GiB
    assert page.number_input(key="plan_probe_max_batch").value == 64
    assert page.button(key="plan_probe_one").label == "Probe at the longest sequence"
    assert page.button(key="plan_probe_find").label == "Find batch size"


def test_planning_for_a_preset_node_fits_llama_70b_lora(page):
    """Another machine: the 8 × H100 80 GB preset with its 2 TiB of host RAM. Llama-3.1-70B with LoRA
    and checkpointing at batch 1 × 4096 fits with ZeRO-3 (sharded creation, rank 0 reads the checkpoint)."""
    page.selectbox(key="plan_model").set_value("meta-llama/Llama-3.1-70B")
    page.selectbox(key="plan_task").set_value("causal-lm")
    page.checkbox(key="plan_lora").check()
    page.checkbox(key="plan_ckpt").check()
    page.number_input(key="plan_batch").set_value(1)
    page.number_input(key="plan_seq").set_value(4096)
    page.radio(key="plan_target").set_value("another machine").run()
    page.selectbox(key="plan_preset").set_value("8xH100-80GB-2TiB").run()
    assert not page.exception and not page.error
    assert any("Recommended: ZeRO-3" in s.value for s in page.success)
    assert any("sharded at creation" in c.value for c in page.caption)
    assert "--hardware 8xH100-80GB-2TiB" in page.code[0].value
    capacity = [s for s in _chart(page)["layout"]["shapes"]]
    assert capacity, "the 80 GiB line is drawn"


def test_another_machine_without_host_ram_says_host_is_not_checked(page):
    page.radio(key="plan_target").set_value("another machine").run()
    page.selectbox(key="plan_preset").set_value("custom").run()
    assert not page.exception
    assert not page.checkbox(key="plan_check_host_custom").value
    assert any("host RAM not checked" in c.value for c in page.caption)
    assert any("not checked against a budget" in c.value for c in page.caption)


def test_sequence_longer_than_the_model_takes_is_an_error_naming_the_limit(page):
    page.number_input(key="plan_seq").set_value(100_000).run()
    assert not page.exception
    assert len(page.error) == 1
    assert "seq_len (--seq-len): 100000 is longer than" in page.error[0].value
    assert "limit of 512 tokens" in page.error[0].value
    assert not page.get("plotly_chart")


def test_corrections_from_past_runs_on_this_machine_show_beside_the_estimates(nexa_home, monkeypatch):
    from nexa_core import learned
    from nexa_core.runstore import RunState, RunStore
    from nexa_core.telemetry import PEAK_RSS_METRIC

    store = RunStore()
    for i, peak in enumerate((0.9, 0.95, 1.0)):
        estimate = {"label": "ZeRO-0", "host_total_bytes": 2**30, "precision": "fp32", "ranks_per_node": 1,
                    "nodes": 1, "machine": learned.this_machine().to_dict()}  # fmt: skip
        store.create_run(f"past{i}", name=f"past{i}", spec={}, run_dir="/x", estimate=estimate)
        store.log_metrics(f"past{i}", 3, {f"{PEAK_RSS_METRIC}0": peak * 2**30})
        store.set_state(f"past{i}", RunState.SUCCEEDED)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(ROOT)
    at = AppTest.from_file(ROOT / "pages" / "plan.py", default_timeout=60).run()
    at.number_input(key="plan_gpus").set_value(0).run()
    assert not at.exception
    table = at.dataframe[0].value
    zero0 = table[table["option"] == "ZeRO-0"]["from your runs"].iloc[0]
    assert "±" in zero0 and "3 runs" in zero0  # beside the formula's "host total GiB", not instead of it
    assert table["host total GiB"].notna().all()
    assert any("3 finished runs on this machine" in c.value for c in at.caption)


def test_a_probe_starts_in_the_background_and_its_progress_is_read_back(page, monkeypatch):
    """The page never runs a probe in its script (a search can take an hour): the click starts a job
    and the page shows what the job's file says."""
    from nexa_core import probe_jobs

    started = []
    monkeypatch.setattr(probe_jobs, "start", lambda *a, **k: started.append((a, k)) or "job-1")
    finished = {"state": "done", "find": True, "config": {"batch_size": 8, "seq_len": 128}, "budget_bytes": 8 * 2**30,
                "probes": [{"batch_size": 1, "fits": True}, {"batch_size": 2, "fits": False}],
                "result": {"batch_size": 1}, "error": None}  # fmt: skip
    monkeypatch.setattr(probe_jobs, "state", lambda job_id: finished if job_id == "job-1" else None)
    page.button(key="plan_probe_find").click().run()
    assert not page.exception
    ((args, kwargs),) = started
    assert kwargs["find"] is True and kwargs["max_batch"] == 64
    assert page.session_state["plan_probe_job"] == "job-1"
    assert any(
        "Largest batch that fits 8.0 GiB at sequence length 128: **1**" in s.value for s in page.success
    )
    assert [c.value for c in page.caption if c.value.startswith("Tried batch")] == [
        "Tried batch 1: fits",
        "Tried batch 2: does not fit",
    ]
