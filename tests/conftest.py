"""Shared test set-up: never reach the hub, keep runs and caches inside the test's tmp folders."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER") and os.environ.get("NEXA_HOME"):
    # each pytest-xdist worker its own home (scripts/test.sh runs two): the launch lock and the
    # one-run-per-device rule live there, so a test without the nexa_home fixture never queues behind
    # the other worker's run
    os.environ["NEXA_HOME"] = os.path.join(os.environ["NEXA_HOME"], os.environ["PYTEST_XDIST_WORKER"])


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


SLURM_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "slurm_local.sh"


def pytest_configure(config):
    # registered beside the fixture it belongs to (the other markers are in pyproject.toml)
    config.addinivalue_line(
        "markers", "slurm: submits jobs to a private Slurm cluster on this machine (scripts/slurm_local.sh)"
    )


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A private two-node Slurm cluster on this machine for the whole session (scripts/slurm_local.sh:
    munged, slurmctld, two slurmd), reached through SLURM_CONF; stopped, with its jobs, at the end.
    Skipped, with the command to run, where Slurm is missing or cannot start (no root or sudo)."""
    missing = [tool for tool in ("munged", "slurmctld", "slurmd", "sbatch") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"Slurm is not installed ({', '.join(missing)} missing): bash {SLURM_SCRIPT} install")
    folder = tmp_path_factory.mktemp("slurm")
    started = subprocess.run(
        ["bash", str(SLURM_SCRIPT), "start", str(folder)], capture_output=True, text=True, timeout=180
    )
    if started.returncode != 0:
        subprocess.run(["bash", str(SLURM_SCRIPT), "stop", str(folder)], capture_output=True, timeout=180)
        pytest.skip(f"the local Slurm cluster did not start: {started.stderr.strip()[-1500:]}; "
                    f"try: bash {SLURM_SCRIPT} start /tmp/nexa-slurm")  # fmt: skip
    saved = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(folder / "slurm.conf")
    try:
        yield folder
    finally:
        subprocess.run(["bash", str(SLURM_SCRIPT), "stop", str(folder)], capture_output=True, timeout=180)
        if saved is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = saved
