"""`nexa serve`: start the panel, refusing unsafe exposure (docs/SECURITY.md)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from nexa_core.errors import ConfigError


def add_serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", help="listen here (default: $NEXA_ADDRESS, else 127.0.0.1)")
    p.add_argument("--port", help="port (default: $NEXA_PORT, else 8501)")


def cmd_serve(args: argparse.Namespace) -> int:
    """Check how the panel would be exposed, refuse (exit 2) when unsafe, else exec Streamlit with
    app.py inside NEXA's guard (nexa_ui/server.py) and its request sizes capped at NEXA's limit."""

    from nexa_core import security
    from nexa_core.paths import panel_dir

    root = panel_dir()  # the checkout, or the installed package's copy of the panel

    flags = {security.ADDRESS_ENV: args.address, security.PORT_ENV: args.port}
    env = {**os.environ, **{k: v for k, v in flags.items() if v is not None}}
    settings = security.serve_settings(root, env)
    problems = security.exposure_problems(settings)
    if problems:
        raise ConfigError(["refusing to start the panel", *problems])
    argv = security.serve_argv(settings, root, sys.executable)
    if os.environ.get("NEXA_HOME"):  # the project folder becomes the working directory below
        os.environ["NEXA_HOME"] = str(Path(os.environ["NEXA_HOME"]).expanduser().resolve())
    os.chdir(root)  # Streamlit reads the panel's .streamlit/config.toml from the working directory
    sys.stdout.flush()
    os.execv(argv[0], argv)  # same pid: supervisors and tests see the server itself
    return 0  # not reached
