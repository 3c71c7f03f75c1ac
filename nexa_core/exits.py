"""How a run ended, from its exit status and the end of its log: the reason a user needs."""

from __future__ import annotations

import re
import signal
from pathlib import Path
from typing import Any

from nexa_core.runstore import RunState

LOG_FILE = "run.log"
_OOM = re.compile(
    r"(CUDA out of memory|OutOfMemoryError|out of memory|DefaultCPUAllocator: can't allocate memory|MemoryError)",
    re.IGNORECASE,
)
_EXCEPTION = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?[A-Z]\w*(?:Error|Exception|Interrupt|Exit)\b.*$")


def log_tail(run_dir: str | Path | None, max_bytes: int = 64 * 1024) -> str:
    """The last ``max_bytes`` of the run's log (bounded: logs can be large)."""
    if not run_dir:
        return ""
    path = Path(run_dir) / LOG_FILE
    try:
        with path.open("rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            return f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def last_error_line(text: str) -> str | None:
    """The last line that looks like a Python exception summary (``ValueError: ...``), or a
    `nexa train: ...` message, skipping launcher noise."""
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith(("nexa train:", "nexa launch:")) or _EXCEPTION.match(line):
            if "ChildFailedError" in line or line.startswith("subprocess.CalledProcessError"):
                continue  # the launcher's wrapper, not the cause
            return line[:500]
    return None


# torchrun's summary when a worker fails: the first failure is the cause, the rest are its echo
# (the agent then stops every other rank, and those report connection or signal errors).
_ROOT_CAUSE = re.compile(r"Root Cause \(first observed failure\):(.*?)(?:={20,}|\Z)", re.S)
_FIELD = re.compile(r"^\s*(host|rank|exitcode)\s*:\s*(.+?)\s*$", re.M)
_RANK_FAILED = re.compile(r"nexa train: failed \(rank (\d+)\):")


def failed_rank(log: str) -> dict[str, Any] | None:
    """{"rank", "host", "exitcode"} of the rank whose failure ended a multi-rank run: torchrun's
    (and Accelerate's) root-cause report when present, else the first rank that reported an error
    (the DeepSpeed launcher names no rank; host and exitcode are then None). None if neither."""
    blocks = _ROOT_CAUSE.findall(log)
    if blocks:
        fields = dict(_FIELD.findall(blocks[-1]))
        rank, code = (
            re.match(r"-?\d+", fields.get("rank", "")),
            re.match(r"-?\d+", fields.get("exitcode", "")),
        )
        if rank and code:
            return {"rank": int(rank.group()), "host": fields.get("host"), "exitcode": int(code.group())}
    first = _RANK_FAILED.search(log)
    return {"rank": int(first.group(1)), "host": None, "exitcode": None} if first else None


def rank_error_line(log: str, rank: int) -> str | None:
    """The failing rank's own one-line summary (``nexa train: failed (rank N): ...``)."""
    marker = f"nexa train: failed (rank {rank}):"
    for line in reversed(log.splitlines()):
        if marker in line:
            return line[line.index(marker) :].strip()[:500]
    return None


def classify_exit(returncode: int, log: str, stop_requested: bool = False) -> tuple[RunState, str | None]:
    """(state, reason). ``returncode`` as subprocess gives it: negative for a signal. With several
    ranks the reason names the rank that failed first and gives that rank's error, not the echo
    (connection errors, signals) that its failure caused in the other ranks."""
    if returncode == 0:
        return RunState.SUCCEEDED, None
    if stop_requested:
        return RunState.STOPPED, "stopped on request"
    failure = failed_rank(log)
    code = failure["exitcode"] if failure else None
    where = ""
    if failure:
        where = f"rank {failure['rank']}" + (f" on {failure['host']}" if failure["host"] else "") + ": "
    oom = next((line.strip() for line in reversed(log.splitlines()) if _OOM.search(line)), None)
    if oom:
        return RunState.FAILED, f"{where}out of memory: {oom[:400]}"
    if code is not None:
        rank_killed = code == -signal.SIGKILL
    else:  # torchrun reports a rank killed by SIGKILL as "exitcode: -9" / "Signal 9 (SIGKILL)" and exits 1
        rank_killed = bool(re.search(r"Signal 9 \(SIGKILL\)|exitcode\s*:\s*-9\b", log))
    if returncode in (-signal.SIGKILL, 128 + signal.SIGKILL) or rank_killed:
        return (
            RunState.FAILED,
            f"{where}killed (SIGKILL) without a stop request: probably out of memory (the kernel's OOM killer)",
        )
    if returncode == 143 or returncode == -signal.SIGTERM:
        return RunState.STOPPED, "terminated (SIGTERM) from outside NEXA"
    if code is not None and code < 0:
        return RunState.FAILED, f"{where}killed by signal {_signal_name(-code)}"
    if returncode < 0:
        return RunState.FAILED, f"killed by signal {_signal_name(-returncode)}"
    error = (rank_error_line(log, failure["rank"]) if failure else None) or last_error_line(log)
    code_text = f"exit code {code if code is not None else returncode}"
    return RunState.FAILED, f"{where}{code_text}: {error}" if error else f"{where}{code_text} (see the log)"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"#{number}"
