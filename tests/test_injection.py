"""Hostile input for every field that reaches a command line or a path (property-based, hypothesis):
each is refused with a ConfigError naming the field, or passed on unchanged as one argv element
(never through a shell), and no resolved path leaves the runs root. Then a real launch and the CLI
with hostile values, checking that the marker file an injection would create never appears."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nexa_core import paths, runner, security
from nexa_core.errors import ConfigError
from nexa_core.launch import PROJECT_ROOT, RunSpec, build_launch
from nexa_core.train_config import TrainConfig

MARKER = "INJECTED_MARKER"
HOSTILE = [
    f"$(touch {MARKER})", f"`touch {MARKER}`", f"; touch {MARKER}", f"a && touch {MARKER}", f"a | touch {MARKER}",
    f"x\ntouch {MARKER}", "a\x00b", "\r", "--flag=x", "--help", "-rf", "-", "../../etc/passwd", "..", ".",
    "/etc/passwd", "/", "~", "~root/.ssh", "$HOME", "${IFS}", "a b", " ", "", "名前/モデル", "\u202egnp.exe",
    "a" * 5000, "%s%n", "' OR 1=1 --", "org/name", "sentence-transformers/all-MiniLM-L6-v2",
]  # fmt: skip
# Fixed nasties, arbitrary unicode, and nasties glued to arbitrary text.
hostile = st.one_of(
    st.sampled_from(HOSTILE),
    st.text(max_size=60),
    st.builds(lambda a, b, c: a + b + c, st.text(max_size=8), st.sampled_from(HOSTILE), st.text(max_size=8)),
)
FEW = settings(
    max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _argv_of(spec: RunSpec, run_id: str = "run-1") -> list[str]:
    argv, env = build_launch(spec, run_id, paths.run_dir(run_id))
    assert isinstance(argv, list) and all(type(a) is str for a in argv)
    assert all("\x00" not in v for v in env.values())
    return argv


def _inside(path: Path, root: Path) -> bool:
    real, root = Path(os.path.realpath(path)), Path(os.path.realpath(root))
    return real == root or root in real.parents


# ------------------------------------------------------------------ training config fields
@pytest.mark.parametrize(
    "field, flag", [("model", "model"), ("name", "name (--name)"), ("dataset", "dataset (--dataset)"),
                    ("eval_dataset", "eval_dataset (--eval-dataset)"), ("tracker", "tracker (--tracker)")],
)  # fmt: skip
@FEW
@given(value=hostile)
def test_train_config_text_fields_are_refused_by_name_or_kept_verbatim(
    nexa_home, tmp_path, field, flag, value
):
    try:
        config = TrainConfig(**{field: value})
    except ConfigError as exc:
        assert any(p.startswith(flag) for p in exc.problems), exc.problems
        return
    assert getattr(config, field) == value
    assert not value.startswith("-") and not any(ord(c) < 32 for c in value)
    # Accepted values travel in run_config.json, byte for byte, never on the command line.
    config.write(tmp_path / "run.json")
    assert getattr(TrainConfig.load(tmp_path / "run.json"), field) == value
    assert _argv_of(RunSpec(config)) == _argv_of(RunSpec(TrainConfig()))  # the command never changes


@FEW
@given(
    value=st.one_of(hostile, st.integers(), st.floats(), st.booleans(), st.lists(st.integers(), max_size=3))
)
def test_non_text_values_from_a_config_file_are_refused_without_traceback(nexa_home, tmp_path, value):
    for field in ("model", "name", "dataset"):
        (tmp_path / "c.json").write_text(json.dumps({field: value}))
        try:
            TrainConfig.load(tmp_path / "c.json")
        except ConfigError as exc:
            assert any(field in p for p in exc.problems)


@pytest.mark.parametrize("field", ["mode", "nproc", "gpus", "master_port"])
@FEW
@given(value=st.one_of(hostile, st.integers(-(2**40), 2**40), st.floats(), st.booleans(), st.none(),
                       st.lists(st.one_of(st.integers(-5, 2000), st.booleans(), st.text(max_size=3)), max_size=4)))  # fmt: skip
def test_launch_options_are_refused_by_name_or_passed_unchanged(nexa_home, field, value):
    if field in ("mode", "gpus") and value is None:
        return
    try:
        spec = RunSpec(TrainConfig(), **{field: value})
    except ConfigError as exc:
        assert any(p.startswith(field) for p in exc.problems), exc.problems
        return
    argv = _argv_of(spec)
    if field == "master_port" and value is not None:
        assert argv[argv.index("--master_port") + 1] == str(value) if "--master_port" in argv else True
    if field == "nproc" and "--nproc_per_node" in argv:
        assert argv[argv.index("--nproc_per_node") + 1] == str(value)


MULTI_NODE = dict(
    mode="deepspeed", nodes=2, master_port=29600, hosts=["worker-0 slots=1", "worker-1 slots=1"]
)
HOST_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-")


@pytest.mark.parametrize("field", ["master_addr", "include", "exclude", "hosts"])
@FEW
@given(value=st.one_of(hostile, st.sampled_from(["worker-0", "worker-1@worker-0", "10.0.0.1", "worker-0:0"])))
def test_multi_node_fields_are_refused_or_passed_as_plain_host_names(nexa_home, field, value):
    """Host names reach the DeepSpeed launcher's argv and its hostfile (read by ssh/pdsh)."""
    wrapped = [f"{value} slots=1", "worker-1 slots=1"] if field == "hosts" else value
    try:
        spec = RunSpec(TrainConfig(), **{**MULTI_NODE, field: wrapped})
    except ConfigError as exc:
        plain = set(value) <= HOST_CHARS | set("@:,") and value and not value.startswith("-")
        assert plain or any(p.startswith(field) for p in exc.problems), exc.problems
        return
    argv = _argv_of(spec)
    names = [h.name for h in spec.hosts]
    assert all(set(n) <= HOST_CHARS and not n.startswith("-") for n in names)
    if field in ("master_addr", "include", "exclude") and value:  # "" leaves include/exclude unset
        assert value in argv and not value.startswith("-")


# ------------------------------------------------------------------ run ids and paths
@FEW
@given(run_id=hostile)
def test_run_ids_resolve_inside_the_runs_root_and_reach_argv_as_one_element(nexa_home, run_id):
    try:
        folder = paths.run_dir(run_id)
    except ConfigError as exc:
        assert exc.problems[0].startswith("run_id")
        return
    assert _inside(folder, paths.runs_root()) and folder != paths.runs_root().resolve()
    argv = _argv_of(RunSpec(TrainConfig()), run_id)
    assert argv[argv.index("--run-id") + 1] == run_id


@pytest.fixture
def planted(nexa_home, tmp_path):
    """Symlinks inside NEXA_HOME that point out of it, for the path properties to trip over."""
    outside = tmp_path / "outside"
    outside.mkdir()
    home = paths.nexa_home()
    (home / "exports").mkdir()
    (home / "exports" / "escape").symlink_to(outside)
    (home / "to-root").symlink_to("/")
    (paths.runs_root() / "sneaky").symlink_to(outside)
    return outside


parts = st.sampled_from(
    ["..", ".", "exports", "escape", "to-root", "etc", "runs", "sneaky", "x y", "~", "", "-o"]
)
hostile_paths = st.one_of(hostile, st.lists(parts, min_size=1, max_size=5).map("/".join),
                          st.lists(parts, min_size=1, max_size=5).map(lambda p: "/" + "/".join(p)))  # fmt: skip


@FEW
@given(text=hostile_paths)
def test_web_supplied_paths_never_resolve_outside_nexa_home(planted, text):
    try:
        resolved = paths.inside_home(text, "out")
    except ConfigError as exc:
        assert exc.problems[0].startswith("out:")
        return
    assert _inside(resolved, paths.nexa_home()) and not _inside(resolved, planted)


@FEW
@given(name=hostile_paths)
def test_uploaded_file_names_are_saved_inside_nexa_home_uploads(planted, name):
    from nexa_ui.shared import save_upload

    saved = save_upload(name, b'{"text": "a", "label": "b"}\n')
    assert saved.parent == paths.nexa_home() / "uploads" and _inside(saved, paths.nexa_home() / "uploads")
    assert not saved.name.split("-", 1)[1].startswith((".", "-")) and saved.is_file()


@FEW
@given(address=hostile, port=st.one_of(hostile, st.integers(-(2**20), 2**20).map(str)))
def test_serve_address_and_port_are_refused_or_one_argv_element_each(tmp_path, address, port):
    """NEXA_ADDRESS / NEXA_PORT, as `nexa serve` reads them, on their way to Streamlit's argv."""
    try:
        settings = security.serve_settings(tmp_path, {"NEXA_ADDRESS": address, "NEXA_PORT": port}, tmp_path)
    except ConfigError as exc:
        assert all(p.startswith(("address (NEXA_ADDRESS", "port (NEXA_PORT")) for p in exc.problems)
        return
    argv = security.serve_argv(settings, PROJECT_ROOT, sys.executable)
    assert argv[argv.index("--server.address") + 1] == (address or security.DEFAULT_ADDRESS)
    assert not settings.address.startswith("-") and 1 <= int(argv[argv.index("--server.port") + 1]) <= 65535


def test_no_shell_anywhere_in_nexa_core():
    """Every process NEXA starts is an argv list: never a shell argument, os.system or os.popen."""
    for source in (PROJECT_ROOT / "nexa_core").rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text(), str(source))):
            if isinstance(node, ast.keyword) and node.arg == "shell":
                pytest.fail(f"{source}: shell= argument")
            if isinstance(node, ast.Attribute) and node.attr in ("system", "popen", "getstatusoutput"):
                pytest.fail(f"{source}:{node.lineno}: os.{node.attr}")


# ------------------------------------------------------------------ real processes
def _markers(*folders: Path) -> list[Path]:
    """Files an injected `touch MARKER[n]` would have created in a working directory (the hostile
    names merely contain the text)."""
    return [p for f in folders for p in f.glob(f"{MARKER}*") if p.name.removeprefix(MARKER) in ("", *"23456")]


def test_cli_refuses_hostile_values_and_nothing_is_injected(nexa_home, tmp_path):
    env = {**os.environ, "NEXA_HOME": str(nexa_home)}
    for flags in (["--name", f"$(touch {MARKER})"], ["--model=--version"], ["--run-id", f"x;touch {MARKER}"],
                  ["--dataset", f"`touch {MARKER}`.jsonl"], ["--mode", f"python;touch {MARKER}"]):  # fmt: skip
        done = subprocess.run(
            [sys.executable, "-m", "nexa_core", "launch", *flags],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
        assert "nexa launch: error:" in done.stderr
    assert not _markers(tmp_path, PROJECT_ROOT)


def test_a_run_with_hostile_but_valid_paths_trains_and_injects_nothing(nexa_home, tmp_path):
    """A model folder and a dataset whose names are shell code are legal file names: the run uses
    them verbatim (argv list, JSON run config) and no shell ever interprets them."""
    model = tmp_path / f"m $(touch {MARKER}) `touch {MARKER}2`; touch {MARKER}3"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({
        "model_type": "bert", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
        "intermediate_size": 64, "vocab_size": 30522, "max_position_embeddings": 64,
    }))  # fmt: skip
    data = tmp_path / f"d $(touch {MARKER}4);`touch {MARKER}5`.jsonl"
    rows = [{"text": f"example {i} $(touch {MARKER}6)", "label": "ab"[i % 2]} for i in range(8)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = TrainConfig(
        model=str(model), task="classification", dataset=str(data), random_init=True, deepspeed="off",
        max_steps=1, batch_size=2, seq_len=16, eval=False, save=False, name="hostile paths",
    )  # fmt: skip
    run_id = runner.launch(RunSpec(config))
    run = runner.wait(run_id, timeout_s=300)
    assert run["state"] == "succeeded", runner.logs(run_id)[-2000:]
    saved = json.loads((Path(run["run_dir"]) / "run_config.json").read_text())
    assert saved["model"] == str(model) and saved["dataset"] == str(data)
    assert not _markers(tmp_path, PROJECT_ROOT, nexa_home, Path(run["run_dir"]), model)
