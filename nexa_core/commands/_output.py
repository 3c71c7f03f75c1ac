"""Where a command's result goes: with --json, stdout holds the JSON document and nothing else."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

_RESULT_OUT: TextIO | None = None  # where --json documents go; None: sys.stdout


def print_result(text: str) -> None:
    print(text, file=_RESULT_OUT or sys.stdout, flush=True)


@contextmanager
def stdout_reserved_for_result() -> Iterator[None]:
    """With --json, stdout carries the JSON document only. DeepSpeed logs to stdout when imported
    ("Setting accelerator to CPU") and child processes inherit fd 1, so during the command both fd 1
    and sys.stdout point at stderr, and the result is written to the saved stdout."""
    global _RESULT_OUT
    if sys.stdout is not sys.__stdout__:  # an in-process caller (a test) already captures stdout
        yield
        return
    sys.stdout.flush()
    saved_fd = os.dup(1)
    os.dup2(2, 1)
    _RESULT_OUT, sys.stdout = os.fdopen(saved_fd, "w"), sys.stderr
    try:
        yield
    finally:
        _RESULT_OUT.flush()
        os.dup2(saved_fd, 1)
        _RESULT_OUT.close()
        _RESULT_OUT, sys.stdout = None, sys.__stdout__
