"""Hostile uploads: each malformed class gives a ConfigError naming the file and line (never a
traceback), memory stays bounded for big inputs, and the Launch page shows the message while
keeping the rest of the form."""

from __future__ import annotations

import json
import signal
import tempfile
import time
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from streamlit.testing.v1 import AppTest

from nexa_core import datasets as nd
from nexa_core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
GOOD = json.dumps({"text": "the pump failed", "label": "outage"})


def _problems(path: Path, task: str = "classification", **kwargs) -> list[str]:
    with pytest.raises(ConfigError) as err:  # ConfigError and nothing else: no traceback for users
        nd.load_records(path, task, **kwargs)
    return err.value.problems


def _peak_bytes(path: Path, **kwargs) -> tuple[int, list[str]]:
    tracemalloc.start()
    try:
        problems = _problems(path, **kwargs)
        return tracemalloc.get_traced_memory()[1], problems
    finally:
        tracemalloc.stop()


def test_malformed_csv(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text('text,label\nfine,ok\n"an extra, quoted" value,x,y\n"' + "a" * 200_000 + '",ok\n')
    problems = _problems(path)
    assert problems[0] == "bad.csv line 3: has 3 values but the header has 2 columns"
    assert problems[1].startswith("bad.csv line 4: malformed CSV (field larger than field limit")


def test_malformed_jsonl(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(f'{GOOD}\n{{"text": "unterminated\n[1, 2]\n{GOOD[:-1]},}}\n')
    assert [p.split(":")[0] for p in _problems(path)] == [
        "bad.jsonl line 2",
        "bad.jsonl line 3",
        "bad.jsonl line 4",
    ]


def test_non_utf8_bytes(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes("text,label\ncaf\xe9 cr\xe8me,ok\n".encode("latin-1") + b"\xff\xfe\x00\x00,x\n")
    assert _problems(path) == [
        "latin1.csv line 2: not valid UTF-8 (byte 4 of the line); save as UTF-8",
        "latin1.csv line 3: not valid UTF-8 (byte 1 of the line); save as UTF-8",
    ]


def test_deeply_nested_json(tmp_path):
    path = tmp_path / "deep.jsonl"
    path.write_text(GOOD + "\n" + "[" * 100_000 + "\n" + '{"text": ' + "{" * 50_000 + "\n")
    assert _problems(path) == [
        f"deep.jsonl line 2: JSON nested deeper than {nd.MAX_DEPTH} levels",
        f"deep.jsonl line 3: JSON nested deeper than {nd.MAX_DEPTH} levels",
    ]


def test_a_single_50_mb_line_is_streamed_in_bounded_memory(tmp_path):
    path = tmp_path / "one-line.jsonl"
    size = nd.LIMIT_BYTES - 1024  # just under the size limit, so it is really read
    with path.open("wb") as f:
        f.write(b'{"text": "')
        for _ in range(size // 2**20):
            f.write(b"a" * 2**20)
        f.write(b'", "label": "x"}\n' + GOOD.encode() + b"\n")
    peak, problems = _peak_bytes(path)
    assert problems == [f"one-line.jsonl line 1: line is longer than {nd.MAX_LINE_BYTES} bytes"]
    assert peak < 4 * nd.MAX_LINE_BYTES < size / 10  # a few line buffers, never the line itself


def test_many_bad_lines_keep_memory_and_messages_bounded(tmp_path):
    path = tmp_path / "noise.jsonl"
    path.write_bytes((b"x" * 199 + b"\n") * 40_000)  # 8 MB of lines that are not JSON
    peak, problems = _peak_bytes(path)
    assert len(problems) == nd.MAX_PROBLEMS + 1
    assert problems[-1] == "noise.jsonl: ... and 39980 more problems"
    assert peak < 2**20  # the first 20 messages, not 40,000


def test_too_many_rows(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text((GOOD + "\n") * 30)
    assert len(nd.load_records(path, "classification", max_rows=30)) == 30
    assert _problems(path, max_rows=29) == [
        "rows.jsonl line 30: more than 29 records; split the file or sample it down"
    ]
    assert nd.MAX_ROWS == 250_000  # the default the app uses


def test_wrong_columns_and_fields(tmp_path):
    csv_path = tmp_path / "cols.csv"
    csv_path.write_text("sentence,category\nhello,greeting\n")
    assert _problems(csv_path) == [
        "cols.csv line 1: missing column 'text' (header has: sentence, category)",
        "cols.csv line 1: missing column 'label' (header has: sentence, category)",
    ]
    jsonl = tmp_path / "fields.jsonl"
    jsonl.write_text('{"tokens": ["a"], "ner_tags": ["O"]}\n{"text": ["not", "a", "string"], "label": "x"}\n')
    assert _problems(jsonl) == [
        "fields.jsonl line 1: missing field 'text'",
        "fields.jsonl line 1: missing field 'label'",
        "fields.jsonl line 2: field 'text' must be a non-empty string",
    ]


@pytest.mark.parametrize("name", ["model.pkl", "data.exe", "noext", "data.csv.zip"])
def test_type_check_refuses_other_files_before_reading(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"\x80\x04\x95 pickle bytes")
    (problem,) = _problems(path)
    assert problem.startswith(f"{name}: unsupported file type") and ".jsonl, .json, .csv" in problem


def test_size_limit_refuses_before_reading(tmp_path):
    path = tmp_path / "big.csv"
    path.write_bytes(b"text,label\n" + b"x,y\n" * 300)
    peak, problems = _peak_bytes(path, max_bytes=1000)
    assert problems == [f"big.csv: file is {path.stat().st_size} bytes, larger than the 1000 byte limit"]
    assert peak < 64 * 1024


# ------------------------------------------------------------------ validation cost is linear
BOUND_S = 1.0  # the bound for one upload line of up to 1 MB
# Pieces that stress a JSON pre-scan: nesting, quotes, escapes (the old regex was quadratic on a
# line of escaped quotes after 21 '['), plus text, multi-byte characters and record syntax.
PIECES = ["[", "{", "]", "}", '"', '\\"', "\\", "\\\\", ",", ":", " ", "a", "1", "é", "€𝄞",
          '{"text": ', '"label"']  # fmt: skip


def _line(parts: list[tuple[str, int]]) -> bytes:
    """The pieces repeated, joined and cut to one line of at most MAX_LINE_BYTES (a cut inside a
    multi-byte character is fine: that is the not-UTF-8 path, validated too)."""
    line, room = b"", nd.MAX_LINE_BYTES - 1
    for piece, count in parts:
        chunk = piece.encode()
        line += chunk * min(count, (room - len(line)) // len(chunk) + 1)
    return line[:room] + b"\n"


@contextmanager
def _abort_after(seconds: float) -> Iterator[None]:
    """Interrupt a runaway validation (re and json check signals), so a regression fails in seconds
    instead of holding the test for hours."""

    def expire(*_):
        raise TimeoutError(f"validating one line took over {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _validation_cpu_s(line: bytes, folder: Path) -> float:
    """CPU seconds load_records spends on a file holding ``line`` (CPU time, not wall time, so a busy
    machine does not count against it)."""
    path = folder / "line.jsonl"
    path.write_bytes(line)
    start = time.process_time()
    with _abort_after(10 * BOUND_S):
        try:
            nd.load_records(path, "classification")
        except ConfigError:
            pass  # a message is the expected outcome for almost every fuzzed line
    return time.process_time() - start


ADVERSARIAL = [  # the reproductions at 128 KB and at the 1 MB line limit
    [("[", 21), ('"', 1), ('\\"', 64_000)],
    [("[", 21), ('"', 1), ('\\"', 520_000)],
    [("[", 21), ('"', 1), ("\\", 1_040_000)],
    [("[", 1_040_000)],
    [("[{", 11), ('"]', 520_000)],
]


@settings(max_examples=100, deadline=None, database=None)
@given(parts=st.lists(st.tuples(st.sampled_from(PIECES), st.integers(1, 1 << 20)), min_size=1, max_size=6))
@example(parts=ADVERSARIAL[0])
@example(parts=ADVERSARIAL[1])
@example(parts=ADVERSARIAL[2])
@example(parts=ADVERSARIAL[3])
@example(parts=ADVERSARIAL[4])
@example(parts=[("1", 4301)])  # json.loads raised ValueError (int digits limit), not a message
def test_no_upload_line_up_to_1_mb_takes_more_than_a_second_to_validate(parts):
    with tempfile.TemporaryDirectory() as folder:
        assert _validation_cpu_s(_line(parts), Path(folder)) < BOUND_S


def test_validation_cost_grows_linearly_with_the_line():
    """The measured cost, not only the bound: 8x the line costs about 8x (quadratic would be 64x),
    and a 1 MB adversarial line is far below the bound. Best of three, to ignore scheduling noise."""
    with tempfile.TemporaryDirectory() as folder:

        def cost(repeats: int) -> float:
            line = _line([("[", 21), ('"', 1), ('\\"', repeats)])
            return min(_validation_cpu_s(line, Path(folder)) for _ in range(3))

        small, large = cost(64_000), cost(512_000)
    assert large < BOUND_S / 5
    assert large < 20 * max(small, 1e-3)


def test_adversarial_line_is_validated_in_bounded_memory(tmp_path):
    path = tmp_path / "escapes.jsonl"
    path.write_bytes(_line(ADVERSARIAL[1]))
    with _abort_after(10 * BOUND_S):
        peak, problems = _peak_bytes(path)
    assert problems == [f"escapes.jsonl line 1: JSON nested deeper than {nd.MAX_DEPTH} levels"]
    assert peak < 8 * nd.MAX_LINE_BYTES  # a few copies of the line at most


# ------------------------------------------------------------------ the Launch page
@pytest.fixture
def page(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("NEXA_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("NEXA_ACCESS_TOKEN", raising=False)
    monkeypatch.chdir(ROOT)
    return AppTest.from_file(ROOT / "pages" / "launch.py", default_timeout=120).run()


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"[" * 100_000 + b"\n", "line 1: JSON nested deeper than"),
        (b"\xff\xfe\xfa bad\n", "line 1: not valid UTF-8"),
    ],
    ids=["deep-json", "not-utf8"],
)
def test_launch_page_shows_the_upload_problem_and_keeps_the_form(page, content, expected):
    page.selectbox(key="launch_task").set_value("classification")
    page.text_input(key="launch_name").input("kept name")
    page.number_input(key="launch_lr").set_value(1e-4)
    page.radio(key="launch_source").set_value("upload a file").run()
    page.file_uploader(key="launch_upload").set_value(("evil.jsonl", content, "application/json")).run()
    assert not page.exception
    (error,) = page.error
    assert f"evil.jsonl {expected}" in error.value
    assert page.text_input(key="launch_name").value == "kept name"  # the rest of the form stays
    assert page.number_input(key="launch_lr").value == pytest.approx(1e-4)
    assert page.selectbox(key="launch_task").value == "classification"
    assert not [b for b in page.button if b.key == "launch_go"]  # nothing launchable from a bad file
    page.file_uploader(key="launch_upload").set_value(
        ("fine.jsonl", ((GOOD + "\n") * 4).encode(), "application/json")
    ).run()
    assert not page.exception and not page.error
    assert [b.key for b in page.button if b.key == "launch_go"] == ["launch_go"]  # launchable again
