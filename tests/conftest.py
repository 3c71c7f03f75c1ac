"""Shared test set-up: never reach the hub, keep runs and caches inside the test's tmp folders."""

import os

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def nexa_home(tmp_path, monkeypatch):
    """A private NEXA_HOME; any run a test leaves active is stopped afterwards, so a failing test
    never leaks training processes into the rest of the suite."""
    home = tmp_path / "nexa_home"
    monkeypatch.setenv("NEXA_HOME", str(home))
    yield home
    if (home / "runs.sqlite").exists():
        from nexa_core import runner
        from nexa_core.runstore import RunStore

        store = RunStore(home / "runs.sqlite")
        for run in store.list_runs():
            if run["state"] in ("queued", "running"):
                runner.stop(run["id"], grace_s=5, by="test teardown", store=store)
