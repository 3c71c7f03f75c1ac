"""Presets and clones: a saved launch configuration comes back exactly, bad names and broken files
are clear errors, and a past run's configuration comes back as a new run's."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from nexa_core import paths, presets
from nexa_core.errors import ConfigError
from nexa_core.launch import RunSpec
from nexa_core.scaling import write_launch_files
from nexa_core.train_config import RUN_CONFIG, TrainConfig


@pytest.fixture
def spec() -> RunSpec:
    train = TrainConfig(deepspeed="on", zero_stage=3, offload_optimizer="cpu", batch_size=4, max_steps=7,
                        lora=True, lora_rank=4, seed=3, save_every=2, name="zero3 lora")  # fmt: skip
    return RunSpec(train, "deepspeed", 2, master_port=29555, nodes=2, hosts=["a slots=2", "b slots=2"])


def test_a_preset_round_trips_every_field(nexa_home, spec):
    path = presets.save("zero3 offload", spec)
    assert path.parent == nexa_home / "presets" and presets.names() == ["zero3 offload"]
    back = presets.load("zero3 offload")
    assert back.train == spec.train  # seed, save_every and the rest, not only what a page shows
    assert back.to_dict() == spec.to_dict() and [h.name for h in back.hosts] == ["a", "b"]


def test_saving_again_replaces_and_delete_removes(nexa_home, spec):
    presets.save("p", spec)
    spec.train.max_steps = 99
    presets.save("p", spec)
    assert presets.load("p").train.max_steps == 99
    assert not list((nexa_home / "presets").glob(".preset-*"))  # no temporary file left behind
    presets.delete("p")
    assert presets.names() == []
    with pytest.raises(ConfigError, match="no preset 'p'"):
        presets.delete("p")


@pytest.mark.parametrize(
    "name", ["", "-rm", "../escape", "a/b", "x" * 65, ".hidden", "trailing ", "tab\tname"]
)
def test_bad_preset_names_are_refused_with_the_rule(nexa_home, spec, name):
    with pytest.raises(ConfigError, match="preset name: .* letters, digits"):
        presets.save(name, spec)
    assert not list(nexa_home.rglob("*.json"))  # nothing written, inside or outside the folder


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "cannot read"),
        ("[1, 2]", "expected an object with 'train'"),
        ('{"train": {"batch_size": -1}}', "batch_size"),
        ('{"train": {"shoe_size": 9}}', "unknown field"),
        ('{"train": {}, "launch": {"mode": "ssh-everywhere"}}', "mode"),
        ('{"train": {}, "launch": {"hosts": [{"nom": "a"}]}}', "hosts"),
    ],
)
def test_a_broken_preset_file_names_itself_and_the_problem(nexa_home, content, message):
    (presets.presets_dir() / "broken.json").write_text(content)
    with pytest.raises(ConfigError) as exc:
        presets.load("broken")
    assert all(p.startswith("preset 'broken'") for p in exc.value.problems)
    assert message in " ".join(exc.value.problems)


def test_missing_preset_lists_the_saved_ones(nexa_home, spec):
    presets.save("kept", spec)
    with pytest.raises(ConfigError, match="no preset 'gone'; saved presets: kept"):
        presets.load("gone")


def test_a_past_run_is_cloned_as_a_new_run(nexa_home, spec):
    run_dir = paths.run_dir("r1")
    run_dir.mkdir(parents=True)
    spec.train.write(run_dir / RUN_CONFIG)
    write_launch_files(spec, run_dir, has_gpu=False)
    clone = presets.of_run(run_dir, "r1")
    assert clone.train == spec.train and not clone.resume and clone.to_dict() == spec.to_dict()
    assert presets.of_run(run_dir, "r1", resume=True).resume
    (run_dir / "spec.json").write_text("{")
    with pytest.raises(ConfigError, match="run 'r1': its launch settings"):
        presets.of_run(run_dir, "r1")


def nexa(home, *args: str) -> subprocess.CompletedProcess:
    env = {"NEXA_HOME": str(home), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "nexa_core", *args], capture_output=True, text=True,
                          timeout=120, env=env)  # fmt: skip


def test_cli_saves_shows_and_launch_flags_override_a_preset(nexa_home):
    saved = nexa(nexa_home, "presets", "save", "quick", "--max-steps", "3", "--zero-stage", "2",
                 "--deepspeed", "on", "--name", "demo", "--json")  # fmt: skip
    assert saved.returncode == 0, saved.stderr
    assert json.loads(saved.stdout)["preset"] == "quick"
    shown = json.loads(nexa(nexa_home, "presets", "show", "quick", "--json").stdout)
    assert shown["train"]["max_steps"] == 3 and shown["train"]["name"] == "demo"
    # a new preset from the first one, with one flag changed: the rest is inherited
    nexa(nexa_home, "presets", "save", "quick-z3", "--preset", "quick", "--zero-stage", "3")
    derived = presets.load("quick-z3")
    assert derived.train.zero_stage == 3 and derived.train.max_steps == 3 and derived.train.name == "demo"
    listed = json.loads(nexa(nexa_home, "presets", "list", "--json").stdout)
    assert listed == ["quick", "quick-z3"]


def test_cli_preset_mistakes_are_one_line_each(nexa_home):
    out = nexa(nexa_home, "launch", "--preset", "nope")
    assert out.returncode == 2 and "no preset 'nope'" in out.stderr and "Traceback" not in out.stderr
    out = nexa(nexa_home, "launch", "--preset", "a", "--from-run", "b")
    assert out.returncode == 2 and "start from one of --config, --preset, --from-run" in out.stderr
    out = nexa(nexa_home, "presets", "show")
    assert out.returncode == 2 and "needs a preset name" in out.stderr
