"""The Plan page, driven with Streamlit's AppTest (runs the real page script, no browser)."""

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from nexa_core.enums import Task
from nexa_core.models import DEFAULT_MODEL, size_model

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def page():
    at = AppTest.from_file(str(ROOT / "pages" / "plan.py"), default_timeout=120)
    return at.run()


def test_renders_with_defaults_and_recommends(page):
    assert not page.exception
    assert any("Recommended: ZeRO-" in s.value for s in page.success)
    assert any("fastest option that fits" in m.value for m in page.markdown)
    expected = size_model(DEFAULT_MODEL, Task.NER, 7, None).params
    assert page.metric[0].value == f"{expected:,}"
    charts = page.get("plotly_chart")
    assert len(charts) == 1
    assert "Host memory" in charts[0].proto.spec  # no GPU here: the chart shows host RAM
    assert "nexa plan sentence-transformers/all-MiniLM-L6-v2" in page.code[0].value


def test_lora_changes_trainable_count(page):
    page.checkbox(key="plan_lora").check().run()
    assert not page.exception
    assert int(page.metric[1].value.replace(",", "")) < int(page.metric[0].value.replace(",", ""))


def test_bad_model_is_shown_as_an_error_not_a_traceback(page):
    page.text_input(key="plan_model_text").input("--evil").run()
    assert not page.exception
    assert page.error and "model" in page.error[0].value and "option" in page.error[0].value


def test_unreachable_hub_id_says_offline(page):
    page.text_input(key="plan_model_text").input("someone/unknown-model").run()
    assert not page.exception
    assert "offline" in page.error[0].value and "catalogue" in page.error[0].value


def test_app_router_runs():
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    assert not at.exception
