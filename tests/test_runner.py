"""The run manager with real subprocesses and real training (the packaged MiniLM, a few steps)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from nexa_core import runner
from nexa_core.errors import ConfigError
from nexa_core.exits import classify_exit, last_error_line
from nexa_core.launch import LaunchMode, RunSpec, build_launch
from nexa_core.runstore import RunState, RunStore
from nexa_core.train_config import TrainConfig
from tests.run_helpers import wait_for_step

FAST = dict(batch_size=4, seq_len=32, eval=False)


def _spec(**train):
    return RunSpec(TrainConfig(**{**FAST, **train}))


# ------------------------------------------------------------------ pure parts


def test_build_launch_for_each_mode(tmp_path):
    config = TrainConfig(**FAST)
    python = "/py"
    argv, env = build_launch(RunSpec(config), "r1", tmp_path, python)
    assert (
        argv[:4] == ["/py", "-m", "nexa_core", "train"] and "--run-id" in argv and env["NEXA_RUN_ID"] == "r1"
    )
    argv, env = build_launch(
        RunSpec(config, LaunchMode.TORCHRUN, nproc=2, master_port=29555), "r1", tmp_path, python
    )
    assert argv[1:5] == ["-m", "torch.distributed.run", "--nproc_per_node", "2"] and "29555" in argv
    argv, env = build_launch(
        RunSpec(config, LaunchMode.ACCELERATE, nproc=2, gpus=[3, 1]), "r1", tmp_path, python
    )
    assert "--use_deepspeed" in argv and str(tmp_path / "deepspeed_config.json") in argv
    assert env["CUDA_VISIBLE_DEVICES"] == "3,1" and env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    argv, env = build_launch(
        RunSpec(config, LaunchMode.DEEPSPEED, nproc=2, gpus=[2, 5]), "r1", tmp_path, python
    )
    assert "localhost:2,5" in argv and "--module" in argv and "CUDA_VISIBLE_DEVICES" not in env
    assert all(isinstance(a, str) for a in argv)  # an argv list, never a shell string


def test_run_spec_validation_lists_every_problem():
    with pytest.raises(ConfigError) as err:
        RunSpec(TrainConfig(**FAST), mode="ssh", nproc=0, gpus=[1, 1], master_port=80)
    assert len(err.value.problems) == 4


def test_exit_classification():
    assert classify_exit(0, "")[0] is RunState.SUCCEEDED
    state, reason = classify_exit(1, "Traceback...\n  File x\nValueError: bad label 'X'\n")
    assert state is RunState.FAILED and "ValueError: bad label 'X'" in reason
    assert (
        "out of memory"
        in classify_exit(1, "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate")[1]
    )
    assert "probably out of memory" in classify_exit(-9, "")[1]
    assert "probably out of memory" in classify_exit(1, "exitcode  : -9 (pid: 12)\nChildFailedError")[1]
    assert classify_exit(-9, "", stop_requested=True)[0] is RunState.STOPPED
    assert last_error_line("x\ntorch.distributed.elastic.multiprocessing.errors.ChildFailedError:\n") is None


# ------------------------------------------------------------- real processes


def test_launch_runs_to_success_with_metrics_and_checkpoint(nexa_home):
    run_id = runner.launch(_spec(max_steps=3))
    run = runner.wait(run_id, timeout_s=300)
    assert run["state"] == "succeeded" and run["exit_code"] == 0
    store = RunStore()
    assert [s for s, _, _ in store.metrics(run_id, ["loss"])["loss"]] == [1, 2, 3]
    assert list(Path(run["run_dir"], "checkpoints").glob("step-*/COMPLETE"))
    for name in ("run_config.json", "deepspeed_config.json", "accelerate_config.yaml", "run.log"):
        assert (Path(run["run_dir"]) / name).exists()


def test_second_launch_on_a_busy_device_is_refused_and_stop_kills_every_process(nexa_home):
    """torchrun with 2 ranks: supervisor -> torchrun -> 2 workers (grandchildren)."""
    spec = RunSpec(
        TrainConfig(**FAST, max_steps=10_000, deepspeed="off"),
        LaunchMode.TORCHRUN,
        nproc=2,
    )
    run_id = runner.launch(spec)
    store = RunStore()
    wait_for_step(run_id, 1)
    with pytest.raises(ConfigError, match="busy"):
        runner.launch(_spec(max_steps=3))
    # `nexa train` in a terminal keeps the same rule: refused, in one line, and no run row made
    by_hand = subprocess.run(
        [sys.executable, "-m", "nexa_core", "train", "--max-steps", "3", "--batch-size", "4", "--seq-len", "32"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "NEXA_HOME": str(nexa_home)},
    )  # fmt: skip
    assert by_hand.returncode == 2, by_hand.stderr[-2000:]
    assert f"nexa train: error: devices: busy (cpu by run {run_id})" in by_hand.stderr
    assert "Traceback" not in by_hand.stderr and [r["id"] for r in store.list_runs()] == [run_id]
    procs = runner.run_processes(store.get_run(run_id))
    assert len(procs) >= 4  # supervisor, torchrun, two ranks
    grace = 20.0
    start = time.monotonic()
    assert runner.stop(run_id, grace_s=grace) == "stopped"
    assert time.monotonic() - start <= grace + 2
    assert not [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert store.get_run(run_id)["stopped_by"] == "user"


def test_failing_run_is_classified_with_the_error_summary(nexa_home, tmp_path):
    folder = tmp_path / "tiny"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 1,
                                                    "num_attention_heads": 2, "intermediate_size": 64}))  # fmt: skip
    # no weights and no --random-init: the trainer refuses with a clear message
    run = runner.wait(runner.launch(_spec(model=str(folder), max_steps=2)), timeout_s=300)
    assert run["state"] == "failed"
    assert "no weights" in run["reason"]


def test_sigkill_without_stop_is_classified_as_probable_oom(nexa_home):
    run_id = runner.launch(_spec(max_steps=10_000, deepspeed="off"))
    store = RunStore()
    wait_for_step(run_id, 1)
    trainer = [p for p in runner.run_processes(store.get_run(run_id)) if "train" in " ".join(p.cmdline())][-1]
    trainer.send_signal(signal.SIGKILL)  # what the kernel's OOM killer does
    run = runner.wait(run_id, timeout_s=60)
    assert run["state"] == "failed" and "probably out of memory" in run["reason"]


def test_reattach_after_the_launching_process_is_gone_then_resume(nexa_home):
    env = dict(os.environ, NEXA_HOME=str(nexa_home))
    out = subprocess.run(
        [sys.executable, "-m", "nexa_core", "launch", "--max-steps", "10000", "--save-every", "2", "--batch-size", "4",
         "--seq-len", "32", "--deepspeed", "off", "--no-eval", "--json"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    run_id = json.loads(out.stdout.strip().splitlines()[-1])["run_id"]  # the launching CLI has exited
    store = RunStore()
    assert runner.refresh(store) == []  # still running: pid and start time match
    assert store.get_run(run_id)["state"] == "running"
    wait_for_step(run_id, 3)
    assert runner.stop(run_id, grace_s=30) == "stopped"
    stopped_at = store.get_run(run_id)["last_step"]

    # resume continues from the latest checkpoint as the same run, with no duplicated rows
    config_path = Path(store.get_run(run_id)["run_dir"]) / "run_config.json"
    data = json.loads(config_path.read_text())
    data["max_steps"] = stopped_at + 2
    config_path.write_text(json.dumps(data))
    runner.resume(run_id)
    run = runner.wait(run_id, timeout_s=300)
    assert run["state"] == "succeeded"
    steps = [s for s, _, _ in store.metrics(run_id, ["loss"])["loss"]]
    assert steps == list(range(1, stopped_at + 3))


def test_a_vanished_process_is_marked_failed_with_its_last_step(nexa_home):
    store = RunStore()
    store.create_run("ghost", name="ghost", spec={}, run_dir=str(nexa_home / "runs" / "ghost"))
    store.update_run("ghost", pid=2**22 - 3, pid_create_time=1.0, last_step=7)
    store.set_state("ghost", RunState.RUNNING)
    assert runner.refresh(store) == ["ghost"]
    run = store.get_run("ghost")
    assert run["state"] == "failed" and "last step 7" in run["reason"]


@pytest.mark.parametrize(
    "flag, content, message",
    [
        ("--dataset", "text,label\ncaf\xe9,ok\n".encode("latin-1"), "line 2: not valid UTF-8"),
        ("--dataset", b"sentence,category\nhello,greeting\n", "line 1: missing column 'text'"),
        (
            "--eval-dataset",
            b'{"text": "fine", "label": "unknown-label"}\n',
            "line 1: unknown label(s) 'unknown-label'",
        ),
    ],
    ids=["latin-1", "wrong-columns", "eval-label-not-in-training"],
)
def test_nexa_launch_validates_the_data_before_starting_anything(
    nexa_home, tmp_path, capsys, flag, content, message
):
    """Before, the run started and failed seconds later in the trainer; now nothing starts and no
    run row is written. The same load_records path the run would take (eval labels included)."""
    from nexa_core import cli

    good = tmp_path / "good.csv"
    good.write_text("text,label\nthe pump failed,outage\nall fine,ok\n")
    bad = tmp_path / ("bad.jsonl" if flag == "--eval-dataset" else "bad.csv")
    bad.write_bytes(content)
    data = ["--dataset", str(good), flag, str(bad)] if flag == "--eval-dataset" else [flag, str(bad)]
    code = cli.main(["launch", "--task", "classification", *data, "--max-steps", "1", "--deepspeed", "off"])
    err = capsys.readouterr().err
    assert code == 2 and f"nexa launch: error: {bad.name} {message}" in err, err
    assert RunStore().list_runs() == []  # nothing was started


@pytest.mark.parametrize(
    "path, says",
    [("/dev/zero", "is not a regular file (a device, pipe or socket)"), ("/", "is a folder, not a file"),
     ("/no/such/data.csv", "does not exist")],
)  # fmt: skip
def test_a_dataset_that_is_not_a_regular_file_is_named_for_what_it_is(nexa_home, capsys, path, says):
    from nexa_core import cli

    assert cli.main(["launch", "--dataset", path, "--max-steps", "1", "--deepspeed", "off"]) == 2
    assert f"nexa launch: error: dataset (--dataset): {path!r} {says}" in capsys.readouterr().err


def test_a_supervisor_that_ends_while_its_processes_are_listed_is_not_an_error(monkeypatch):
    """run_processes found the supervisor alive, then it ended before its children were listed:
    psutil raised NoSuchProcess out of runner.wait (seen once in the suite)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    seen = psutil.Process(proc.pid)
    proc.wait()
    with pytest.raises(psutil.NoSuchProcess):
        seen.children(recursive=True)
    monkeypatch.setattr(runner, "_same_process", lambda pid, create_time: seen)
    assert runner.run_processes({"id": "r1", "pid": proc.pid, "pid_create_time": 0.0}) == []
