"""Where NEXA keeps runs: ``$NEXA_HOME`` (default ``~/.nexa``) holds runs.sqlite and runs/<run_id>/.
Also where NEXA's own files are: the panel (app.py, pages/, .streamlit/) and deployment/, in a
checkout or in an installed package."""

from __future__ import annotations

import os
import re
import secrets
import time
from pathlib import Path

from nexa_core.errors import ConfigError

_PACKAGE_ROOT = Path(__file__).resolve().parent.parent


def panel_dir() -> Path:
    """The folder holding app.py, pages/, .streamlit/config.toml and deployment/: the checkout's
    root, or, after `pip install .`, the installed ``nexa_panel`` package (pyproject.toml maps those
    files into it)."""
    if (_PACKAGE_ROOT / "app.py").is_file() and (_PACKAGE_ROOT / "pages").is_dir():
        return _PACKAGE_ROOT
    import importlib.util

    spec = importlib.util.find_spec("nexa_panel")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(["NEXA's panel files (app.py, pages/) are missing: reinstall NEXA (pip install .)"])
    return Path(next(iter(spec.submodule_search_locations)))


def ui_server() -> Path:
    """nexa_ui/server.py, the panel inside NEXA's guard. nexa_ui sits beside nexa_core in a checkout
    and in site-packages alike; it is located here, never imported (nexa_core never imports the UI
    layer, nor streamlit through it)."""
    return _PACKAGE_ROOT / "nexa_ui" / "server.py"


def deployment_file(name: str) -> Path:
    """A file of deployment/ (DeepSpeed and Accelerate templates, hardware presets, instance prices)."""
    return panel_dir() / "deployment" / name


_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def _folder(path: Path, what: str, fix: str = "move the file away") -> Path:
    """``path``, created when missing; a ConfigError naming ``what`` and the fix when it is a file,
    or cannot be created (no permission, a read-only disk). An existing folder is fine even when it
    is read-only: reading needs no more."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ConfigError([f"{what} ({path}): is a file, not a folder; {fix}"]) from None
    except NotADirectoryError:
        raise ConfigError([f"{what} ({path}): a folder above it is a file; {fix}"]) from None
    except OSError as exc:
        if path.is_dir():
            return path
        raise ConfigError(
            [f"{what} ({path}): cannot create it ({exc.strerror}); its folder must be writable"]
        ) from None
    return path


def nexa_home() -> Path:
    """``$NEXA_HOME`` when set, else ``~/.nexa``; created on demand."""
    home = Path(os.environ.get("NEXA_HOME") or "~/.nexa").expanduser()
    return _folder(home, "NEXA_HOME", "set NEXA_HOME to a folder, or move the file away")


def home_folder(name: str, create: bool = True) -> Path:
    """``NEXA_HOME/<name>`` (runs, presets, uploads, ...): created on demand, or with ``create=False``
    left alone when missing (a read-only home can still be read). ConfigError when it is a file."""
    path = nexa_home() / name
    if create:
        return _folder(path, f"{name} folder")
    if path.exists() and not path.is_dir():
        raise ConfigError([f"{name} folder ({path}): is a file, not a folder; move the file away"])
    return path


def store_path() -> Path:
    """The SQLite run store shared by the app, the CLI and trainers."""
    return nexa_home() / "runs.sqlite"


def runs_root() -> Path:
    """The folder holding one sub-folder per run; created on demand."""
    return home_folder("runs")


def is_run_id(text: str) -> bool:
    """Letters, digits, '.', '_', '-', up to 128, not starting with '.' or '-': safe as a file name."""
    return bool(_RUN_ID.match(text))


def run_dir(run_id: str) -> Path:
    """The run's folder (not created); refuses ids, and symlinks, that could lead outside the runs root."""
    if not isinstance(run_id, str) or not _RUN_ID.match(run_id):
        raise ConfigError([f"run_id: {run_id!r} is not a run id (letters, digits, '.', '_', '-'; up to 128)"])
    root = runs_root().resolve()
    path = root / run_id
    if root not in Path(os.path.realpath(path)).parents:  # e.g. a symlink planted in the runs root
        raise ConfigError([f"run_id: {run_id!r} resolves outside {root}"])
    return path


def inside_home(path: str | Path, field: str) -> Path:
    """``path`` resolved (realpath: symlinks and '..' followed) when it lies inside NEXA_HOME, for
    paths a web user supplies (an export folder); ConfigError naming ``field`` otherwise. Relative
    paths count from NEXA_HOME, so a bare name lands inside it."""
    text = str(path) if isinstance(path, Path) else path
    problems = text_problems(field, text, 4096)
    if problems:
        raise ConfigError(problems)
    home = Path(os.path.realpath(nexa_home()))
    resolved = Path(os.path.realpath(home / Path(text).expanduser()))
    if resolved != home and home not in resolved.parents:
        raise ConfigError([f"{field}: {str(path)!r} resolves outside {home}; choose a folder inside it"])
    return resolved


def text_problems(field: str, value: object, max_chars: int) -> list[str]:
    """Problems with free text headed for a path or a command line: not text, too long, control
    characters (NUL, newline, escape...), or a leading '-' that a program would read as an option."""
    if not isinstance(value, str):
        return [f"{field}: must be text, got {type(value).__name__}"]
    if not value or len(value) > max_chars:
        return [f"{field}: must be 1 to {max_chars} characters, got {len(value)}"]
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        return [f"{field}: {value!r} contains control characters (newline, tab, NUL...)"]
    if value.startswith("-"):
        return [f"{field}: {value!r} starts with '-' (it would read as an option)"]
    return []


def output_problems(field: str, path: Path, folder: bool = False) -> list[str]:
    """Why a command cannot write its output (a file, or a folder of files when ``folder``) at
    ``path``; [] when it can. Missing parent folders are created here, so that a command that
    measures for minutes before it writes finds out first (seen: `nexa bench --report out/r.html`
    measured every technique, then failed on the missing out/ with a traceback)."""
    target = path if folder else path.parent
    try:
        if path.exists() and path.is_dir() != folder:
            kind = "a folder" if path.is_dir() else "a file"
            return [f"{field}: {path} is {kind}; give {'a folder' if folder else 'a file name'}"]
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return [f"{field}: cannot create {target} ({exc.strerror})"]
    if not os.access(target, os.W_OK):
        return [f"{field}: {target} is not writable"]
    return []


def new_run_id(name: str | None = None) -> str:
    """``<UTC yyyymmdd-HHMMSS>-<slug of name or 'run'>-<6 hex>``, always a valid run id."""
    slug = re.sub(r"[^a-z0-9-]+", "-", (name or "run").lower()).strip("-")[:40].strip("-") or "run"
    return f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{slug}-{secrets.token_hex(3)}"
