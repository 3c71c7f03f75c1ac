"""Shared set-up for the AppTests: a fresh NEXA_HOME, the hub offline, the project root as the working
directory (Streamlit reads .streamlit/config.toml from there). A test file may override ``home``."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("NEXA_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(ROOT)
    return tmp_path / "home"
