"""How long a `nexa train` process takes to end once its result is out, with and without the
interpreter's teardown (nexa_core/entry.py), side by side in one run: the same short MiniLM run,
each its own process, alternating the two ways. The time from the --json line reaching the pipe
to the process's end is what the teardown costs; each run's whole wall time is printed too.

    python benchmarks/process_exit.py [--repeats 3] [--deepspeed off|on]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The usual ending: main() and a plain SystemExit, so CPython finalises every module.
WITH_TEARDOWN = "import sys; from nexa_core.cli import main; sys.exit(main())"


def one(with_teardown: bool, deepspeed: str, home: str) -> tuple[float, float]:
    start = [sys.executable, "-c", WITH_TEARDOWN] if with_teardown else [sys.executable, "-m", "nexa_core"]
    argv = [*start, "train", "--task", "ner", "--max-steps", "3", "--batch-size", "4", "--seq-len", "32",
            "--no-eval", "--deepspeed", deepspeed, "--json"]  # fmt: skip
    env = dict(os.environ, NEXA_HOME=home, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    proc.stdout.readline()  # with --json stdout holds the result line only, printed with flush
    result_at = time.monotonic()
    if proc.wait() != 0:
        raise SystemExit(f"the run failed: {' '.join(argv)}")
    end = time.monotonic()
    return end - result_at, end - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--deepspeed", choices=["off", "on"], default="off")
    args = parser.parse_args()
    tails: dict[bool, list[float]] = {True: [], False: []}
    walls: dict[bool, list[float]] = {True: [], False: []}
    with tempfile.TemporaryDirectory() as home:
        for _ in range(args.repeats):
            for with_teardown in (True, False):
                tail, wall = one(with_teardown, args.deepspeed, home)
                tails[with_teardown].append(tail)
                walls[with_teardown].append(wall)
    print(f"MiniLM NER, 3 steps, batch 4, sequence 32, DeepSpeed {args.deepspeed}, {args.repeats} runs each")
    for with_teardown, label in ((True, "with teardown (sys.exit)"), (False, "nexa_core.entry (os._exit)")):
        tail, wall = statistics.median(tails[with_teardown]), statistics.median(walls[with_teardown])
        print(f"  {label:28s} result to end {tail:.2f} s, whole run {wall:.2f} s (medians)")
    saved = statistics.median(walls[True]) - statistics.median(walls[False])
    print(f"  saved per process: {saved:.2f} s of median wall time")


if __name__ == "__main__":
    main()
