"""Browser end-to-end set-up: the app started exactly as the README says (`bash scripts/app.sh`) on a
free loopback port with a private NEXA_HOME, and Debian's Chromium driven by Playwright.

No browser is downloaded: Playwright's wheel bundles only its driver, and the browser is the system's
/usr/bin/chromium, which scripts/test.sh installs when it is missing."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
# Without the background-networking flags Chromium keeps trying to reach Google's services, which on a
# closed network stalls page loads; --no-sandbox because CI runs as root.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# The first start may build the environment; later ones take seconds. Generous: CI shares 2 cores.
APP_START_TIMEOUT_S = 600
SCREENSHOTS_ENV = "NEXA_UPDATE_SCREENSHOTS"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


class App:
    """The running panel: its URL, its NEXA_HOME and its log (shown when a test fails)."""

    def __init__(self, url: str, home: Path, log_path: Path) -> None:
        self.url, self.home, self.log_path = url, home, log_path

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    """`bash scripts/app.sh` with NEXA_PORT and NEXA_HOME set, in its own process group so teardown
    ends the app and nothing else; any run it left active is stopped through the run store."""
    work = tmp_path_factory.mktemp("e2e_app")
    home, log_path = work / "nexa_home", work / "app.log"
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "NEXA_HOME": str(home), "NEXA_PORT": str(port), "HF_HUB_OFFLINE": "1"}
    env.pop("NEXA_ADDRESS", None)  # loopback, as a newcomer starts it
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            ["bash", "scripts/app.sh"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    started = App(url, home, log_path)
    try:
        deadline = time.monotonic() + APP_START_TIMEOUT_S
        while not _healthy(url):
            if proc.poll() is not None:
                pytest.fail(f"scripts/app.sh exited with {proc.returncode}:\n{started.log_tail()}")
            if time.monotonic() > deadline:
                pytest.fail(f"the app did not answer {url}/_stcore/health in {APP_START_TIMEOUT_S} s:\n"
                            f"{started.log_tail()}")  # fmt: skip
            time.sleep(0.5)
        yield started
    finally:
        _stop_runs(home)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)


def _stop_runs(home: Path) -> None:
    """A run is its own process session (it outlives the app by design), so a failed test stops it here."""
    if not (home / "runs.sqlite").exists():
        return
    from nexa_core import runner
    from nexa_core.runstore import RunStore

    store = RunStore(home / "runs.sqlite")
    for run in store.list_runs():
        if run["state"] in ("queued", "running"):
            runner.stop(run["id"], grace_s=5, by="e2e teardown", store=store)


@pytest.fixture
def no_run_left(app) -> Iterator[None]:
    """For a test that starts a run meant to be stopped: if the test fails first, the run is stopped
    when it ends, not when the module's app ends (a 10,000-step run left going slowed every later test)."""
    yield
    _stop_runs(app.home)


@pytest.fixture(scope="module")
def browser() -> Iterator:
    if not CHROMIUM.exists():
        pytest.skip(
            f"{CHROMIUM} is missing: run the tests through `bash scripts/test.sh`, which installs it "
            "(apt-get install chromium; needs root or sudo)"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    opened = context.new_page()
    yield opened
    context.close()


@pytest.fixture
def screenshot_dir(tmp_path: Path) -> Path:
    """docs/img/ when NEXA_UPDATE_SCREENSHOTS=1 (the README's tour), else a temp folder so CI never
    dirties the tree."""
    if os.environ.get(SCREENSHOTS_ENV) == "1":
        folder = ROOT / "docs" / "img"
        folder.mkdir(parents=True, exist_ok=True)
        return folder
    return tmp_path / "screenshots"
