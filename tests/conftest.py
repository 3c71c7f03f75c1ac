"""Shared test set-up: never reach the hub, keep runs and caches inside the test's tmp folders."""

import os

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def nexa_home(tmp_path, monkeypatch):
    home = tmp_path / "nexa_home"
    monkeypatch.setenv("NEXA_HOME", str(home))
    return home
