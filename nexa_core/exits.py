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
            if _RANK_STARTED.search(line):
                continue  # a rank saying hello
            return line[:500]
    return None


# torchrun's summary when a worker fails: the first failure is the cause, the rest are its echo
# (the agent then stops every other rank, and those report connection or signal errors).
_ROOT_CAUSE = re.compile(r"Root Cause \(first observed failure\):(.*?)(?:={20,}|\Z)", re.S)
_FIELD = re.compile(r"^\s*(time|host|rank|exitcode)\s*:\s*(.+?)\s*$", re.M)
_FAILURE_ENTRY = re.compile(r"^\[\d+\]:$", re.M)  # each failure of the report: "[1]:" then its fields
# What each rank of `nexa train` says (commands/train.py): when it starts, and when it ends early.
_RANK_STARTED = re.compile(r"nexa train: rank (\d+) of \d+ started on (\S+)")
_RANK_ENDED = re.compile(r"nexa train: (failed|stopped) \(rank (\d+)\):")
# The DeepSpeed launcher's last words: the exit status of the first rank it saw fail (its command
# in that line is the last rank's, whichever failed: deepspeed/launcher/launch.py, sigkill_handler).
_DS_LAUNCHER_EXIT = re.compile(r"exits with return code = (-?\d+)")
# What a rank says when another rank vanished under it: the echo, never a cause of its own.
_ECHO = re.compile(
    r"Connection (?:reset|closed|refused)|Broken pipe|Read error|Socket Timeout|ProcessGroup\w* is (?:terminated|aborted)"
)


def failed_rank(log: str) -> dict[str, Any] | None:
    """{"rank", "host", "exitcode"} of the rank whose failure ended a multi-rank run, or None.

    torchrun (and Accelerate) print a root-cause report that names it. The DeepSpeed launcher names
    no rank: a rank that raised says so itself (its "failed (rank N)" line comes first, the others'
    connection errors after); a rank killed by a signal says nothing, so it is the one rank that
    started and never reported an end. "rank" is None when the log cannot tell which rank it was."""
    root = _torchrun_root_cause(log)
    if root:
        return root
    launcher_codes = _DS_LAUNCHER_EXIT.findall(log)
    started = dict(_RANK_STARTED.findall(log))
    ended = {rank for _, rank in _RANK_ENDED.findall(log)}
    silent = [rank for rank in started if rank not in ended]
    if launcher_codes and int(launcher_codes[-1]) < 0:
        rank = int(silent[0]) if len(silent) == 1 else None
        host = started[silent[0]] if rank is not None else None
        return {"rank": rank, "host": host, "exitcode": int(launcher_codes[-1])}
    failures = [line for line in log.splitlines() if _RANK_ENDED.search(line) and "failed (rank" in line]
    if launcher_codes and len(silent) == 1 and failures and all(_ECHO.search(line) for line in failures):
        # The launcher reports the first failed rank it polls, from a set: when the killed rank and
        # its echo have both ended by then, either may be named (seen: rank 1 SIGKILLed, "exits with
        # return code = 1" from rank 0's "Connection reset by peer"). The silent rank is the cause;
        # its own exit status is not in the log.
        return {"rank": int(silent[0]), "host": started[silent[0]], "exitcode": None, "silent": True}
    first = _RANK_ENDED.search(log)
    return {"rank": int(first.group(2)), "host": None, "exitcode": None} if first else None


def _torchrun_failure(block: str) -> dict[str, Any] | None:
    fields = dict(_FIELD.findall(block))
    rank = re.match(r"-?\d+", fields.get("rank", ""))
    code = re.match(r"-?\d+", fields.get("exitcode", ""))
    if not (rank and code):
        return None
    return {
        "rank": int(rank.group()),
        "host": fields.get("host"),
        "exitcode": int(code.group()),
        "time": fields.get("time"),
    }


def _torchrun_root_cause(log: str) -> dict[str, Any] | None:
    """torchrun's root cause, corrected for its clock: it stamps a rank that left no error file
    with the second its agent noticed, so a rank killed by SIGKILL and the rank that then lost its
    connection to it share one second, and the tie goes to the lower rank: the echo (seen: rank 1
    killed, "Root Cause: rank 0, exitcode 1, Connection closed by peer"). Within the root cause's
    second a SIGKILLed rank is the cause: the agent itself ends the other ranks with SIGTERM."""
    reports = _ROOT_CAUSE.findall(log)
    if not reports:
        return None
    root = _torchrun_failure(reports[-1])
    if root is None:
        return None
    cause_at = log.rfind("Root Cause (first observed failure):")
    report_start = log.rfind("Failures:", 0, cause_at)
    others = [] if report_start < 0 else _FAILURE_ENTRY.split(log[report_start:cause_at])
    tied = [f for f in map(_torchrun_failure, others) if f and f["time"] == root["time"]]
    killed = [f for f in tied if f["exitcode"] == -signal.SIGKILL]
    chosen = killed[0] if root["exitcode"] != -signal.SIGKILL and killed else root
    return {k: chosen[k] for k in ("rank", "host", "exitcode")}


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
    if failure and failure["rank"] is not None:
        where = f"rank {failure['rank']}" + (f" on {failure['host']}" if failure["host"] else "") + ": "
    oom = next((line.strip() for line in reversed(log.splitlines()) if _OOM.search(line)), None)
    if oom:
        return RunState.FAILED, f"{where}out of memory: {oom[:400]}"
    if code is not None:
        rank_killed = code == -signal.SIGKILL
    else:  # torchrun reports a rank killed by SIGKILL as "exitcode: -9" / "Signal 9 (SIGKILL)" and exits 1
        rank_killed = bool(re.search(r"Signal 9 \(SIGKILL\)|exitcode\s*:\s*-9\b", log))
    if failure and failure.get("silent"):
        return (
            RunState.FAILED,
            f"{where}killed by a signal without a stop request, and the other ranks lost their connection"
            " to it (the launcher did not record its exit status): SIGKILL, probably out of memory (the"
            " kernel's OOM killer), or a crash in native code",
        )
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
    error = (rank_error_line(log, failure["rank"]) if where else None) or last_error_line(log)
    code_text = f"exit code {code if code is not None else returncode}"
    return RunState.FAILED, f"{where}{code_text}: {error}" if error else f"{where}{code_text} (see the log)"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"#{number}"
