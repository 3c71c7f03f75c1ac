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
    if (home / "runs.sqlite").is_file():
        import sqlite3

        from nexa_core import runner
        from nexa_core.errors import ConfigError
        from nexa_core.runstore import RunStore

        store = RunStore(home / "runs.sqlite")
        try:
            active = store.list_runs()
        except (ConfigError, sqlite3.DatabaseError):  # a store the test damaged on purpose
            return
        for run in active:
            if run["state"] in ("queued", "running"):
                runner.stop(run["id"], grace_s=5, by="test teardown", store=store)
