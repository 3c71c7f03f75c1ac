"""NEXA's guard in front of Streamlit's endpoints (nexa_ui/guard.py). First a real `nexa serve` on
loopback, driven as an unauthenticated client would drive it: a websocket session (what any visitor
gets before signing in), then Streamlit's upload endpoint and its metrics endpoint. Nothing
reachable before sign-in may consume server memory, and uploads are capped at NEXA's own limit at
the endpoint, not only in the widget. Then the middleware alone, in process."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import requests

from nexa_core import datasets, security
from tests.run_helpers import end_process

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "correct-horse-battery-staple-42"
LIMIT_BYTES = datasets.LIMIT_BYTES  # NEXA's upload limit, 50 MB
MIB = 1024 * 1024


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    pid: int
    xsrf: str  # the XSRF cookie Streamlit hands every visitor (double-submit: header = cookie)

    def rss(self) -> int:
        return psutil.Process(self.pid).memory_info().rss

    def session(self) -> str:
        """Open a websocket session as a browser does and return its id (Streamlit sends it when
        the session's first script run starts: the sign-in form, without a token)."""
        from streamlit.proto.BackMsg_pb2 import BackMsg
        from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
        from websockets.sync.client import connect

        # kept open until the server goes: a closed socket ends the session
        ws = self._sockets.enter_context(
            connect(self.url.replace("http", "ws") + "/_stcore/stream", subprotocols=["streamlit"])
        )
        rerun = BackMsg()
        rerun.rerun_script.query_string = ""
        ws.send(rerun.SerializeToString())
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            msg = ForwardMsg()
            msg.ParseFromString(ws.recv(timeout=60))
            if msg.WhichOneof("type") == "new_session":
                session_id = msg.new_session.initialize.session_id
                self._wait_for_script_end(ws)
                return session_id
        raise AssertionError("no new_session message from the server")

    @staticmethod
    def _wait_for_script_end(ws) -> None:
        from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

        while True:
            msg = ForwardMsg()
            msg.ParseFromString(ws.recv(timeout=60))
            if msg.WhichOneof("type") == "script_finished":
                return

    def put(self, session_id: str, file_id: str, size: int) -> int | None:
        """PUT a file as st.file_uploader does; the status, or None when the server closed the
        connection before taking the body."""
        try:
            response = requests.put(
                f"{self.url}/_stcore/upload_file/{session_id}/{file_id}",
                files={"file": ("big.jsonl", b"x" * size, "application/json")},
                headers={"X-Xsrftoken": self.xsrf},
                cookies={"_streamlit_xsrf": self.xsrf},
                timeout=120,
            )
        except requests.ConnectionError:
            return None
        return response.status_code

    def close(self) -> None:
        self._sockets.close()

    def __post_init__(self) -> None:
        self._sockets = ExitStack()


def _serve(tmp: Path, **env: str) -> Iterator[Server]:
    port = _free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("NEXA_", "STREAMLIT_"))}
    full = {**clean, "NEXA_HOME": str(tmp / "home"), "NEXA_PORT": str(port), "HF_HUB_OFFLINE": "1", **env}
    log = (tmp / "server.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "nexa_core", "serve"], env=full, cwd=tmp,
                            stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (tmp / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the server never answered /_stcore/health"
            try:
                health = requests.get(f"{url}/_stcore/health", timeout=2)
                if health.ok:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.5)
        server = Server(url, proc.pid, health.cookies.get("_streamlit_xsrf", ""))
        yield server
        server.close()
    finally:
        end_process(proc)
        log.close()


@pytest.fixture(scope="module")
def with_token(tmp_path_factory) -> Iterator[Server]:
    """`nexa serve` on loopback with a sign-in token: every visitor must sign in first."""
    yield from _serve(tmp_path_factory.mktemp("serve_token"), NEXA_ACCESS_TOKEN=TOKEN)


@pytest.fixture(scope="module")
def open_panel(tmp_path_factory) -> Iterator[Server]:
    """`nexa serve` on loopback without a token: every session is let in (the default set-up)."""
    yield from _serve(tmp_path_factory.mktemp("serve_open"))


def _peak_rss_while(server: Server, work) -> tuple[int, int]:
    """(RSS before, peak RSS while ``work`` runs), sampled every 20 ms."""
    before = peak = server.rss()
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, server.rss())
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        work()
    finally:
        done.set()
        sampler.join()
    return before, max(peak, server.rss())


def test_an_unauthenticated_client_cannot_grow_server_memory_with_uploads(with_token):
    """The issue's reproduction: a session that never signed in PUTs eight large files. Before,
    all were stored (RSS +740 MB for 8 x 60 MB); now none is, and the server's memory grows by less
    than the upload limit x 2."""
    session = with_token.session()
    statuses: list[int | None] = []

    def attack() -> None:
        for n in range(8):
            statuses.append(with_token.put(session, f"file-{n}", LIMIT_BYTES - MIB))

    before, peak = _peak_rss_while(with_token, attack)
    assert not [s for s in statuses if s is not None and s < 300], statuses  # nothing stored
    assert peak - before < 2 * LIMIT_BYTES, f"RSS grew by {(peak - before) / MIB:.0f} MiB"


def test_the_metrics_endpoint_is_not_served(with_token):
    """/_stcore/metrics listed session counts, cache names and upload bytes to anyone."""
    response = requests.get(f"{with_token.url}/_stcore/metrics", timeout=10)
    assert response.status_code == 404
    assert "session" not in response.text and "cache" not in response.text


def test_a_session_let_in_uploads_up_to_nexas_limit_and_not_beyond(open_panel):
    """The endpoint enforces NEXA's 50 MB (Streamlit's default is 200 MB): a session the gate let in
    can upload a file, one of 51 MB is refused with 413 (or the connection cut before the body)."""
    session = open_panel.session()
    assert open_panel.put(session, "small", 1024) == 204
    assert open_panel.put(session, "too-big", LIMIT_BYTES + MIB) in (413, None)


# ------------------------------------------------------------------ the middleware alone
def _drive(guard, scope: dict, incoming: list[dict]) -> tuple[list[dict], list[dict]]:
    """Run ``guard`` on one request: (messages the app behind it received, messages sent back)."""
    seen, sent, queue = [], [], list(incoming)

    async def app(scope, receive, send):
        while True:
            message = await receive()
            seen.append(message)
            if message["type"] in ("websocket.disconnect", "http.request"):
                break
        await send({"type": "http.response.start", "status": 204, "headers": []})

    async def receive():
        return queue.pop(0)

    async def send(message):
        sent.append(message)

    guard.app = app
    asyncio.run(guard(scope, receive, send))
    return seen, sent


def _back_msg(**fields) -> bytes:
    from streamlit.proto.BackMsg_pb2 import BackMsg

    message = BackMsg()
    for name, value in fields.items():
        if name == "rerun_script":
            message.rerun_script.query_string = value
        else:
            setattr(message, name, value)
    return message.SerializeToString()


def test_clear_cache_messages_never_reach_streamlit_other_messages_do():
    """clear_cache empties every user's caches (and the sender's session state); the guard drops it."""
    from nexa_ui.guard import NexaGuard

    frames = [
        {"type": "websocket.connect"},
        {"type": "websocket.receive", "bytes": _back_msg(clear_cache=True)},
        {"type": "websocket.receive", "bytes": _back_msg(rerun_script="page=plan")},
        {"type": "websocket.receive", "bytes": b"not a protobuf \xff\xff"},
        {"type": "websocket.receive", "bytes": _back_msg(clear_cache=True)},
        {"type": "websocket.disconnect", "code": 1000},
    ]
    guard = NexaGuard(None, security.SessionGate())
    seen, _ = _drive(guard, {"type": "websocket", "path": "/_stcore/stream"}, frames)
    assert seen == [frames[0], frames[2], frames[3], frames[5]]


@pytest.mark.parametrize(
    "path, admitted, status",
    [
        ("/_stcore/upload_file/SESSION/f1", False, 403),
        ("/_stcore/upload_file/SESSION/f1", True, 204),
        ("/base/_stcore/upload_file/SESSION/f1", False, 403),  # under server.baseUrlPath too
        ("/_stcore//upload_file//SESSION/f1", False, 403),
        ("/_stcore/upload_file", False, 403),
        ("/_stcore/metrics", True, 404),
        ("/base/_stcore/metrics/", True, 404),
        ("/_stcore/health", False, 204),
    ],
)
def test_uploads_only_from_admitted_sessions_and_no_metrics(path, admitted, status):
    from nexa_ui.guard import NexaGuard

    sessions = security.SessionGate()
    if admitted:
        sessions.admit("SESSION")
    guard = NexaGuard(None, sessions)
    method = "GET" if "upload_file" not in path else "PUT"
    body = [{"type": "http.request", "body": b"x" * 10, "more_body": False}]
    seen, sent = _drive(guard, {"type": "http", "method": method, "path": path}, body)
    assert sent[0]["status"] == status
    assert bool(seen) == (status == 204)  # refused requests never reach Streamlit, body unread
    assert sessions.enforced  # building the guard tells the in-app check it is in place


def test_the_session_gate_is_bounded():
    sessions = security.SessionGate(max_sessions=3)
    for n in range(5):
        sessions.admit(f"s{n}")
    assert len(sessions) == 3 and not sessions.admitted("s0") and sessions.admitted("s4")
    sessions.revoke("s4")
    assert not sessions.admitted("s4")
