"""How a run ended, from its exit status and the end of its log: the reason a user needs."""

from __future__ import annotations

import re
import signal
from pathlib import Path

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


def classify_exit(returncode: int, log: str, stop_requested: bool = False) -> tuple[RunState, str | None]:
    """(state, reason). ``returncode`` as subprocess gives it: negative for a signal."""
    if returncode == 0:
        return RunState.SUCCEEDED, None
    if stop_requested:
        return RunState.STOPPED, "stopped on request"
    oom = next((line.strip() for line in reversed(log.splitlines()) if _OOM.search(line)), None)
    if oom:
        return RunState.FAILED, f"out of memory: {oom[:400]}"
    # torchrun reports a rank killed by SIGKILL as "exitcode: -9" / "Signal 9 (SIGKILL)" and exits 1
    rank_killed = re.search(r"Signal 9 \(SIGKILL\)|exitcode\s*:\s*-9\b", log)
    if returncode in (-signal.SIGKILL, 128 + signal.SIGKILL) or rank_killed:
        return (
            RunState.FAILED,
            "killed (SIGKILL) without a stop request: probably out of memory (the kernel's OOM killer)",
        )
    if returncode == 143 or returncode == -signal.SIGTERM:
        return RunState.STOPPED, "terminated (SIGTERM) from outside NEXA"
    if returncode < 0:
        return RunState.FAILED, f"killed by signal {signal.Signals(-returncode).name}"
    error = last_error_line(log)
    return (
        RunState.FAILED,
        f"exit code {returncode}: {error}" if error else f"exit code {returncode} (see the log)",
    )
