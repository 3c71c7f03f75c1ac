"""Probes run as a background job (nexa_core/probe_jobs.py): started at once, their results land
in NEXA_HOME/probes/<id>.json while the page (or anyone) reads them."""

import time

import pytest

from nexa_core import probe_jobs
from nexa_core.train_config import TrainConfig

pytestmark = pytest.mark.slow


def test_a_probe_job_returns_at_once_and_its_result_lands_in_its_file(nexa_home):
    config = TrainConfig(task="ner", batch_size=2, seq_len=16, deepspeed="off")
    begun = time.monotonic()
    job_id = probe_jobs.start(config, budget_bytes=64 * 2**30, on_gpu=False, find=False)
    assert time.monotonic() - begun < 10  # the probe itself takes longer: it runs elsewhere
    assert probe_jobs.state(job_id)["state"] == "running"
    deadline = time.monotonic() + 300
    while (job := probe_jobs.state(job_id))["state"] == "running":
        assert time.monotonic() < deadline, "the probe job never finished"
        time.sleep(1)
    assert job["state"] == "done", job
    (landed,) = job["probes"]
    assert landed["fits"] and landed["peak_host_rss_bytes"] > 0 and job["result"]["fits"]


def test_a_job_whose_process_vanished_is_reported_failed_and_ids_stay_inside_the_folder(nexa_home):
    job_id = "20261203-000000-probe-abcdef"
    probe_jobs._write(job_id, {"id": job_id, "state": "running", "pid": 2**22 + 17, "pid_create_time": 1.0,
                               "probes": [], "error": None})  # fmt: skip
    job = probe_jobs.state(job_id)
    assert job["state"] == "failed" and "ended without a result" in job["error"]
    assert probe_jobs.state("../../etc/passwd") is None  # not a job id: nothing is read
    with pytest.raises(ValueError):
        probe_jobs._file("../../etc/passwd")
