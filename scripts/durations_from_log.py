"""Per-module test time from a pytest log printed with `--durations=0`, as tests/durations.json.

    NEXA_TEST_DURATIONS=0 bash scripts/test.sh > log; python scripts/durations_from_log.py log > tests/durations.json

tests/conftest.py hands the longest modules to the pytest-xdist workers first, so the suite's tail is
short tests on both workers, not one long test on one while the other idles. A stale file only
orders the modules less well; a module it does not list goes first.
"""

from __future__ import annotations

import json
import re
import sys
from collections import defaultdict
from pathlib import Path

# pytest's --durations line: "12.34s call     tests/test_x.py::test_y[param]"
LINE = re.compile(r"^(\d+(?:\.\d+)?)s (?:setup|call|teardown)\s+(\S+?)::")


def module_seconds(log: str) -> dict[str, float]:
    seconds: dict[str, float] = defaultdict(float)
    for line in log.splitlines():
        match = LINE.match(line.strip())
        if match:
            seconds[match.group(2)] += float(match.group(1))
    return {module: round(s, 1) for module, s in sorted(seconds.items(), key=lambda kv: -kv[1])}


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not Path(argv[0]).is_file():
        print(
            "usage: python scripts/durations_from_log.py PYTEST_LOG (printed with --durations=0)",
            file=sys.stderr,
        )
        return 2
    seconds = module_seconds(Path(argv[0]).read_text(errors="replace"))
    if not seconds:
        print(f"{argv[0]}: no --durations lines found", file=sys.stderr)
        return 1
    print(json.dumps(seconds, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
