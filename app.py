"""NEXA panel entry point: router only (page config, navigation over pages/, run)."""

from pathlib import Path

import streamlit as st

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
st.navigation(pages).run()
