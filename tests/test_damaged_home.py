"""A damaged or unusable NEXA_HOME: every case is one line naming the part and the fix, exit status 2,
never a traceback, from the command line and on the panel's pages; a read-only NEXA_HOME still
lists and shows runs (nexa_core/paths.py, runstore.py, runner.py)."""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from nexa_core import cli
from nexa_core.runstore import RunStore

ROOT = Path(__file__).resolve().parents[1]
RUN = "20260101-000000-kept-abcdef"


def _store_with_a_run(home: Path) -> RunStore:
    home.mkdir(parents=True, exist_ok=True)
    store = RunStore(home / "runs.sqlite")
    store.create_run(
        RUN, name="kept", spec={"model": "m", "task": "classification"}, run_dir=str(home / "runs" / RUN)
    )
    (home / "runs" / RUN).mkdir(parents=True)
    for step in range(1, 400):  # enough pages that a truncated file loses some of them
        store.log_metrics(RUN, step, {"loss": 1.0 / step, "lr": 1e-4})
    store.set_state(RUN, "failed", reason="kept for the test")
    return store


def _random_bytes(home: Path) -> None:
    home.mkdir(parents=True)
    (home / "runs.sqlite").write_bytes(os.urandom(16384))


def _truncated(home: Path) -> None:
    _store_with_a_run(home)
    path = home / "runs.sqlite"
    with path.open("r+b") as f:
        f.truncate(path.stat().st_size // 2)


def _layout(part: str, kind: str) -> Callable[[Path], None]:
    def make(home: Path) -> None:
        home.mkdir(parents=True)
        target = home / part
        target.mkdir() if kind == "folder" else target.write_text("not a folder\n")

    return make


LAUNCH = ["launch", "--max-steps", "1", "--deepspeed", "off", "--batch-size", "2", "--seq-len", "8"]
CASES = {  # name: (damage, commands that must each refuse in one line, words the line must hold)
    "store random bytes": (_random_bytes, [["runs", "list"], ["runs", "show", RUN], LAUNCH], ["runs.sqlite", "damaged", "mv"]),
    "store truncated": (_truncated, [["runs", "list"], ["runs", "show", RUN]], ["runs.sqlite", "damaged", "mv"]),
    "store is a folder": (_layout("runs.sqlite", "folder"), [["runs", "list"], LAUNCH], ["runs.sqlite", "is a folder"]),
    "launch.lock is a folder": (_layout("launch.lock", "folder"), [["runs", "list"], LAUNCH], ["launch.lock", "is a folder"]),
    "runs is a file": (_layout("runs", "file"), [["runs", "list"], LAUNCH], ["runs", "is a file, not a folder"]),
    "presets is a file": (_layout("presets", "file"), [["presets", "list"], ["presets", "save", "p1"]], ["presets", "is a file, not a folder"]),
}  # fmt: skip


def _refusals(capsys, argv: list[str]) -> list[str]:
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code == 2, f"nexa {' '.join(argv)} exited {code}: {err}"
    assert "Traceback" not in err
    return err.strip().splitlines()


@pytest.mark.parametrize("case", CASES)
def test_a_damaged_nexa_home_is_one_line_and_exit_2(case, nexa_home, capsys):
    damage, commands, words = CASES[case]
    damage(nexa_home)
    for argv in commands:
        (line,) = _refusals(capsys, argv)
        assert line.startswith(f"nexa {argv[0]}: error: ")
        assert all(w in line for w in words), line


def test_nexa_home_being_a_file_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    home = tmp_path / "home"
    home.write_text("a file where NEXA_HOME should be\n")
    monkeypatch.setenv("NEXA_HOME", str(home))
    for argv in (["runs", "list"], ["presets", "list"], LAUNCH):
        (line,) = _refusals(capsys, argv)
        assert f"NEXA_HOME ({home}): is a file, not a folder" in line


# ------------------------------------------------------------------ read-only NEXA_HOME
def _without_root_override() -> None:
    """In the child before exec: drop the capabilities that let root write anything, so file
    modes apply to it as to any user (bounding set; Linux prctl PR_CAPBSET_DROP)."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2, 3):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER
        if libc.prctl(24, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def _nexa_read_only(home: Path, *argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "NEXA_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "nexa_core", *argv], env=env, capture_output=True, text=True, timeout=300,
        preexec_fn=_without_root_override if os.geteuid() == 0 else None,
    )  # fmt: skip


def test_a_read_only_nexa_home_still_lists_and_shows_runs_and_refuses_changes_in_one_line(nexa_home):
    _store_with_a_run(nexa_home).set_state(RUN, "running")  # recorded as running: `runs stop` must write
    (nexa_home / "launch.lock").touch()
    for path in [nexa_home, *nexa_home.rglob("*")]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    try:
        probe = subprocess.run([sys.executable, "-c", f"open({str(nexa_home / 'x')!r}, 'w')"], capture_output=True,
                               preexec_fn=_without_root_override if os.geteuid() == 0 else None)  # fmt: skip
        if probe.returncode == 0:
            pytest.skip("this process can write a read-only folder (no way to drop root's override here)")
        listed = _nexa_read_only(nexa_home, "runs", "list", "--json")
        assert listed.returncode == 0, listed.stderr
        assert [r["run_id"] for r in json.loads(listed.stdout)] == [RUN]
        shown = _nexa_read_only(nexa_home, "runs", "show", RUN)
        assert shown.returncode == 0 and json.loads(shown.stdout)["state"] == "running", shown.stderr
        assert _nexa_read_only(nexa_home, "presets", "list").returncode == 0
        for argv in (LAUNCH, ["runs", "stop", RUN], ["presets", "save", "p1"]):
            done = _nexa_read_only(nexa_home, *argv)
            assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
            (line,) = done.stderr.strip().splitlines()
            assert line.startswith(f"nexa {argv[0]}: error: ") and "writable" in line, line
    finally:
        for path in [nexa_home, *nexa_home.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)


# ------------------------------------------------------------------ the pages
PAGE_CASES = [(c, p) for c in ("store random bytes", "launch.lock is a folder", "runs is a file")
              for p in ("runs.py", "monitor.py", "launch.py", "compare.py")] + [("presets is a file", "launch.py")]  # fmt: skip


@pytest.mark.parametrize("case, page", PAGE_CASES)
def test_the_pages_show_the_damage_as_a_message(case, page, nexa_home, monkeypatch):
    monkeypatch.delenv("NEXA_ACCESS_TOKEN", raising=False)
    monkeypatch.chdir(ROOT)
    CASES[case][0](nexa_home)
    at = AppTest.from_file(ROOT / "pages" / page, default_timeout=120).run()
    assert not at.exception, at.exception
    messages = " ".join(e.value for e in at.error)
    assert all(w in messages for w in CASES[case][2]), messages
