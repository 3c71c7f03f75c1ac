"""Saved launch configurations: named presets under ``$NEXA_HOME/presets/`` and the configuration of
a past run, so a user can launch the same thing again (LLaMA-Factory's save/load args, H2O's clone
experiment). A preset is one JSON file ``{"train": TrainConfig, "launch": RunSpec launch fields}``,
the same two halves a run folder keeps as run_config.json and spec.json."""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from nexa_core import paths
from nexa_core.errors import ConfigError
from nexa_core.launch import RunSpec
from nexa_core.train_config import RUN_CONFIG, SPEC_FILE, TrainConfig

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,63}$")


def presets_dir(create: bool = True) -> Path:
    return paths.home_folder("presets", create=create)


def _path(name: str, create: bool = False) -> Path:
    if not isinstance(name, str) or not _NAME.match(name) or name.rstrip() != name:
        raise ConfigError(
            [
                f"preset name: {name!r} is not allowed; use 1 to 64 letters, digits, spaces, '.', '_' or '-', "
                "starting with a letter or digit"
            ]  # fmt: skip
        )
    return presets_dir(create) / f"{name}.json"


def to_dict(spec: RunSpec) -> dict[str, Any]:
    """The preset form of ``spec``: its training config and its launch fields. A master port is kept
    (several nodes must agree on it); none set means a free port at each launch."""
    return {"train": spec.train.to_dict(), "launch": spec.to_dict()}


def from_dict(data: Any, where: str) -> RunSpec:
    """A validated RunSpec from the preset form; ConfigError naming ``where`` and every problem."""
    if not isinstance(data, dict) or not isinstance(data.get("train"), dict):
        raise ConfigError([f"{where}: expected an object with 'train' (and 'launch') fields"])
    launch = data.get("launch") or {}
    if not isinstance(launch, dict):
        raise ConfigError([f"{where}: 'launch' must be an object"])
    try:
        return RunSpec.from_dict(TrainConfig.from_dict(data["train"]), launch)
    except ConfigError as exc:
        raise ConfigError([f"{where}: {p}" for p in exc.problems]) from None
    except TypeError as exc:  # a launch field of the wrong shape (e.g. hosts not a list of objects)
        raise ConfigError([f"{where}: {exc}"]) from None


def save(name: str, spec: RunSpec) -> Path:
    """Write (or replace) preset ``name`` atomically: a crash leaves the old file or the new one."""
    path = _path(name, create=True)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".preset-", suffix=".json")
    except OSError as exc:
        raise ConfigError(
            [f"preset {name!r}: cannot write in {path.parent} ({exc.strerror}); saving needs it writable"]
        ) from None
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(to_dict(spec), f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def names() -> list[str]:
    """Saved presets, sorted by name."""
    return sorted(p.stem for p in presets_dir(create=False).glob("*.json") if _NAME.match(p.stem))


def load(name: str) -> RunSpec:
    path = _path(name)
    if not path.is_file():
        saved = ", ".join(names()) or "none yet"
        raise ConfigError([f"preset: no preset {name!r}; saved presets: {saved}"])
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError([f"preset {name!r}: cannot read {path}: {exc}"]) from None
    return from_dict(data, f"preset {name!r}")


def delete(name: str) -> None:
    path = _path(name)
    if not path.is_file():
        raise ConfigError([f"preset: no preset {name!r}"])
    path.unlink()


def of_run(run_dir: Path, run_id: str, resume: bool = False) -> RunSpec:
    """The configuration a run was launched with, read from its folder (run_config.json and
    spec.json): for a resume as the same run, or, with ``resume=False``, to launch it again."""
    try:
        train = TrainConfig.load(run_dir / RUN_CONFIG)
        launch = json.loads((run_dir / SPEC_FILE).read_text())
    except ConfigError as exc:
        raise ConfigError([f"run {run_id!r}: {p}" for p in exc.problems]) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(
            [f"run {run_id!r}: its launch settings ({SPEC_FILE}) cannot be read: {exc}"]
        ) from None
    if not isinstance(launch, dict):
        raise ConfigError([f"run {run_id!r}: {SPEC_FILE} must hold a JSON object"])
    try:
        return RunSpec.from_dict(train, launch, resume=resume)
    except ConfigError as exc:
        raise ConfigError([f"run {run_id!r}: {p}" for p in exc.problems]) from None
