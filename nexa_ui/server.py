"""The panel as `nexa serve` starts it: app.py inside NEXA's guard (nexa_ui/guard.py), through
Streamlit's public st.App, which `streamlit run` detects in this file and serves with uvicorn.
Nothing else: app.py stays the router, and a plain `streamlit run app.py` still works on loopback
(beyond it the app refuses to serve pages without the guard; docs/SECURITY.md).

`streamlit run` puts this file's folder first on sys.path and imports it as ``server``; the
project root (the working directory `nexa serve` sets) is where ``nexa_ui`` and ``nexa_core`` come
from."""

import streamlit as st
from starlette.middleware import Middleware

from nexa_core.paths import panel_dir
from nexa_ui.guard import NexaGuard

app = st.App(panel_dir() / "app.py", middleware=[Middleware(NexaGuard)])
