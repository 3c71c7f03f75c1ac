"""The access gate: app.py shows pages only through it, and every page calls ``require_access()``
first. The logic is nexa_core.security; here are only the Streamlit lines around it.

Why every page too: with a ``pages/`` folder next to app.py, Streamlit runs the first session of a
fresh server in its old multipage mode, where a URL such as ``/launch`` executes pages/launch.py
directly and app.py never runs. The page's own call keeps that path behind the same gate."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from typing import Any

import streamlit as st
from streamlit.runtime.scriptrunner import get_script_run_ctx

from nexa_core import security

SIGNED_IN = "nexa_signed_in"  # session_state: the token's fingerprint once this session signed in


def _oidc_configured() -> bool:
    try:
        return "auth" in st.secrets
    except Exception:  # no secrets.toml at all: Streamlit raises rather than answering False
        return False


def current_settings() -> security.ServeSettings:
    """How this server actually runs (Streamlit's live options) plus the sign-in configuration."""
    return security.ServeSettings(
        address=st.get_option("server.address"),
        port=int(st.get_option("server.port")),
        xsrf_protection=bool(st.get_option("server.enableXsrfProtection")),
        cors_protection=bool(st.get_option("server.enableCORS")),
        token=os.environ.get(security.TOKEN_ENV) or None,
        oidc=_oidc_configured(),
        max_upload_mb=int(st.get_option("server.maxUploadSize")),
        max_message_mb=int(st.get_option("server.maxMessageSize")),
        guarded=security.SESSIONS.enforced,  # served through nexa_ui/server.py (nexa serve)
    )


def _admit(allowed: bool) -> None:
    """Tell NEXA's guard whether this session may upload: only once the gate let it in."""
    ctx = get_script_run_ctx()
    if ctx is not None:
        (security.SESSIONS.admit if allowed else security.SESSIONS.revoke)(ctx.session_id)


def _signed_in(settings: security.ServeSettings) -> bool:
    if settings.oidc:
        return bool(getattr(st.user, "is_logged_in", False))
    if not settings.token:
        return True
    kept = st.session_state.get(SIGNED_IN)
    expected = security.token_fingerprint(settings.token)
    return isinstance(kept, str) and security.token_matches(kept, expected)


def _refused(problems: list[str]) -> None:
    st.title("NEXA will not serve pages like this")
    st.error("Please fix:\n\n" + "\n".join(f"- {p}" for p in problems))


def _sign_in(settings: security.ServeSettings) -> None:
    st.title("Sign in to NEXA")
    if settings.oidc:
        st.button("Sign in", key="nexa_login", on_click=st.login, type="primary")
        return
    with st.form("nexa_sign_in"):
        given = st.text_input("Access token", type="password", key="nexa_token",
                              help=f"the {security.TOKEN_ENV} the panel was started with")  # fmt: skip
        submitted = st.form_submit_button("Sign in", key="nexa_sign_in_submit", type="primary")
    if submitted:
        client, now = _client(), time.monotonic()
        wait = security.SIGN_IN_THROTTLE.wait_s(client, now)
        if wait > 0:  # not even checked: guessing from one address costs time
            st.error(f"access token: too many wrong tokens; try again in {math.ceil(wait)} s")
            return
        if security.token_matches(given, settings.token or ""):
            security.SIGN_IN_THROTTLE.succeeded(client)
            st.session_state[SIGNED_IN] = security.token_fingerprint(settings.token or "")
            st.rerun()
        security.SIGN_IN_THROTTLE.failed(client, now)
        st.error(f"access token: wrong token; use the {security.TOKEN_ENV} value the panel was started with")


def _client() -> str:
    # Behind a reverse proxy this is the proxy's address, so the limit then applies to everyone
    # together: still a brake on guessing, and the proxy can limit per client (docs/SECURITY.md).
    address = getattr(st.context, "ip_address", None)
    return address if isinstance(address, str) and address else "unknown"


def _gate_page(render: Callable[[], None], name: str) -> Any:
    return st.Page(render, title="Sign in" if name == "sign_in" else "NEXA", url_path=name, default=True)


def access_pages(pages: list[Any]) -> list[Any]:
    """``pages`` when this session may see them; else a single page that refuses or signs in."""
    settings = current_settings()
    problems = security.exposure_problems(settings)
    allowed = not problems and _signed_in(settings)
    _admit(allowed)
    if problems:
        return [_gate_page(lambda: _refused(problems), "refused")]
    if not allowed:
        return [_gate_page(lambda: _sign_in(settings), "sign_in")]
    if settings.auth_required:
        with st.sidebar:
            if settings.oidc:
                st.button("Sign out", key="nexa_logout", on_click=st.logout)
            else:
                st.button(
                    "Sign out", key="nexa_sign_out", on_click=st.session_state.pop, args=(SIGNED_IN, None)
                )
    return pages


def require_access() -> None:
    """Stop the page unless this session may see it (the page-level half of the gate)."""
    settings = current_settings()
    problems = security.exposure_problems(settings)
    allowed = not problems and _signed_in(settings)
    _admit(allowed)
    if problems:
        _refused(problems)
        st.stop()
    if not allowed:
        _sign_in(settings)
        st.stop()
