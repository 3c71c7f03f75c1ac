"""NEXA's guard in front of Streamlit's endpoints: an ASGI middleware that st.App runs before every
request (nexa_ui/server.py; `nexa serve` starts the panel that way). Streamlit's pages check the
sign-in, but some of its endpoints answer without one:

- ``PUT /_stcore/upload_file/<session>/<file>`` stores a file for any live session id, and every
  visitor has one before signing in. Only sessions the sign-in gate has let in
  (``security.SESSIONS``, filled by nexa_ui/auth.py) may upload; others get 403 before a byte of
  the body is read.
- ``/_stcore/metrics`` lists session counts, cache names and upload bytes to anyone: 404.
- The websocket message ``clear_cache`` empties every user's st.cache_data and st.cache_resource
  (AppSession._handle_clear_cache_request); it is dropped, so one client cannot wipe the plans
  the others have cached. The Plan page's own refresh button clears what it needs.

Plain ASGI (no Starlette classes) and Streamlit's public wire format (the BackMsg protobuf); no
Streamlit internals are patched. The size of each request is capped by server.maxUploadSize and
server.maxMessageSize, which `nexa serve` sets to NEXA's limit (nexa_core/security.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from nexa_core import security

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def _core_route(path: str) -> list[str]:
    """The path's segments after ``_stcore`` (any base URL path before it), [] for other paths.
    Empty segments are dropped, so ``/_stcore//metrics/`` is still the metrics route."""
    segments = [s for s in path.split("/") if s]
    return segments[segments.index("_stcore") + 1 :] if "_stcore" in segments else []


def is_clear_cache(data: bytes) -> bool:
    """Whether a websocket frame is Streamlit's clear_cache message (a frame that is not a BackMsg
    is left for Streamlit to refuse)."""
    from streamlit.proto.BackMsg_pb2 import BackMsg

    message = BackMsg()
    try:
        message.ParseFromString(data)
    except Exception:  # not a BackMsg: Streamlit closes the connection itself
        return False
    return message.WhichOneof("type") == "clear_cache"


async def _refuse(send: Send, status: int, text: str) -> None:
    body = text.encode()
    headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class NexaGuard:
    """The middleware (``Middleware(NexaGuard)`` in st.App's list). Building it marks the session
    gate as enforced, which the in-app exposure check requires beyond loopback."""

    def __init__(self, app: ASGIApp, sessions: security.SessionGate | None = None) -> None:
        self.app = app
        self.sessions = security.SESSIONS if sessions is None else sessions
        self.sessions.enforced = True

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = _core_route(scope.get("path", "")) if scope["type"] in ("http", "websocket") else []
        if scope["type"] == "http" and route[:1] == ["metrics"]:
            await _refuse(send, 404, "Not Found")
            return
        if scope["type"] == "http" and route[:1] == ["upload_file"] and scope.get("method") == "PUT":
            session_id = route[1] if len(route) > 1 else ""
            if not self.sessions.admitted(session_id):
                await _refuse(send, 403, "sign in to NEXA before uploading")
                return
        if scope["type"] == "websocket" and route[:1] == ["stream"]:
            receive = self._without_clear_cache(receive)
        await self.app(scope, receive, send)

    @staticmethod
    def _without_clear_cache(receive: Receive) -> Receive:
        async def receive_next() -> Message:
            while True:
                message = await receive()
                data = message.get("bytes") if message["type"] == "websocket.receive" else None
                if not (data and is_clear_cache(data)):
                    return message

        return receive_next
