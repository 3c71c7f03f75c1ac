"""The access gate, driven with AppTest through app.py (as a browser session would) and through a
page file run on its own (Streamlit's pages-folder mode, which skips app.py)."""

import re
from pathlib import Path

import pytest
from streamlit import config
from streamlit.testing.v1 import AppTest

from nexa_core.security import token_fingerprint

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "correct-horse-battery-staple-42"


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("NEXA_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("NEXA_ACCESS_TOKEN", TOKEN)
    monkeypatch.chdir(ROOT)
    return tmp_path / "home"


@pytest.fixture
def fresh_throttle(monkeypatch):
    """A fresh server's sign-in throttle (it is server-wide state that outlives sessions)."""
    from nexa_core import security

    monkeypatch.setattr(security, "SIGN_IN_THROTTLE", security.SignInThrottle(), raising=False)


def _shows_only_the_sign_in_form(at: AppTest) -> None:
    assert not at.exception
    assert [t.value for t in at.title] == ["Sign in to NEXA"]
    assert [w.label for w in at.text_input] == ["Access token"]
    assert not at.selectbox and not at.number_input and not at.code and not at.metric  # no page content


def test_no_page_content_without_the_token_an_error_on_a_wrong_one_the_plan_after_the_right_one(
    home, fresh_throttle
):
    at = AppTest.from_file(ROOT / "app.py", default_timeout=120).run()
    _shows_only_the_sign_in_form(at)
    assert not at.error
    at.text_input(key="nexa_token").input("wrong-token-wrong-token")
    at.button(key="nexa_sign_in_submit").click().run()
    _shows_only_the_sign_in_form(at)
    assert "access token: wrong token" in at.error[0].value
    at.text_input(key="nexa_token").input(TOKEN)
    at.button(key="nexa_sign_in_submit").click().run()
    assert not at.exception and not at.error
    assert at.title[0].value == "Plan memory before a run"
    assert at.session_state["nexa_signed_in"] == token_fingerprint(TOKEN)  # not the token itself
    at.button(key="nexa_sign_out").click().run()
    _shows_only_the_sign_in_form(at)


def _wrong_tokens(at: AppTest, times: int) -> None:
    for _ in range(times):
        at.text_input(key="nexa_token").input("wrong-token-wrong-token")
        at.button(key="nexa_sign_in_submit").click().run()
        assert "access token: wrong token" in at.error[0].value


def test_a_clients_clear_cache_message_does_not_reset_the_sign_in_throttle(home, fresh_throttle):
    """Any client can send Streamlit's clear_cache message, which empties st.cache_data and
    st.cache_resource (AppSession._handle_clear_cache_request): the throttle must not live there."""
    import streamlit as st

    at = AppTest.from_file(ROOT / "app.py", default_timeout=120).run()
    _wrong_tokens(at, 5)
    st.cache_data.clear()  # what the clear_cache message runs
    st.cache_resource.clear()
    fresh = AppTest.from_file(ROOT / "app.py", default_timeout=120).run()
    fresh.text_input(key="nexa_token").input(TOKEN)
    fresh.button(key="nexa_sign_in_submit").click().run()
    _shows_only_the_sign_in_form(fresh)
    assert "too many wrong tokens; try again in" in fresh.error[0].value
    assert "nexa_signed_in" not in fresh.session_state


def test_repeated_wrong_tokens_are_slowed_down_even_for_the_right_one_next(home, fresh_throttle):
    """After five wrong tokens from one address the next try is not even checked (the lockout
    doubles with each further failure); the throttle is server-wide, so a new session is no way round."""
    at = AppTest.from_file(ROOT / "app.py", default_timeout=120).run()
    _wrong_tokens(at, 5)
    fresh = AppTest.from_file(ROOT / "app.py", default_timeout=120).run()
    fresh.text_input(key="nexa_token").input(TOKEN)
    fresh.button(key="nexa_sign_in_submit").click().run()
    _shows_only_the_sign_in_form(fresh)
    assert re.search(r"too many wrong tokens; try again in (10|9|8) s", fresh.error[0].value)
    assert "nexa_signed_in" not in fresh.session_state


def test_the_gate_admits_a_session_to_upload_only_while_it_is_signed_in(home, fresh_throttle, monkeypatch):
    """NEXA's guard takes uploads only from the sessions in security.SESSIONS (nexa_ui/guard.py):
    the gate adds a session when it signs in and removes it when it signs out."""
    from nexa_core import security

    sessions = security.SessionGate()
    monkeypatch.setattr(security, "SESSIONS", sessions)
    at = AppTest.from_file(ROOT / "app.py", default_timeout=120).run()
    _shows_only_the_sign_in_form(at)
    assert len(sessions) == 0
    at.text_input(key="nexa_token").input(TOKEN)
    at.button(key="nexa_sign_in_submit").click().run()
    assert not at.exception and len(sessions) == 1
    at.button(key="nexa_sign_out").click().run()
    _shows_only_the_sign_in_form(at)
    assert len(sessions) == 0


@pytest.mark.parametrize("page", sorted(p.name for p in (ROOT / "pages").glob("*.py")))
def test_every_file_streamlit_can_route_in_pages_is_gated(home, page):
    """Streamlit serves every .py under pages/ as a page (``?page=<name>``, and the URL path in its
    pages-folder mode, which runs the file without app.py): each must show only the sign-in form.
    Helpers live in nexa_ui/, outside the routable folder."""
    at = AppTest.from_file(ROOT / "pages" / page, default_timeout=120).run()
    _shows_only_the_sign_in_form(at)
    assert not [b for b in at.button if b.key == "launch_go"]


def _refused_beyond_loopback() -> str:
    """app.py as after a plain `streamlit run app.py --server.address 0.0.0.0`: only the refusal
    shows; its message."""
    before = config.get_option("server.address")
    config.set_option("server.address", "0.0.0.0")
    try:
        at = AppTest.from_file(ROOT / "app.py", default_timeout=120).run()
    finally:
        config.set_option("server.address", before)
    assert not at.exception
    assert [t.value for t in at.title] == ["NEXA will not serve pages like this"]
    assert not at.text_input and not at.selectbox and not at.code
    return at.error[0].value


def test_listening_beyond_loopback_without_auth_shows_only_the_fix(home, monkeypatch):
    """As after a plain `streamlit run app.py --server.address 0.0.0.0` with no token set."""
    monkeypatch.delenv("NEXA_ACCESS_TOKEN")
    message = _refused_beyond_loopback()
    assert "NEXA_ACCESS_TOKEN" in message and "127.0.0.1" in message and "st.login" in message


def test_beyond_loopback_without_nexas_guard_even_a_token_shows_only_the_fix(home):
    """A plain `streamlit run app.py --server.address 0.0.0.0` with a token: no guard in front of the
    upload and metrics endpoints (nexa_ui/guard.py), so the app serves only the fix."""
    message = _refused_beyond_loopback()
    assert "without NEXA's guard" in message and "nexa serve" in message
