"""The `nexa` process (the console script and ``python -m nexa_core``): the command line's ``main``,
then an exit that skips the interpreter's teardown.

Once ``main`` has returned and the atexit handlers have run (trackers closed, logging flushed),
CPython still finalises every loaded module. With torch, transformers, datasets and DeepSpeed
loaded that took about 1.1 s per process on the 2-core reference machine (measured:
``benchmarks/process_exit.py``, 1.09 s median from the result line to the process's end, 0.05 s
without the teardown), paid by every run, every rank and every CLI call.
Nothing NEXA writes waits for it: the run store commits each write, checkpoints are fsynced, the
--json result is flushed here. So the last atexit handler flushes stdout and stderr and ends the
process with ``os._exit``. A process that ends any other way (an uncaught exception, argparse's
own exit) finalises as usual."""

from __future__ import annotations

import atexit
import os
import sys
from typing import NoReturn

_exit_code: int | None = None  # set by finish(); None: finalise the usual way


def _end_without_teardown() -> None:
    if _exit_code is None:
        return
    import logging

    logging.shutdown()  # idempotent; also covers a logging imported before this handler was registered
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken pipe: nothing more can reach it anyway
            pass
    os._exit(_exit_code)


def install() -> None:
    """Register the ending. atexit runs its handlers last-in, first-out: registered before anything
    else is imported, this one runs after every library's own."""
    atexit.register(_end_without_teardown)


def finish(code: int) -> NoReturn:
    """Leave with ``code``: the usual SystemExit (threads joined, atexit handlers run), then the end."""
    global _exit_code
    _exit_code = code
    sys.exit(code)


def main() -> NoReturn:
    """The console script `nexa`."""
    install()
    from nexa_core.cli import main as cli_main

    finish(cli_main())
