"""nexa_ui/launch_form: a saved configuration mapped onto the Launch page's fields (pure, no browser)."""

from nexa_core.launch import RunSpec
from nexa_core.train_config import TrainConfig
from nexa_ui.launch_form import SOURCES, extra_fields, form_state, spec_from_plan

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
