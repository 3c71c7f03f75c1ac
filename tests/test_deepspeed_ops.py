"""`nexa ops`: DeepSpeed's C++ ops built ahead of the first run, once."""

import json
import subprocess
import sys

import pytest

from nexa_core.deepspeed_ops import build_ops, run_ops
from nexa_core.device_manager import extension_root

pytestmark = pytest.mark.slow


def test_the_ops_built_are_the_ones_a_run_on_this_machine_loads():
    assert run_ops(gpu=False) == ("CPUAdamBuilder", "ShareMemCommBuilder")
    assert run_ops(gpu=True) == ("CPUAdamBuilder", "FusedAdamBuilder")


def test_nexa_ops_readies_every_op_and_a_second_call_rebuilds_nothing():
    """Under scripts/test.sh the set-up has built them into the environment's folder already."""

    def ops() -> list[dict]:
        out = subprocess.run(
            [sys.executable, "-m", "nexa_core", "ops", "--json"], capture_output=True, text=True, timeout=900
        )
        assert out.returncode == 0, out.stderr[-2000:]
        return json.loads(out.stdout)

    first = ops()
    assert [(r["op"], r["ready"]) for r in first] == [("CPUAdamBuilder", True), ("ShareMemCommBuilder", True)]
    built = {p: p.stat().st_mtime_ns for p in extension_root().rglob("*.so")}  # <root>[/py311_cpu]/<op>/
    assert {p.parent.name for p in built} >= {"cpu_adam", "deepspeed_shm_comm"}
    second = ops()
    assert all(r["ready"] and r["detail"].startswith("ready in ") for r in second)
    assert {p: p.stat().st_mtime_ns for p in built} == built  # nothing relinked


def test_an_op_deepspeed_has_not_for_this_machine_is_reported_with_its_reason():
    (result,) = build_ops(("InferenceBuilder",))  # a GPU inference kernel; the CPU accelerator has none
    assert not result.ready and "not been implemented on CPU" in result.detail
