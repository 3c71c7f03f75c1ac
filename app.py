"""NEXA panel entry point: router only (page config, navigation over pages/, run)."""

from pathlib import Path

# pandas is imported here, first in every script run, so that it is whole before any page draws a chart:
# plotly looks pandas up in sys.modules without importing it (get_module("pandas", should_load=False)),
# so while another session's script thread is still importing pandas, a chart got the half-initialised
# module ("partially initialized module 'pandas' has no attribute 'Series'", the browser test under load).
import pandas  # noqa: F401
import streamlit as st

from nexa_ui.auth import access_pages

st.set_page_config(page_title="NEXA", page_icon="🧮", layout="wide")

_HERE = Path(__file__).parent
# (file, title, icon); a page appears once its file exists, so adding a screen is one line here.
PAGES = [
    ("pages/plan.py", "Plan", "🧮"),
    ("pages/launch.py", "Launch", "🚀"),
    ("pages/monitor.py", "Monitor", "📈"),
    ("pages/runs.py", "Runs", "🗂️"),
    ("pages/compare.py", "Compare", "⚖️"),
]
pages = [
    st.Page(str(_HERE / f), title=t, icon=i, default=(n == 0))
    for n, (f, t, i) in enumerate(PAGES)
    if (_HERE / f).exists()
]
# The gate first: beyond loopback without sign-in, or before this session signed in, the only page
# is the refusal or the sign-in form (docs/SECURITY.md).
st.navigation(access_pages(pages)).run()
