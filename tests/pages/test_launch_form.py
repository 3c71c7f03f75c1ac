"""nexa_ui/launch_form: a saved configuration mapped onto the Launch page's fields (pure, no browser)."""

from nexa_core.launch import RunSpec
from nexa_core.train_config import TrainConfig
from nexa_ui.launch_form import SOURCES, extra_fields, form_state, spec_from_plan, uploaded_name

IDS = ["sentence-transformers/all-MiniLM-L6-v2", "gpt2"]


def test_what_the_form_cannot_take_is_said_not_dropped(home, tmp_path):
    outside = tmp_path / "mine.jsonl"
    outside.write_text('{"tokens": ["a"], "ner_tags": ["O"]}\n')
    state, notes = form_state(RunSpec(TrainConfig(dataset=str(outside)), gpus=[3]), IDS, gpu_ids=[0, 1])
    assert state["launch_source"] == SOURCES[0] and state["launch_gpus"] == []
    assert any(str(outside) in n for n in notes) and any("GPUs [3]" in n for n in notes)


def test_an_earlier_upload_and_a_model_outside_the_catalogue(home):
    uploads = home / "uploads"
    uploads.mkdir(parents=True)
    data = uploads / "abc-data.jsonl"
    data.write_text('{"tokens": ["a"], "ner_tags": ["O"]}\n')
    state, notes = form_state(RunSpec(TrainConfig(model="gpt2", dataset=str(data))), IDS, gpu_ids=[])
    assert (state["launch_source"], state["launch_dataset_file"], notes) == (SOURCES[2], str(data), [])
    assert state["launch_model"] == "gpt2" and state["launch_model_text"] == ""
    assert "launch_gpus" not in state  # no GPU widget on a CPU-only machine


def test_plan_choices_and_hidden_fields():
    spec = spec_from_plan({"task": "classification", "batch_size": 2, "zero_stage": 2, "gpus": 2}, [0, 1, 2])
    assert (spec.train.task, spec.train.batch_size, spec.train.zero_stage, spec.gpus) == (
        "classification",
        2,
        2,
        [0, 1],
    )
    assert spec_from_plan({"batch_size": -4}, []).train == TrainConfig()  # an invalid plan: defaults
    assert extra_fields(TrainConfig(seed=5, batch_size=3)) == {"seed": 5}  # batch is on the form


def test_a_config_without_a_zero_layout_fills_the_one_the_run_would_use(monkeypatch):
    """The stage and offload selects never hold None (Streamlit shows that as an empty select)."""
    for var in (
        "USE_DEEPSPEED",
        "DEEPSPEED_ZERO_STAGE",
        "DEEPSPEED_OFFLOAD_OPTIMIZER",
        "DEEPSPEED_OFFLOAD_PARAM",
    ):
        monkeypatch.delenv(var, raising=False)
    cpu, _ = form_state(RunSpec(TrainConfig()), IDS, gpu_ids=[])  # auto: DeepSpeed off without a GPU
    assert (cpu["launch_stage"], cpu["launch_off_opt"], cpu["launch_off_param"]) == (0, "none", "none")
    gpu, _ = form_state(RunSpec(TrainConfig()), IDS, gpu_ids=[0])  # on: the config file's ZeRO-3 + offload
    assert (gpu["launch_stage"], gpu["launch_off_opt"], gpu["launch_off_param"]) == (3, "cpu", "cpu")
    two, _ = form_state(RunSpec(TrainConfig(zero_stage=2)), IDS, gpu_ids=[])  # explicit, file completes
    assert (two["launch_stage"], two["launch_off_opt"], two["launch_off_param"]) == (2, "cpu", "none")


def test_uploaded_name_drops_the_content_hash_prefix():
    assert uploaded_name("/home/u/.nexa/uploads/3f2a9c1b7e0d-my data.jsonl") == "my data.jsonl"
    assert uploaded_name("notahash-data.csv") == "notahash-data.csv"
    assert uploaded_name("data.csv") == "data.csv"
