"""NEXA core library: planning, configs, launching, training, run store, telemetry.

Never imports streamlit: the app in ``app.py``/``pages/`` is a thin layer over this package.
"""

__version__ = "0.1.0"
