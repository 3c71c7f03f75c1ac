"""scripts/durations_from_log.py and the module order tests/conftest.py gives the xdist workers."""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from durations_from_log import main, module_seconds  # noqa: E402

# lines as pytest prints them with --durations=0 (from a suite log), among others it ignores
LOG = """============================= slowest durations ==============================
71.78s call     tests/test_trainer.py::test_resume_after_stop_matches_an_uninterrupted_run
19.88s setup    tests/pages/test_monitor_page.py::test_a_finished_run_shows_its_curves_outcome_and_export
0.40s teardown tests/test_trainer.py::test_export_loads_and_predicts_like_the_trained_model
23.74s call     tests/test_estimate_accuracy.py::test_recorded_estimate_is_within_the_cross_validated_worst_case[minilm ner b16 s256 lora]
801 passed, 5 warnings in 572.83s (0:09:32)
"""


def test_module_seconds_sums_setup_call_and_teardown_per_module_longest_first():
    assert module_seconds(LOG) == {
        "tests/test_trainer.py": 72.2,
        "tests/test_estimate_accuracy.py": 23.7,
        "tests/pages/test_monitor_page.py": 19.9,
    }


def test_a_log_without_durations_is_refused(tmp_path, capsys):
    log = tmp_path / "log"
    log.write_text("801 passed in 572.83s\n")
    assert main([str(log)]) == 1 and "no --durations lines" in capsys.readouterr().err
    assert main([str(tmp_path / "missing")]) == 2


def test_the_recorded_durations_name_test_modules():
    seconds = json.loads((ROOT / "tests" / "durations.json").read_text())
    assert seconds and all(isinstance(s, float | int) and s >= 0 for s in seconds.values())
    assert all(m.startswith("tests/") and m.endswith(".py") for m in seconds)
    # most of what it lists still exists (a stale entry only orders less well)
    assert sum((ROOT / m).is_file() for m in seconds) >= 0.9 * len(seconds)
