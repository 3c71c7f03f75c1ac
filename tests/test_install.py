"""`pip install .` gives a NEXA that works outside the checkout: its dependencies are declared, the
panel (app.py, pages/, .streamlit/, deployment/) ships inside the package, and `nexa plan` and
`nexa serve` run from any folder. No download: the fresh virtualenv sees the already installed
dependencies through a .pth line and pip installs with --no-index, so a dependency that is declared
but cannot be satisfied fails here, and the import check below catches one that is used but not
declared."""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import re
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _declared() -> set[str]:
    """Distribution names in pyproject.toml's [project] dependencies, normalised."""
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return {re.split(r"[<>=!~ ;\[]", d, maxsplit=1)[0].lower().replace("_", "-") for d in deps}


def test_every_third_party_import_is_a_declared_dependency():
    stdlib = set(sys.stdlib_module_names)
    ours = {"nexa_core", "nexa_ui", "pages", "nexa_panel"}
    imported = set()
    files = [ROOT / "app.py", *(ROOT / d for d in ("nexa_core", "nexa_ui", "pages"))]
    for path in [f for d in files for f in ([d] if d.is_file() else d.rglob("*.py"))]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = imported - stdlib - ours - {"__future__"}
    providers = importlib.metadata.packages_distributions()
    missing = {
        m: providers.get(m)
        for m in third_party
        if not {d.lower() for d in providers.get(m, [])} & _declared()
    }
    assert missing == {}, f"imported but not declared in pyproject.toml: {missing}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_pip_install_then_nexa_plan_and_serve_work_outside_the_checkout(tmp_path):
    venv = tmp_path / "fresh"
    # no pip of its own: Python's bundled setuptools predates built-in wheels; pip and setuptools
    # come from the shared environment with the other dependencies
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    # the installed dependencies, as a plain path entry (its own .pth files, the editable NEXA's
    # finder among them, are not run)
    Path(site, "shared_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "NEXA_HOME") and not k.startswith("STREAMLIT_")
    }
    env.update(NEXA_HOME=str(tmp_path / "home"), HF_HUB_OFFLINE="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    install = subprocess.run(
        [python, "-m", "pip", "install", "--no-index", "--no-build-isolation", str(ROOT)],
        capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]

    away = tmp_path / "elsewhere"  # not the checkout: nothing can come from it
    away.mkdir()
    where = subprocess.run(
        [python, "-c", "import nexa_core, nexa_ui, nexa_core.paths as p; print(nexa_core.__file__, p.panel_dir())"],
        capture_output=True, text=True, timeout=120, env=env, cwd=away,
    )  # fmt: skip
    module, panel = where.stdout.split()
    assert Path(module).is_relative_to(venv) and Path(panel).is_relative_to(venv), where.stdout
    assert (Path(panel) / "app.py").is_file() and (
        Path(panel) / "deployment" / "deepspeed_config.json"
    ).is_file()

    plan = subprocess.run([venv / "bin" / "nexa", "plan", "sentence-transformers/all-MiniLM-L6-v2", "--gpus", "0", "--json"],
                          capture_output=True, text=True, timeout=300, env=env, cwd=away)  # fmt: skip
    assert plan.returncode == 0, plan.stderr[-3000:]
    assert json.loads(plan.stdout)["recommendation"]["zero_stage"] == 0

    port = _free_port()
    log = (tmp_path / "serve.log").open("wb")
    server = subprocess.Popen([venv / "bin" / "nexa", "serve", "--port", str(port)], env=env, cwd=away,
                              stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "nexa serve never answered /_stcore/health"
            try:
                if requests.get(f"{url}/_stcore/health", timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.5)
        assert b"Plan memory before a run" in _first_page(url), (tmp_path / "serve.log").read_text()[-3000:]
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def _first_page(url: str) -> bytes:
    """The messages of a visitor's first script run, as a browser's websocket session gets them."""
    from streamlit.proto.BackMsg_pb2 import BackMsg
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
    from websockets.sync.client import connect

    received = b""
    with connect(url.replace("http", "ws") + "/_stcore/stream", subprotocols=["streamlit"]) as ws:
        rerun = BackMsg()
        rerun.rerun_script.query_string = ""
        ws.send(rerun.SerializeToString())
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            data = ws.recv(timeout=120)
            received += data
            msg = ForwardMsg()
            msg.ParseFromString(data)
            if msg.WhichOneof("type") == "script_finished":
                break
    return received
