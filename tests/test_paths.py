import re

import pytest

from nexa_core import paths
from nexa_core.errors import ConfigError


def test_nexa_home_honours_env_and_is_created(nexa_home):
    assert paths.nexa_home() == nexa_home and nexa_home.is_dir()
    assert paths.store_path() == nexa_home / "runs.sqlite"
    assert paths.runs_root() == nexa_home / "runs" and (nexa_home / "runs").is_dir()


def test_nexa_home_defaults_to_dot_nexa(tmp_path, monkeypatch):
    monkeypatch.delenv("NEXA_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert paths.nexa_home() == tmp_path / ".nexa" and (tmp_path / ".nexa").is_dir()


@pytest.mark.parametrize("bad", ["../x", "-rf", "a/b", "", ".", "..", ".hidden", "a b", "x" * 129, None])
def test_bad_run_ids_are_refused(nexa_home, bad):
    with pytest.raises(ConfigError, match="run_id"):
        paths.run_dir(bad)


def test_run_dir_is_inside_runs_root(nexa_home):
    assert paths.run_dir("a.b_c-1") == paths.runs_root().resolve() / "a.b_c-1"
    assert paths.run_dir("x" * 128).name == "x" * 128


def test_symlink_escaping_runs_root_is_refused(nexa_home, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (paths.runs_root() / "sneaky").symlink_to(outside)
    (paths.runs_root() / "dangling").symlink_to(tmp_path / "nowhere")
    (paths.runs_root() / "loop").symlink_to(paths.runs_root())
    for run_id in ("sneaky", "dangling", "loop"):
        with pytest.raises(ConfigError, match="run_id"):
            paths.run_dir(run_id)


def test_symlink_within_runs_root_is_allowed(nexa_home):
    (paths.runs_root() / "real").mkdir()
    (paths.runs_root() / "alias").symlink_to(paths.runs_root() / "real")
    assert paths.run_dir("alias") == paths.runs_root().resolve() / "alias"


def test_new_run_ids_are_valid_and_unique(nexa_home):
    shape = re.compile(r"^\d{8}-\d{6}-[a-z0-9-]{1,40}-[0-9a-f]{6}$")
    ids = {paths.new_run_id("My Run!") for _ in range(50)}
    assert len(ids) == 50 and all(shape.match(i) and "-my-run-" in i for i in ids)
    assert paths.run_dir(next(iter(ids))).parent == paths.runs_root().resolve()
    assert "-run-" in paths.new_run_id(None) and "-run-" in paths.new_run_id("日本語")
    long_id = paths.new_run_id("a" * 39 + " " + "b" * 30)
    assert shape.match(long_id) and "--" not in long_id and paths.run_dir(long_id)
