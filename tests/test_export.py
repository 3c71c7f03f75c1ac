"""Export's folder (--out, the Runs page's form): where it cannot be written is a message naming the
field, from `nexa export`, `nexa runs export` and the panel alike, and it is checked before the
checkpoint is loaded. A run with a real checkpoint is made here without training (a random tiny
BERT saved as the trainer saves it), so the check runs where the old code failed."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from nexa_core import cli, paths
from nexa_core.checkpoints import COMPLETE_MARKER
from nexa_core.train_config import TrainConfig
from tests.run_helpers import tiny_bert

ROOT = Path(__file__).resolve().parents[1]
RUN = "20260101-000000-tiny-abcdef"


@pytest.fixture
def run_with_checkpoint(nexa_home, tmp_path) -> str:
    from safetensors.torch import save_file

    from nexa_core.enums import Task
    from nexa_core.models import auto_class, resolve_model, task_config
    from nexa_core.runstore import RunStore

    model = tiny_bert(tmp_path / "tiny-bert", vocab_size=128)
    config = TrainConfig(model=str(model), task="classification", num_labels=2, deepspeed="off", seq_len=32)
    run_dir = paths.run_dir(RUN)
    ckpt = run_dir / "checkpoints" / "step-1"
    ckpt.mkdir(parents=True)
    config.write(run_dir / "run_config.json")
    net = auto_class(Task.CLASSIFICATION).from_config(
        task_config(resolve_model(str(model)), Task.CLASSIFICATION, 2)
    )
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(ckpt / "model.safetensors"))
    (ckpt / COMPLETE_MARKER).touch()
    store = RunStore()
    store.create_run(RUN, name="tiny", spec=config.to_dict(), run_dir=str(run_dir), state="succeeded")
    return RUN


@pytest.mark.parametrize("command", [["export", RUN], ["runs", "export", RUN]])
def test_an_out_path_that_is_a_file_is_a_message_naming_the_flag(
    run_with_checkpoint, nexa_home, capsys, command
):
    taken = nexa_home / "taken.txt"
    taken.write_text("a file, not a folder\n")
    assert cli.main([*command, "--out", str(taken)]) == 2
    err = capsys.readouterr().err
    assert f"error: out (--out): {taken} is a file; give a folder that is new or empty" in err
    assert "Traceback" not in err and taken.read_text() == "a file, not a folder\n"


def test_an_out_path_under_a_file_is_a_message_too(run_with_checkpoint, nexa_home, capsys):
    taken = nexa_home / "taken.txt"
    taken.write_text("x")
    assert cli.main(["export", RUN, "--out", str(taken / "model")]) == 2
    err = capsys.readouterr().err
    assert "error: out (--out): cannot create" in err and "Traceback" not in err


def test_the_export_still_writes_a_new_folder(run_with_checkpoint, nexa_home, capsys):
    assert cli.main(["export", RUN, "--out", str(nexa_home / "exports" / "tiny")]) == 0
    assert (nexa_home / "exports" / "tiny" / "model.safetensors").is_file()


def test_the_runs_page_export_form_shows_the_message(run_with_checkpoint, nexa_home, monkeypatch):
    monkeypatch.delenv("NEXA_ACCESS_TOKEN", raising=False)
    monkeypatch.chdir(ROOT)
    (nexa_home / "taken.txt").write_text("x")
    at = AppTest.from_file(ROOT / "pages" / "runs.py", default_timeout=120).run()
    at.multiselect(key="runs_pick").set_value([RUN]).run()
    assert not at.exception
    form_input = [t for t in at.text_input if t.label == "Export to folder"][0]
    form_input.input(str(nexa_home / "taken.txt"))
    [b for b in at.button if b.label == "Export"][0].click().run()
    assert not at.exception, at.exception
    assert any("out (--out):" in e.value and "is a file" in e.value for e in at.error)
