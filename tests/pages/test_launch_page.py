"""The Launch page, driven with AppTest: preview, validation, uploads and the launch hand-off."""

import json
import re
import shlex
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from nexa_core import presets, runner, slurm_jobs
from nexa_core.cli import build_parser
from nexa_core.commands.runs import _spec_from_args
from nexa_core.hardware import list_gpus
from nexa_core.runstore import RunState, RunStore

# Absolute: AppTest resolves a relative path against this test file, not the working directory.
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def page(home):
    return AppTest.from_file(ROOT / "pages" / "launch.py", default_timeout=120).run()


def _errors(at: AppTest) -> str:
    assert not at.exception
    assert len(at.error) == 1  # every problem in one block
    assert not at.code and not at.json  # nothing previewed from a bad config
    assert not [b for b in at.button if b.key == "launch_go"]
    return at.error[0].value


def _json(at: AppTest) -> dict:
    config = at.json[0].value
    return json.loads(config) if isinstance(config, str) else config


def _launched_spec(command: str):
    """The run the previewed `nexa launch` command starts, as the CLI would build it."""
    argv = shlex.split(command)
    assert argv[:2] == ["nexa", "launch"]
    return _spec_from_args(build_parser().parse_args(argv[1:]))


def test_renders_the_command_deepspeed_config_and_estimate(page, home):
    assert not page.exception and not page.error
    process = page.code[1].value  # what the run manager starts, in the run's own folder
    assert "-m nexa_core train --config" in process
    labels = [m.label for m in page.metric]
    assert labels[0] == "Layout" and labels[2] == "Estimated host RAM for this data"
    assert page.metric[2].value.endswith("GiB") and "--seq-len" in page.metric[2].help  # the cap beside it
    assert any(c.value.startswith("Training data: 400 examples") for c in page.caption)
    assert [b.key for b in page.button] == ["launch_preset_load", "launch_preset_save", "launch_go"]
    if not list_gpus():
        assert "No GPU detected (CPU-only machine)" in [c.value for c in page.sidebar.caption]
        assert any("CPU-only machine" in c.value for c in page.caption)


def test_the_command_shown_is_one_a_user_can_run(page, home, monkeypatch):
    """Issue 17: the preview named run id 'preview' and a run_config.json nobody had written. Now it
    is `nexa launch` with flags: parsed by the real CLI it builds exactly the run the button starts."""
    page.selectbox(key="launch_task").set_value("classification")
    page.number_input(key="launch_batch").set_value(3)
    page.number_input(key="launch_lr").set_value(2e-4)
    page.checkbox(key="launch_lora").check()
    page.text_input(key="launch_name").input("copy me").run()
    command = page.code[0].value
    assert "--run-id" not in command and "preview" not in command
    launched = []
    monkeypatch.setattr(runner, "launch", lambda spec, **kw: launched.append(spec) or "r")
    page.button(key="launch_go").click().run()
    (spec,) = launched
    from_cli = _launched_spec(command)
    assert from_cli.train == spec.train and from_cli.to_dict() == spec.to_dict()


def test_a_direct_visit_shows_and_saves_a_real_zero_layout(page, home, monkeypatch):
    """Issue 17: opening /launch directly left the stage and offload selects empty ('Choose an
    option') and saved zero_stage null; the selects now hold the layout the run uses."""
    stage = page.selectbox(key="launch_stage")
    assert stage.value in (0, 1, 2, 3) and stage.options == ["ZeRO-0", "ZeRO-1", "ZeRO-2", "ZeRO-3"]
    assert page.selectbox(key="launch_off_opt").value in ("none", "cpu")
    assert page.selectbox(key="launch_off_param").value in ("none", "cpu")
    assert page.metric[0].value.startswith(f"ZeRO-{stage.value}")  # the estimate's layout agrees
    launched = []
    monkeypatch.setattr(runner, "launch", lambda spec, **kw: launched.append(spec) or "r")
    page.button(key="launch_go").click().run()
    (spec,) = launched
    assert spec.train.zero_stage == stage.value and spec.train.offload_param is not None


def test_the_deepspeed_config_is_shown_only_when_deepspeed_is_used(page, home):
    """Issue 17: with DeepSpeed off the preview showed the template's ZeRO-3 + offload JSON."""
    page.selectbox(key="launch_deepspeed").set_value("off").run()
    assert not page.exception and not page.json
    assert any("DeepSpeed is off for this run (set to off)" in c.value for c in page.caption)
    page.selectbox(key="launch_deepspeed").set_value("on")
    page.selectbox(key="launch_stage").set_value(1)
    page.selectbox(key="launch_off_opt").set_value("none").run()
    assert not page.exception and not page.error
    zero = _json(page)["zero_optimization"]
    assert zero["stage"] == 1 and "offload_optimizer" not in zero and "offload_param" not in zero


def test_an_estimate_beyond_this_machines_memory_needs_a_confirmation(page, home, monkeypatch):
    """Issue 17: an estimate of thousands of GiB on a 23 GiB machine launched without a word."""
    page.selectbox(key="launch_model").set_value("meta-llama/Llama-3.1-70B").run()
    assert not page.exception and not page.error
    warning = next(w.value for w in page.warning if "host RAM" in w.value)
    assert re.search(r"needs [\d,.]+ GiB of host RAM; this machine has [\d,.]+ GiB available", warning)
    assert page.button(key="launch_go").disabled
    launched = []
    monkeypatch.setattr(runner, "launch", lambda spec, **kw: launched.append(spec) or "r")
    page.checkbox(key="launch_fit_confirm").check().run()
    assert not page.button(key="launch_go").disabled
    page.button(key="launch_go").click().run()
    assert [s.train.model for s in launched] == ["meta-llama/Llama-3.1-70B"]


def test_the_fit_check_uses_the_batches_the_data_will_give(page, home):
    """A micro-batch of 65,536 at --seq-len 512 would need thousands of GiB, but the bundled NER sample
    has 400 examples of at most 36 tokens: the loader's batches are 400 × 36, which fit."""
    page.number_input(key="launch_batch").set_value(65_536)
    page.number_input(key="launch_seq").set_value(512).run()
    assert not page.exception and not page.error
    assert not [w for w in page.warning if "host RAM" in w.value]
    host = next(m for m in page.metric if m.label == "Estimated host RAM for this data")
    assert float(host.value.removesuffix(" GiB").replace(",", "")) < 20
    assert "--seq-len 512 cap" in host.help
    assert not page.button(key="launch_go").disabled


def test_bad_input_lists_every_problem_and_launches_nothing(page, home):
    page.number_input(key="launch_lr").set_value(-0.001)
    page.checkbox(key="launch_lora").check().run()
    page.number_input(key="launch_rank").set_value(0)
    page.text_input(key="launch_name").input("../etc/passwd").run()
    message = _errors(page)
    # each field as typed (issue 17: a bounded field kept its old value and was left out of the list)
    assert "lr (--lr): must be a number between 0 and 1, got -0.001" in message
    assert "lora_rank" in message and "got 0" in message and "name (--name)" in message
    page.selectbox(key="launch_mode").set_value("python")
    page.number_input(key="launch_nproc").set_value(2).run()
    assert "nproc (--nproc)" in _errors(page)  # the launch spec's problems join the config's
    assert RunStore().list_runs() == []


def test_plan_choices_fill_the_form(home):
    at = AppTest.from_file(ROOT / "pages" / "launch.py", default_timeout=120)
    at.session_state["plan_choices"] = {
        "model": "sentence-transformers/all-MiniLM-L6-v2", "task": "classification", "batch_size": 4,
        "seq_len": 64, "precision": None, "lora": True, "lora_rank": 4, "gradient_checkpointing": False,
        "gpus": 0, "zero_stage": 2, "offload_optimizer": "cpu", "offload_param": "none",
    }  # fmt: skip
    at.run()
    assert not at.exception and not at.error
    assert at.selectbox(key="launch_task").value == "classification"
    assert at.number_input(key="launch_batch").value == 4 and at.number_input(key="launch_rank").value == 4
    assert at.selectbox(key="launch_stage").value == 2
    at.selectbox(key="launch_deepspeed").set_value("on").run()  # on a CPU-only machine auto is off
    config = _json(at)
    assert config["zero_optimization"]["stage"] == 2
    assert config["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert "offload_param" not in config["zero_optimization"]


def test_an_upload_is_saved_under_a_safe_name_and_validated(page, home):
    page.radio(key="launch_source").set_value("upload a file").run()
    assert "dataset: upload" in _errors(page)
    # the fields a record needs, before anything is uploaded (issue 17: only after a failure)
    assert any("needs 'tokens' and 'ner_tags'" in c.value for c in page.caption)
    bad = b'{"text": "no label here"}\n{"label": "pos"}\nnot json\n'
    page.file_uploader(key="launch_upload").set_value(("../../bad data.jsonl", bad, "application/json"))
    page.selectbox(key="launch_task").set_value("classification").run()
    message = _errors(page)
    assert "line 1" in message and "line 2" in message and "line 3" in message  # all at once
    # the user's file name, not the stored one with its hash prefix
    assert "bad data.jsonl line 1" in message and not re.search(r"[0-9a-f]{12}-bad", message)
    good = b'{"text": "fine", "label": "pos"}\n{"text": "bad", "label": "neg"}\n'
    page.file_uploader(key="launch_upload").set_value(
        ("../../good data.jsonl", good, "application/json")
    ).run()
    assert not page.exception and not page.error
    saved = list((home / "uploads").iterdir())
    assert {p.name.split("-", 1)[1] for p in saved} == {"bad_data.jsonl", "good_data.jsonl"}
    assert all(p.parent == home / "uploads" for p in saved)
    assert any("2 valid records" in c.value for c in page.caption)


def test_launch_hands_the_run_to_the_monitor_page(home, monkeypatch):
    """Through the router, as in the app; runner.launch is replaced, so nothing trains here."""
    launched = []

    def fake_launch(spec, run_id=None, estimate=None, store=None, queue=False):
        launched.append((spec, estimate, queue))
        store = RunStore()
        store.create_run(
            "fake-run", name="fake", spec=spec.train.to_dict(), run_dir="", state=RunState.SUCCEEDED
        )
        return "fake-run"

    monkeypatch.setattr(runner, "launch", fake_launch)
    at = AppTest.from_file(ROOT / "app.py", default_timeout=120)
    at.switch_page("pages/launch.py").run()
    assert not at.exception
    at.text_input(key="launch_name").input("my run")
    at.button(key="launch_go").click().run()
    assert not at.exception
    ((spec, estimate, queue),) = launched
    assert spec.train.name == "my run" and estimate and estimate["host_total_bytes"] > 0
    assert queue  # a busy device: the run waits in the run queue instead of being refused
    assert at.session_state["monitor_run"] == "fake-run"
    assert at.title[0].value == "Monitor a run"
    assert at.selectbox(key="monitor_pick").value == "fake-run"


def test_nodes_section_shows_files_and_the_command_for_each_node(page, home):
    page.selectbox(key="launch_mode").set_value("accelerate")
    page.number_input(key="launch_nodes").set_value(2)
    page.number_input(key="launch_master_port").set_value(29640)
    page.text_area(key="launch_hosts").input("worker-0 slots=1\n10.0.0.7 slots=1")
    page.number_input(key="launch_global_batch").set_value(64).run()
    assert not page.exception and not page.error
    codes = [c.value for c in page.code]
    node_lines = [c for c in codes if "accelerate.commands.launch" in c and "--machine_rank" in c]
    assert len(node_lines) == 3  # the run's command, then node 0's (the same) and node 1's
    assert "--machine_rank 0" in node_lines[1] and "--machine_rank 1" in node_lines[2]
    assert "worker-0 slots=1\n10.0.0.7 slots=1" in [c.strip() for c in codes]  # the hostfile
    assert any(
        "num_machines: 2" in c and "main_process_ip: worker-0" in c for c in codes
    )  # accelerate config
    assert any("run this on that machine" in m.value for m in page.markdown)
    assert any("Global batch is 16" in w.value for w in page.warning)  # 8 x 1 x 2 ranks, not 64

    page.text_area(key="launch_hosts").input("-oProxyCommand=x slots=1").run()
    message = _errors(page)
    assert "hosts (--host)" in message and "RFC 1123" in message


def test_slurm_mode_previews_the_batch_script_and_submits_the_request(home, monkeypatch):
    page = AppTest.from_file(ROOT / "pages" / "launch.py", default_timeout=120)
    page.session_state["plan_choices"] = {"gpus": 0, "nodes": 3}  # the planned nodes carry over
    page.run()
    page.radio(key="launch_backend").set_value("slurm").run()
    assert page.number_input(key="launch_job_nodes").value == 3
    assert "partition (--partition): required" in _errors(page)
    page.text_input(key="launch_partition").input("gpu")
    page.number_input(key="launch_job_nodes").set_value(2)
    page.text_input(key="launch_time").input("00:30:00").run()
    assert not page.exception and not page.error
    submit = page.code[0].value
    assert "--backend slurm --partition gpu --nodes 2" in submit and "--time 00:30:00" in submit
    script = page.code[1].value
    assert (
        "#SBATCH --partition=gpu" in script and "#SBATCH --nodes=2" in script and "#SBATCH --mem=" in script
    )
    assert "srun --kill-on-bad-exit=1" in script and page.button(key="launch_go").label == "Submit to Slurm"
    submitted = []
    monkeypatch.setattr(slurm_jobs, "submit", lambda *args: submitted.append(args) or "r")
    page.button(key="launch_go").click().run()
    ((spec, request, estimate),) = submitted
    assert (request.partition, request.nodes, request.time) == ("gpu", 2, "00:30:00")
    assert str(spec.mode) == "torchrun" and estimate["host_total_bytes"] > 0


def test_fields_streamlit_dropped_start_again_from_the_plan_not_from_zero(home):
    """Streamlit drops the state of widgets a run did not draw; in a real browser a page switch that
    races a rerun keeps part of the form (the frontend reports only the widgets it still shows). The
    dropped fields start again from the plan, not from a number input's 0 ("nodes (--nodes): ... got 0"
    stopped a launch in the browser test of 2026-12-04); the fields that were kept keep their values."""
    at = AppTest.from_file(ROOT / "pages" / "launch.py", default_timeout=120)
    at.session_state["launch_task"] = "ner"  # kept, with a changed batch; every other field dropped
    at.session_state["launch_batch"] = 4
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert at.number_input(key="launch_nodes").value == 1
    assert at.number_input(key="launch_master_port").value == 0
    assert at.number_input(key="launch_batch").value == 4
    assert at.button(key="launch_go")


def test_a_saved_preset_fills_a_fresh_form_and_keeps_hidden_fields(page, home, monkeypatch):
    page.number_input(key="launch_batch").set_value(4)
    page.selectbox(key="launch_stage").set_value(2)
    page.text_input(key="launch_name").input("tuned")
    page.text_input(key="launch_preset_name").input("small z2").run()
    page.button(key="launch_preset_save").click().run()
    assert not page.exception and "Saved preset 'small z2'" in page.success[0].value
    assert presets.load("small z2").train.batch_size == 4
    # a preset written elsewhere (CLI) with fields this form does not show: they must survive
    spec = presets.load("small z2")
    spec.train.seed, spec.train.save_every = 3, 2
    presets.save("small z2", spec)

    launched = []
    monkeypatch.setattr(runner, "launch", lambda spec, **kw: launched.append(spec) or "r")
    fresh = AppTest.from_file(ROOT / "pages" / "launch.py", default_timeout=120).run()
    assert fresh.number_input(key="launch_batch").value == 8  # defaults until loaded
    fresh.selectbox(key="launch_preset_pick").set_value("small z2").run()
    fresh.button(key="launch_preset_load").click().run()
    assert not fresh.exception and not fresh.error
    assert (
        fresh.number_input(key="launch_batch").value == 4 and fresh.selectbox(key="launch_stage").value == 2
    )
    assert fresh.text_input(key="launch_name").value == "tuned"
    assert any("Starting from preset 'small z2'" in c.value for c in fresh.caption)
    assert any("seed=3" in c.value and "save_every=2" in c.value for c in fresh.caption)
    fresh.button(key="launch_go").click().run()
    (spec,) = launched
    assert (spec.train.batch_size, spec.train.seed, spec.train.save_every) == (4, 3, 2)


def test_a_bad_preset_name_or_file_is_a_message(page, home):
    page.text_input(key="launch_preset_name").input("../up").run()
    page.button(key="launch_preset_save").click().run()
    assert "preset name" in page.error[0].value and not list(home.rglob("*.json"))
    (presets.presets_dir() / "broken.json").write_text("{nope")
    page.run()
    page.selectbox(key="launch_preset_pick").set_value("broken").run()
    page.button(key="launch_preset_load").click().run()
    assert not page.exception and "preset 'broken': cannot read" in page.error[0].value
    assert page.code  # the form is still there, nothing lost


def test_a_sequence_longer_than_the_model_takes_is_refused_naming_the_limit(page, home):
    page.number_input(key="launch_seq").set_value(100_000).run()
    message = _errors(page)
    assert (
        "seq_len (--seq-len): 100000 is longer than sentence-transformers/all-MiniLM-L6-v2's limit of 512"
        in message
    )
    assert RunStore().list_runs() == []


def test_causal_lm_offers_the_bundled_instruction_sample(page, home):
    page.selectbox(key="launch_task").set_value("causal-lm").run()
    assert page.radio(key="launch_sample").options == ["plain text", "instructions"]
    page.radio(key="launch_sample").set_value("sample:instructions").run()
    assert not page.exception and not page.error
    assert any("causal_lm_instructions_train.jsonl" in c.value for c in page.caption)
    page.text_input(key="launch_preset_name").input("instruct")
    page.button(key="launch_preset_save").click().run()
    train = presets.load("instruct").train
    assert train.dataset.endswith("causal_lm_instructions_train.jsonl")
    assert train.eval_dataset.endswith("causal_lm_instructions_validation.jsonl")
