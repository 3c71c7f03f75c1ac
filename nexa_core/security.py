"""Who may reach the panel: a pure check of how it is served (address, Streamlit's XSRF/CORS
settings, sign-in) that ``nexa serve`` runs before starting Streamlit and app.py runs at every
session start. A page that can start processes is remote code execution for whoever reaches it,
so listening beyond this machine needs a sign-in and Streamlit's request protections.

Nothing here imports streamlit: the app passes ``st.get_option`` values in; ``nexa serve`` reads
the same settings from Streamlit's config files and environment (``serve_settings``)."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import math
import os
import re
import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import tomllib

from nexa_core.datasets import LIMIT_BYTES
from nexa_core.errors import ConfigError

ADDRESS_ENV = "NEXA_ADDRESS"
PORT_ENV = "NEXA_PORT"
TOKEN_ENV = "NEXA_ACCESS_TOKEN"
DEFAULT_ADDRESS = "127.0.0.1"
DEFAULT_PORT = 8501
MIN_TOKEN_CHARS = 16  # ~96 bits from token_urlsafe(12); shorter secrets are guessable online
MIN_TOKEN_DISTINCT = 8  # 16 × "a", "abab…", a word typed twice: long, but guessed at once
MIN_TOKEN_BITS = 64  # length × log2(size of the character classes it uses)
# letters, digits, then everything else printable: the pools a guesser would try
_TOKEN_CLASSES = ((str.islower, 26), (str.isupper, 26), (str.isdigit, 10))
MAKE_TOKEN = 'python -c "import secrets; print(secrets.token_urlsafe(32))" or openssl rand -base64 32'
UNIX_SOCKET_PREFIX = "unix://"  # Streamlit binds a unix socket for such an address
# Streamlit's own request limits (MB; its defaults are 200), set to NEXA's upload limit: the most
# one request (an upload, a websocket frame) can make the server hold before anyone has signed in.
UPLOAD_LIMIT_MB = LIMIT_BYTES // (1024 * 1024)  # server.maxUploadSize counts MiB, as LIMIT_BYTES does
SIZE_OPTIONS = {  # option -> (ServeSettings field, environment variable, NEXA's limit in MB)
    "server.maxUploadSize": ("max_upload_mb", "STREAMLIT_SERVER_MAX_UPLOAD_SIZE", UPLOAD_LIMIT_MB),
    "server.maxMessageSize": ("max_message_mb", "STREAMLIT_SERVER_MAX_MESSAGE_SIZE", UPLOAD_LIMIT_MB),
}
# An IP literal or a host name: what may follow --server.address on the command line.
_HOST = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:%-]{0,252}$")
_SOCKET_PATH = re.compile(r"^/[A-Za-z0-9._/-]{1,200}$")
HOW_TO_EXPOSE = (
    f"set {TOKEN_ENV} to a long random secret ({MAKE_TOKEN}), or configure OIDC "
    "([auth] in .streamlit/secrets.toml, used by st.login), or bind 127.0.0.1 "
    f"({ADDRESS_ENV}=127.0.0.1) and reach it through an SSH tunnel or a TLS reverse proxy; "
    "see docs/SECURITY.md"
)


@dataclass(frozen=True)
class ServeSettings:
    """How the panel is (to be) served. ``address`` None or "" is Streamlit's default: every interface."""

    address: str | None = DEFAULT_ADDRESS
    port: int = DEFAULT_PORT
    xsrf_protection: bool = True  # server.enableXsrfProtection
    cors_protection: bool = True  # server.enableCORS (True = cross-origin requests refused)
    token: str | None = field(default=None, repr=False)  # NEXA_ACCESS_TOKEN; never printed
    oidc: bool = False  # an [auth] section in secrets.toml: st.login signs users in
    max_upload_mb: int = UPLOAD_LIMIT_MB  # server.maxUploadSize
    max_message_mb: int = UPLOAD_LIMIT_MB  # server.maxMessageSize
    guarded: bool = True  # NEXA's guard (nexa_ui/guard.py) stands in front of Streamlit's endpoints

    @property
    def auth_required(self) -> bool:
        """Whether users must sign in: OIDC configured or a token set (also on loopback)."""
        return self.oidc or bool(self.token)


def is_loopback(address: str | None) -> bool:
    """True when only this machine can connect: a loopback IP, ``localhost`` or a unix socket."""
    if not address:
        return False  # Streamlit's default binds every interface
    if address.startswith(UNIX_SOCKET_PREFIX) or address.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name may resolve to any interface


def address_problems(address: str | None, port: object) -> list[str]:
    """Problems with the address and port before they reach Streamlit's command line."""
    problems = []
    if address and address.startswith(UNIX_SOCKET_PREFIX):
        if not _SOCKET_PATH.match(address[len(UNIX_SOCKET_PREFIX) :]):
            problems.append(
                f"address ({ADDRESS_ENV} / --address): unix socket {address!r} needs an absolute path "
                "of letters, digits, '.', '_', '-' and '/'"
            )
    elif address is not None and not _HOST.match(address):
        problems.append(
            f"address ({ADDRESS_ENV} / --address): {address!r} is not an IP address or host name "
            "(letters, digits, '.', ':', '-', '_'; e.g. 127.0.0.1, 0.0.0.0, ::1)"
        )
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        problems.append(f"port ({PORT_ENV} / --port): must be a whole number from 1 to 65535, got {port!r}")
    return problems


def token_problems(token: str) -> list[str]:
    """Why ``token`` is too weak to guard a panel beyond loopback ([] if it will do): too short, too
    few different characters, or too few bits for the character classes it draws on (a 16-digit
    number is ~53 bits). Never repeats the token itself."""
    length, distinct = len(token), len(set(token))
    if length < MIN_TOKEN_CHARS:
        return [
            f"access token ({TOKEN_ENV}): {length} characters is too short to expose the panel; use at "
            f"least {MIN_TOKEN_CHARS} random characters ({MAKE_TOKEN})"
        ]
    pool = sum(size for test, size in _TOKEN_CLASSES if any(test(c) for c in token))
    pool += 33 if any(not c.isalnum() for c in token) else 0  # punctuation, space and the rest
    bits = length * math.log2(pool)
    if distinct < MIN_TOKEN_DISTINCT or bits < MIN_TOKEN_BITS:
        return [
            f"access token ({TOKEN_ENV}): too predictable to expose the panel ({length} characters but "
            f"{distinct} different, about {bits:.0f} bits; at least {MIN_TOKEN_DISTINCT} different and "
            f"{MIN_TOKEN_BITS} bits are needed); use a random one: {MAKE_TOKEN}"
        ]
    return []


def exposure_problems(settings: ServeSettings) -> list[str]:
    """Why the panel must not start as configured; [] when it may. On loopback anything goes (only
    local users can connect); beyond it, a sign-in and XSRF/CORS protection are required."""
    if is_loopback(settings.address):
        return []
    where = settings.address or "every interface (Streamlit's default)"
    problems = []
    if not settings.auth_required:
        problems.append(
            f"address ({ADDRESS_ENV}): the panel would listen on {where}, beyond this machine, "
            f"with no sign-in; {HOW_TO_EXPOSE}"
        )
    elif not settings.oidc:
        problems += token_problems(settings.token or "")
    for option, (name, env, limit) in SIZE_OPTIONS.items():
        if getattr(settings, name) > limit:
            problems.append(
                f"{option}: {getattr(settings, name)} MB is above NEXA's {limit} MB limit while listening "
                f"on {where}, so one request could make the server hold that much before anyone signs in; "
                f"remove {option.split('.')[1]} from .streamlit/config.toml (and unset {env}), or bind "
                "127.0.0.1"
            )
    if not settings.guarded:
        problems.append(
            f"server: started without NEXA's guard while listening on {where} (Streamlit would take "
            "uploads before sign-in and show /_stcore/metrics to anyone); start the panel with "
            "`nexa serve` (scripts/app.sh), not `streamlit run app.py`, or bind 127.0.0.1"
        )
    for option, on, env, what in (
        ("server.enableXsrfProtection", settings.xsrf_protection, "STREAMLIT_SERVER_ENABLE_XSRF_PROTECTION",
         "cross-site request forgery protection"),
        ("server.enableCORS", settings.cors_protection, "STREAMLIT_SERVER_ENABLE_CORS",
         "the cross-origin (CORS) restriction"),
    ):  # fmt: skip
        if not on:
            problems.append(
                f"{option}: {what} is off while listening on {where}; set {option.split('.')[1]} = true "
                f"under [server] in .streamlit/config.toml (and unset {env}), or bind 127.0.0.1"
            )
    return problems


def token_fingerprint(token: str) -> str:
    """What a signed-in session keeps instead of the token: rotating the token signs everyone out."""
    return hashlib.sha256(b"nexa-session:" + token.encode()).hexdigest()


def token_matches(given: str, expected: str) -> bool:
    """Constant-time comparison, so response timing does not leak how much of a guess was right."""
    return bool(expected) and hmac.compare_digest(given.encode(), expected.encode())


@dataclass
class SignInThrottle:
    """Slows online token guessing. A client (its address) gets ``free`` wrong tokens; after that it
    must wait ``base_s`` × 2^(extra failures) seconds, up to ``max_s``, before the next try is even
    checked. A right token clears its record. At most ``max_clients`` records are kept (oldest out),
    so a flood of addresses cannot grow memory. Server-wide, at most ``global_limit`` wrong tokens
    from all addresses together count per ``global_window_s``; beyond that every try waits until
    the oldest leaves the window (guessing spread over many addresses, or many clients behind one
    proxy). Times are monotonic seconds, passed in for tests."""

    free: int = 5
    base_s: float = 10.0
    max_s: float = 600.0
    max_clients: int = 10_000
    global_limit: int = 30
    global_window_s: float = 60.0
    _failures: dict[str, tuple[int, float]] = field(default_factory=dict, repr=False)
    _recent: deque[float] = field(default_factory=deque, repr=False)  # the last global_limit failures
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def wait_s(self, client: str, now: float) -> float:
        """Seconds before ``client`` may try again (0: now)."""
        with self._lock:
            count, last = self._failures.get(client, (0, now))
            full = len(self._recent) >= self.global_limit
            server_wide = max(0.0, self._recent[0] + self.global_window_s - now) if full else 0.0
        if count < self.free:
            return server_wide
        own = last + min(self.max_s, self.base_s * 2 ** (count - self.free)) - now
        return max(0.0, own, server_wide)

    def failed(self, client: str, now: float) -> None:
        with self._lock:
            count, _ = self._failures.pop(client, (0, now))
            self._failures[client] = (count + 1, now)  # re-inserted last: dicts keep insertion order
            while len(self._failures) > self.max_clients:
                del self._failures[next(iter(self._failures))]
            self._recent.append(now)
            while len(self._recent) > self.global_limit:
                self._recent.popleft()

    def succeeded(self, client: str) -> None:
        with self._lock:
            self._failures.pop(client, None)


# One per server process, as module state: Streamlit's caches are no place for it, since any
# client's clear_cache message empties st.cache_resource (and so would reset the brake).
SIGN_IN_THROTTLE = SignInThrottle()


class SessionGate:
    """The Streamlit sessions the sign-in gate has let in, by session id, so that NEXA's guard in
    front of Streamlit's HTTP endpoints (nexa_ui/guard.py) takes uploads from those sessions only:
    Streamlit's upload endpoint asks for nothing but a live session id. Bounded (oldest out); ids
    are random UUIDs that only their own browser is told."""

    def __init__(self, max_sessions: int = 10_000) -> None:
        self.max_sessions = max_sessions
        self.enforced = False  # set by the guard when the server is built with it
        self._admitted: dict[str, None] = {}
        self._lock = threading.Lock()

    def admit(self, session_id: str) -> None:
        with self._lock:
            self._admitted.pop(session_id, None)
            self._admitted[session_id] = None  # re-inserted last: the oldest go first
            while len(self._admitted) > self.max_sessions:
                del self._admitted[next(iter(self._admitted))]

    def revoke(self, session_id: str) -> None:
        with self._lock:
            self._admitted.pop(session_id, None)

    def admitted(self, session_id: str) -> bool:
        with self._lock:
            return session_id in self._admitted

    def __len__(self) -> int:
        return len(self._admitted)


SESSIONS = SessionGate()  # one per server process, like the throttle


# ------------------------------------------------------------------ settings for `nexa serve`
def _read_toml(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{path}: not valid TOML ({exc}); fix or remove it"]) from None


def _env_bool(value: str) -> bool:
    return value.strip().lower() not in ("false", "0", "no", "off")


def serve_settings(
    project_root: Path, env: Mapping[str, str] | None = None, user_home: Path | None = None
) -> ServeSettings:
    """The settings ``nexa serve`` would start Streamlit with, read as Streamlit reads them:
    ~/.streamlit then the project's .streamlit (config.toml, secrets.toml), then STREAMLIT_* variables.
    Raises ConfigError for a bad NEXA_ADDRESS/NEXA_PORT."""
    env = os.environ if env is None else env
    user_home = Path("~").expanduser() if user_home is None else user_home
    folders = [user_home / ".streamlit", project_root / ".streamlit"]
    server: dict = {}
    oidc = False
    for folder in folders:  # the project's files override the user's, as in Streamlit
        server.update(_read_toml(folder / "config.toml").get("server", {}))
        oidc = oidc or bool(_read_toml(folder / "secrets.toml").get("auth"))
    xsrf = _env_bool(str(server.get("enableXsrfProtection", True)))
    cors = _env_bool(str(server.get("enableCORS", True)))
    if "STREAMLIT_SERVER_ENABLE_XSRF_PROTECTION" in env:
        xsrf = _env_bool(env["STREAMLIT_SERVER_ENABLE_XSRF_PROTECTION"])
    if "STREAMLIT_SERVER_ENABLE_CORS" in env:
        cors = _env_bool(env["STREAMLIT_SERVER_ENABLE_CORS"])
    address = env.get(ADDRESS_ENV) or DEFAULT_ADDRESS
    port_text = env.get(PORT_ENV) or str(DEFAULT_PORT)
    port = int(port_text) if port_text.strip().isdecimal() else None
    problems = address_problems(address, port if port is not None else port_text)
    sizes: dict[str, int] = {}
    for option, (name, variable, limit) in SIZE_OPTIONS.items():
        text = str(env.get(variable, server.get(option.split(".")[1], limit))).strip()
        if text.isdecimal() and int(text) > 0:
            sizes[name] = int(text)
        else:
            problems.append(f"{option} ({variable}): must be a whole number of MB, got {text!r}")
    if problems or port is None:
        raise ConfigError(problems)
    unix = address.startswith(UNIX_SOCKET_PREFIX)  # st.App cannot bind one: served unguarded (serve_argv)
    return ServeSettings(
        address, port, xsrf, cors, env.get(TOKEN_ENV) or None, oidc, **sizes, guarded=not unix
    )


def serve_argv(settings: ServeSettings, project_root: Path, python: str) -> list[str]:
    """``streamlit run nexa_ui/server.py --server.address A --server.port P`` and the size limits,
    as an argv list (no shell). nexa_ui/server.py is app.py inside NEXA's guard (st.App with its
    middleware); st.App cannot bind a unix socket, so for one app.py runs as it is (loopback only)."""
    from nexa_core.paths import ui_server

    guarded = ui_server()
    script = guarded if settings.guarded else project_root / "app.py"
    return [python, "-m", "streamlit", "run", str(script),
            "--server.address", str(settings.address), "--server.port", str(settings.port),
            "--server.maxUploadSize", str(settings.max_upload_mb),
            "--server.maxMessageSize", str(settings.max_message_mb)]  # fmt: skip
