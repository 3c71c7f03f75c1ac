"""The `nexa` process ends without the interpreter's teardown, after every atexit handler ran."""

import json
import subprocess
import sys

SCRIPT = """
import atexit, logging, sys
from nexa_core import entry
entry.install()
handler = logging.FileHandler(sys.argv[1], delay=False)
logging.getLogger("lib").addHandler(handler)
logging.getLogger("lib").warning("buffered line")  # flushed by logging's own atexit handler
atexit.register(lambda: open(sys.argv[2], "w").write("ran"))  # a library's atexit handler


class Teardown:
    def __del__(self):
        print("finalised", flush=True)  # only printed when the interpreter tears modules down


keep = Teardown()
print("result", end="")  # no newline: still in the buffer when the process ends
entry.finish(int(sys.argv[3]))
"""


def _run(tmp_path, code: str, *extra: str) -> subprocess.CompletedProcess:
    log, marker = tmp_path / "lib.log", tmp_path / "atexit"
    return subprocess.run(
        [sys.executable, "-c", code, str(log), str(marker), *extra],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_finish_keeps_the_code_the_output_and_every_atexit_handler_and_skips_the_teardown(tmp_path):
    out = _run(tmp_path, SCRIPT, "3")
    assert out.returncode == 3, out.stderr
    assert out.stdout == "result"  # flushed; no "finalised": module teardown was skipped
    assert (tmp_path / "atexit").read_text() == "ran"
    assert (tmp_path / "lib.log").read_text() == "buffered line\n"


def test_a_process_that_ends_another_way_finalises_as_usual(tmp_path):
    """An uncaught exception (no finish()): the usual exit status and teardown."""
    out = _run(tmp_path, SCRIPT.replace("entry.finish(int(sys.argv[3]))", "raise RuntimeError('boom')"), "0")
    assert out.returncode == 1 and "RuntimeError: boom" in out.stderr
    assert out.stdout == "resultfinalised\n" and (tmp_path / "atexit").read_text() == "ran"


def test_python_m_nexa_core_returns_the_commands_exit_code(tmp_path):
    bad = subprocess.run(
        [sys.executable, "-m", "nexa_core", "plan", "--gpus", "x"], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "--gpus" in bad.stderr
    ok = subprocess.run(
        [sys.executable, "-m", "nexa_core", "plan", "--params", "1e9", "--json"],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)  # the whole JSON document reached the pipe before the process ended
