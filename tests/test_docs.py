"""The docs say one thing about each guarantee (docs/RELIABILITY.md, docs/SECURITY.md)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_reliability_says_one_thing_about_nexa_train_and_the_launch_lock():
    """It said that a `nexa train` started by hand takes the launch lock (it does, through
    runner.register_foreground: tests/test_runner.py::test_second_launch_on_a_busy_device_is_refused_and_stop_kills_every_process)
    and, under Limits, that it does not."""
    text = " ".join((ROOT / "docs" / "RELIABILITY.md").read_text().split())
    assert "register_foreground" in text
    assert not re.search(r"does not take the launch lock", text)


def test_every_test_the_docs_name_exists():
    """The tables name the test that proves each row (`tests/x.py::name`, then `::name` in the same
    file): a renamed or removed test must not leave a row proved by nothing."""
    missing = []
    for doc in ("SECURITY.md", "RELIABILITY.md"):
        current = None
        text = (ROOT / "docs" / doc).read_text()
        for file, name in re.findall(r"`(tests/[\w/]+\.py)?(?:::(\w+))?`", text):
            current = file or current  # a bare `tests/x.py` sets the file for the `::name`s after it
            if not name:
                continue
            source = (ROOT / current).read_text()
            if not re.search(rf"^def {name}\(", source, re.MULTILINE):
                missing.append(f"{doc}: {current}::{name}")
    assert missing == []
