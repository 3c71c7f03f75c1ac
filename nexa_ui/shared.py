"""Helpers for pages only: Streamlit caching around nexa_core and common rendering. No business
logic lives here; nexa_core never imports streamlit, so caching is done at this layer.

It lives in nexa_ui/, not pages/: Streamlit serves every file under pages/ as a page (by URL,
without app.py or the sign-in gate), so only real screens sit there (docs/SECURITY.md)."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import psutil
import streamlit as st

from nexa_core import datasets, hardware, monitor, paths, planner, runner, runs
from nexa_core.errors import ConfigError
from nexa_core.export import export_checkpoint
from nexa_core.launch import RunSpec
from nexa_core.memory import GIB
from nexa_core.runstore import RunStore


@st.cache_resource(ttl=30, show_spinner=False)
def detected_hardware() -> hardware.Hardware:
    """NVML and psutil, read at most every 30 s (NVML init is not free; free memory changes)."""
    return hardware.detect()


@st.cache_resource(max_entries=64, show_spinner="Building the model on the meta device…")
def cached_plan(**fields: Any) -> planner.Plan:
    """make_plan keyed on PlanConfig's fields (the config is a mutable dataclass, so it is built here,
    never hashed). cache_resource, not cache_data: the frozen Plan is shared as is and never
    pickled (no cache of the app's round-trips through pickle). ConfigError is not cached."""
    return planner.make_plan(planner.PlanConfig(**fields), detected_hardware())


def refresh_hardware() -> None:
    """Forget the detected hardware and the plans made with it (free GPU/host memory may have changed)."""
    detected_hardware.clear()
    cached_plan.clear()


def show_problems(problems: list[str]) -> None:
    """Every validation problem in one error block, so the user can fix them all at once."""
    st.error("Please fix:\n\n" + "\n".join(f"- {p}" for p in problems))


def open_store() -> RunStore:
    """runner.open_store (the run store, refreshed, NEXA_HOME's layout checked) for a page: a damaged
    or unusable NEXA_HOME is shown with its fix and the page stops there, never a traceback."""
    try:
        return runner.open_store()
    except ConfigError as exc:
        show_problems(exc.problems)
        st.stop()
        raise  # not reached: st.stop() ends the script run


# ------------------------------------------------------------------ live hardware (every page)
@st.cache_resource(show_spinner=False)
def _nvml() -> Any | None:
    """pynvml initialised once per app process (NVML is thread-safe; init is not free). None
    without a driver: a CPU-only machine."""
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml
    except Exception:  # no library, no driver, no device
        return None


def _gpu_readings() -> list[tuple[int, str, int, int, int | None]]:
    """(physical index, name, used bytes, total bytes, utilisation %) per GPU, as nvidia-smi numbers them."""
    nvml = _nvml()
    if nvml is None:
        return []
    out = []
    try:
        for i in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(i)
            name = nvml.nvmlDeviceGetName(handle)
            mem = nvml.nvmlDeviceGetMemoryInfo(handle)
            try:
                util = int(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
            except nvml.NVMLError:  # e.g. a MIG instance reports no utilisation
                util = None
            out.append(
                (i, name.decode() if isinstance(name, bytes) else name, int(mem.used), int(mem.total), util)
            )
    except nvml.NVMLError:
        return out
    return out


def hardware_sidebar() -> None:
    """Live GPU memory and utilisation (NVML), CPU and RAM (psutil) in the sidebar, refreshed every
    few seconds on its own (a fragment), so every page shows what the machine is doing now."""
    with st.sidebar:
        _hardware_panel()


@st.fragment(run_every=3.0)
def _hardware_panel() -> None:
    st.caption("**This machine, live**")
    gpus = _gpu_readings()
    if not gpus:
        st.caption("No GPU detected (CPU-only machine)")
    for index, name, used, total, util in gpus:
        busy = "" if util is None else f" · {util}% busy"
        st.progress(min(used / total, 1.0) if total else 0.0,
                    text=f"GPU {index} {name}: {used / GIB:.1f} / {total / GIB:.1f} GiB{busy}")  # fmt: skip
    cpu, ram = psutil.cpu_percent(interval=None), psutil.virtual_memory()
    st.progress(min(cpu / 100, 1.0), text=f"CPU {cpu:.0f}% of {psutil.cpu_count()} cores")
    st.progress(min(ram.percent / 100, 1.0),
                text=f"RAM {(ram.total - ram.available) / GIB:.1f} / {ram.total / GIB:.1f} GiB")  # fmt: skip


# ------------------------------------------------------------------ launch helpers
def _spec_key(spec: RunSpec) -> str:
    return json.dumps([spec.train.to_dict(), str(spec.mode), spec.nproc, spec.gpus], default=str)


@st.cache_data(max_entries=64, show_spinner="Estimating memory…", hash_funcs={RunSpec: _spec_key})
def cached_estimate(
    spec: RunSpec, gpus_per_node: int | None = None, nodes: int | None = None
) -> dict[str, Any] | None:
    """runs.estimate_for, once per distinct spec (the first one builds the model on the meta device);
    ``gpus_per_node`` / ``nodes`` for a Slurm job's nodes."""
    return runs.estimate_for(spec, gpus_per_node, nodes)


def save_upload(name: str, data: bytes) -> Path:
    """Store an uploaded dataset as NEXA_HOME/uploads/<sha256 prefix>-<safe name>. The browser's
    file name is reduced to letters, digits, '.', '_' and '-' (no path, no leading dot); the content
    hash keeps two different files of the same name apart, so a run's dataset never changes under it."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).name).lstrip("._-")[-100:] or "upload"
    folder = paths.home_folder("uploads")
    path = folder / f"{hashlib.sha256(data).hexdigest()[:12]}-{safe}"
    if not path.exists():
        partial = path.with_name(path.name + ".part")
        partial.write_bytes(data)
        partial.replace(path)  # atomic: a run never reads a half-written file
    return path


@st.cache_data(max_entries=32, show_spinner="Checking the file…")
def check_dataset(path: str, task: str, shown_as: str | None = None) -> tuple[int, list[str]]:
    """(records, problems) from datasets.load_records, the problems naming the file ``shown_as`` (the
    user's own file name); keyed by path, which names the content."""
    try:
        return len(datasets.load_records(path, task, shown_as=shown_as)), []
    except ConfigError as exc:
        return 0, exc.problems


# ------------------------------------------------------------------ monitor / runs helpers
@st.cache_resource(max_entries=8, show_spinner=False)
def series_reader(store_path: str, run_id: str) -> monitor.SeriesReader:
    """One incremental reader per run, shared by every session watching it."""
    return monitor.SeriesReader(RunStore(store_path), run_id)


@st.cache_data(max_entries=1000, show_spinner=False)
def _ended_summary(store_path: str, run_id: str, outcome: tuple) -> dict[str, Any]:
    store = RunStore(store_path)
    return runs.summary(store, store.get_run(run_id) or {"id": run_id, "state": outcome[0]})


def run_summary(store: RunStore, run: dict[str, Any]) -> dict[str, Any]:
    """runs.summary; an ended run's summary is kept (it reads every metric and memory row)."""
    if not run.get("ended_at") or run["state"] in ("queued", "running"):
        return runs.summary(store, run)
    outcome = (
        run["state"],
        run.get("ended_at"),
        run.get("exit_code"),
        run.get("reason"),
        run.get("last_step"),
        tuple(run.get("tags") or ()),  # tags and the note change after the run ended
        run.get("note"),
    )
    return _ended_summary(str(store.path), run["id"], outcome)


def export_form(run: dict[str, Any], key: str) -> None:
    """Export a run's latest checkpoint to a Hugging Face folder (default NEXA_HOME/exports/<run id>)."""
    with st.form(f"{key}_export_{run['id']}"):
        out = st.text_input("Export to folder", value=str(paths.nexa_home() / "exports" / run["id"]))
        lora = bool((run.get("spec") or {}).get("lora"))
        merge = st.checkbox("Merge the LoRA adapter into the weights", value=lora, disabled=not lora)
        if st.form_submit_button("Export"):
            try:
                with st.spinner("Consolidating the checkpoint and writing the model folder…"):
                    # A folder typed in the browser stays inside NEXA_HOME (docs/SECURITY.md).
                    folder = export_checkpoint(run["id"], paths.inside_home(out, "out"), merge_lora=merge)
            except ConfigError as exc:
                show_problems(exc.problems)
            except OSError as exc:  # writing the model folder failed (a full disk, permissions)
                show_problems([f"out: writing the export failed ({exc})"])
            else:
                st.success(f"Exported to {folder}")
