"""``python -m nexa_core.supervise RUN_ID -- ARGV...``: the first process of every launched run.

It runs the launcher as its child in the same process group (so a stop reaches both), waits,
and records how the run ended when the trainer itself could not (a crash, a kill, an OOM kill).
It outlives SIGTERM so it can still record the outcome of a stop; SIGKILL ends it like the rest.
Once the outcome is recorded it starts the next queued run on the freed device (runner.dispatch),
so a queue moves on with no panel or terminal open.
"""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
from pathlib import Path

from nexa_core.exits import classify_exit, log_tail
from nexa_core.runstore import TERMINAL, RunState, RunStore


def main(argv: list[str]) -> int:
    run_id, sep, command = argv[0], argv[1], argv[2:]
    if sep != "--" or not command:
        print("usage: python -m nexa_core.supervise RUN_ID -- ARGV...", file=sys.stderr)
        return 2
    # A no-op handler, not SIG_IGN: an ignored signal stays ignored across exec, so the trainer
    # would shrug off a stop until it installs its own handler (seconds of imports and set-up);
    # a handler is reset to the default in the child. waitpid is retried after it (PEP 475).
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    child = subprocess.Popen(command, stdin=subprocess.DEVNULL)  # inherits stdout/stderr: the run log
    returncode = child.wait()
    remove_shm_buffers(command)
    store = RunStore()
    run = store.get_run(run_id) or {}
    state, reason = classify_exit(
        returncode, log_tail(run.get("run_dir")), stop_requested=bool(run.get("stopped_by"))
    )
    # The trainer records its own success; anything else is decided here from the exit and the log.
    if state is not RunState.SUCCEEDED or run.get("state") not in {s.value for s in TERMINAL}:
        store.set_state(run_id, state, reason=reason, exit_code=returncode)
    else:
        store.update_run(run_id, exit_code=returncode)
    _start_next(store)
    return 0


# DeepSpeed's all-reduce between CPU ranks on one machine (csrc/cpu/comm/shm.cpp, used when the
# DeepSpeed launcher sets LOCAL_SIZE) maps one file per rank in /dev/shm, named after the run's
# rendezvous, and never unlinks it: 66 MiB per rank measured here (DeepSpeed 0.19.8), left behind by
# every such run, finished or killed, until /dev/shm (RAM) fills.
SHM_DIR = Path("/dev/shm")


def shm_buffers(command: list[str], uid: int, shm_dir: Path = SHM_DIR) -> list[Path]:
    """The all-reduce buffers of the run that ``command`` (its launcher argv) started."""

    def flag(name: str) -> str | None:
        return command[command.index(name) + 1] if name in command[:-1] else None

    addr, port = flag("--master_addr"), flag("--master_port")
    if not (addr and port and port.isdigit()):
        return []
    return sorted(shm_dir.glob(f"deepspeed_allreduce_buffer_{uid}_{glob.escape(addr)}_{port}_*"))


def remove_shm_buffers(command: list[str]) -> None:
    """Once every rank has ended: no process maps them any more (the port is this run's own)."""
    for path in shm_buffers(command, os.getuid()):
        try:
            path.unlink(missing_ok=True)
        except OSError:  # never in the way of recording how the run ended
            continue


def _start_next(store: RunStore) -> None:
    """The next queued run(s), said in this run's log; a failure here only delays them until the
    next refresh (any page of the panel, `nexa runs`, a launch), so it never fails this run."""
    from nexa_core import runner

    try:
        started = runner.dispatch(store)
    except Exception as exc:  # noqa: BLE001 (reported; the queue is retried at the next refresh)
        print(f"nexa: the queue did not move on ({type(exc).__name__}: {exc}); the next refresh starts it",
              file=sys.stderr)  # fmt: skip
        return
    for next_id in started:
        print(f"nexa: started the next queued run, {next_id}", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
