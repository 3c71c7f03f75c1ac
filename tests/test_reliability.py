"""Fault tolerance (issue 6, docs/RELIABILITY.md): kill -9 of the trainer mid-step and mid-save,
kill -9 of the process that launched a run, concurrent store writers, concurrent launches on one
device. Real processes, real SQLite, real Accelerate (no DeepSpeed: the checkpoint protocol is
NEXA's, around whatever Accelerate writes), a tiny random-initialised BERT."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from nexa_core import runner
from nexa_core.checkpoints import COMPLETE_MARKER, STATE_FILE, checkpoints, partial_checkpoints
from nexa_core.errors import ConfigError
from nexa_core.launch import RunSpec
from nexa_core.runstore import RunStore
from nexa_core.train_config import TrainConfig
from tests.run_helpers import processes_carrying

TINY_BERT = {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
             "intermediate_size": 64, "vocab_size": 30522, "max_position_embeddings": 64}  # fmt: skip


@pytest.fixture
def tiny_bert(tmp_path) -> Path:
    folder = tmp_path / "tiny-bert"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(TINY_BERT))
    return folder


def _config(model: Path, **fields) -> TrainConfig:
    return TrainConfig(model=str(model), random_init=True, deepspeed="off", batch_size=4, seq_len=32,
                       eval=False, **fields)  # fmt: skip


def _until(condition, timeout_s: float = 120, what: str = "condition", poll_s: float = 0.01):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll_s)
    raise TimeoutError(f"waited {timeout_s} s for {what}")


def _alive(pid: int, create_time: float) -> bool:
    """The very process recorded earlier (pid and start time) still runs (a zombie does not)."""
    try:
        proc = psutil.Process(pid)
        return abs(proc.create_time() - create_time) < 0.01 and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _ignores_sigterm(pid: int) -> bool:
    """From the kernel's SigIgn mask: an ignored SIGTERM is inherited across exec."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigIgn:"):
            return bool(int(line.split()[1], 16) >> (signal.SIGTERM - 1) & 1)
    return False


# ------------------------------------------------------------ kill -9 of the trainer

# A fork server: torch, transformers and Accelerate are imported once (no tensor work before the
# fork), then every training attempt is a fork running the same run_training() that `nexa train`
# runs. Each attempt then costs a few seconds instead of a fresh interpreter's ten or more.
FORK_SERVER = r"""
import json, os, sys, traceback
import accelerate, torch, transformers  # noqa: F401
from nexa_core import datasets, trainer  # noqa: F401
from nexa_core.train_config import TrainConfig
from nexa_core.training_run import run_training

for line in sys.stdin:
    request = json.loads(line)
    if "reap" in request:
        _, status = os.waitpid(request["reap"], 0)
        print(json.dumps({"exit": os.waitstatus_to_exitcode(status)}), flush=True)
        continue
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND)
            os.dup2(log, 1)
            os.dup2(log, 2)
            os.environ.update(request["env"])
            run_training(TrainConfig.from_dict(request["config"]), run_id=request["run_id"], resume=request["resume"])
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    print(json.dumps({"pid": pid}), flush=True)
"""


class _Trainers:
    def __init__(self, home: Path, log: Path) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("NEXA_RUN_ID", "NEXA_TEST_PAUSE_IN_SAVE")}
        self.log = log
        self.server = subprocess.Popen(
            [sys.executable, "-c", FORK_SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True, env={**env, "NEXA_HOME": str(home)}, cwd=Path(__file__).resolve().parent.parent,
        )  # fmt: skip
        self.started: list[int] = []

    def _ask(self, request: dict) -> dict:
        self.server.stdin.write(json.dumps(request) + "\n")
        self.server.stdin.flush()
        line = self.server.stdout.readline()
        assert line, f"fork server died: {self.log.read_text()[-3000:] if self.log.exists() else ''}"
        return json.loads(line)

    def start(self, config: dict, run_id: str, resume: bool, env: dict[str, str]) -> int:
        request = {"config": config, "run_id": run_id, "resume": resume, "env": env, "log": str(self.log)}
        pid = self._ask(request)["pid"]
        self.started.append(pid)
        return pid

    def reap(self, pid: int) -> int:
        """Wait for the attempt to end; its exit code (-9 when SIGKILL ended it)."""
        return self._ask({"reap": pid})["exit"]

    def close(self) -> None:
        for pid in self.started:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.server.stdin.close()
        self.server.wait(timeout=60)


def _events(store: RunStore, run_id: str) -> list[str]:
    return [e["message"] for e in store.events(run_id)]


def _resumes(store: RunStore, run_id: str) -> list[str]:
    """The checkpoint each resume loaded, in order ("" for a resume that found none)."""
    return [
        m.split()[2] if m.startswith("resumed from") else ""
        for m in _events(store, run_id)
        if m.startswith(("resumed from", "resume: no complete checkpoint"))
    ]


def test_kill_9_of_the_trainer_at_random_steps_and_mid_save_then_resume(nexa_home, tiny_bert, tmp_path):
    """Six kill -9s of the trainer, each followed by a resume: two inside a checkpoint save (the
    test-only NEXA_TEST_PAUSE_IN_SAVE holds the save before the rename, then before the marker),
    four at seeded random steps. Then the newest checkpoint is damaged before the last resume.
    The run ends at the planned step, every resume loaded the newest complete (loadable)
    checkpoint, partial ones were removed with a warning, each kill was noticed by refresh with
    its last step, and there is exactly one metric row per (step, metric)."""
    rng = random.Random(6)
    total, run_id = 40, "kill9"
    config = _config(tiny_bert, max_steps=total, save_every=2, keep_last=2).to_dict()
    run_dir = nexa_home / "runs" / run_id
    store = RunStore()  # creates NEXA_HOME and the schema
    # where each kill lands: inside the save (held by the fault injection) or at a random step
    plan = ["before-rename", "step", "before-marker", "step", "step", "step"]
    trainers = _Trainers(nexa_home, tmp_path / "trainer.log")
    expected_resumes: list[str] = []  # for each resume: the checkpoint it must load ("" = from 0)
    kills: list[tuple[float, int]] = []  # (time of the kill, last step recorded)
    try:
        for attempt, where in enumerate(plan):
            resuming = attempt > 0
            resumes_before = len(_resumes(store, run_id))
            env = {"NEXA_TEST_PAUSE_IN_SAVE": where} if where != "step" else {}
            pid = trainers.start(config, run_id, resuming, env)
            if resuming:  # the resume has happened (and reset the progress) before steps count
                _until(
                    lambda n=resumes_before: len(_resumes(store, run_id)) > n,
                    what=f"attempt {attempt} to resume",
                )
            if where == "before-rename":  # the state is written, the rename not yet done
                _until(
                    lambda: list((run_dir / "checkpoints").glob(f".tmp-step-*/{STATE_FILE}")),
                    what="a held save",
                )
            elif where == "before-marker":  # renamed to step-N, marker not yet written
                _until(
                    lambda: [
                        p
                        for p in (run_dir / "checkpoints").glob("step-*")
                        if not (p / COMPLETE_MARKER).exists()
                    ],
                    what="a renamed checkpoint without its marker",
                )
            else:
                start_step = store.get_run(run_id)["last_step"] or 0
                # the last random kill lands late enough for two complete checkpoints (damaged below)
                target = start_step + (rng.randint(4, 6) if attempt == len(plan) - 1 else rng.randint(1, 6))
                _until(
                    lambda target=target: (store.get_run(run_id)["last_step"] or 0) >= target,
                    what=f"step {target}",
                )
            kill_time = time.time()
            os.kill(pid, signal.SIGKILL)
            assert trainers.reap(pid) == -signal.SIGKILL, (
                "the trainer had already ended: the kill came too late"
            )
            kills.append((kill_time, store.get_run(run_id)["last_step"]))
            partial = partial_checkpoints(run_dir)
            if where != "step":
                assert partial, f"kill {attempt} ({where}) left no partial checkpoint"
            complete = checkpoints(run_dir)
            assert all((p / COMPLETE_MARKER).exists() and (p / STATE_FILE).exists() for p in complete)
            expected_resumes.append(complete[-1].name if complete else "")
            # the app's next start notices the dead trainer and says where it stopped
            assert runner.refresh(store) == [run_id]
            run = store.get_run(run_id)
            assert run["state"] == "failed" and f"last step {kills[-1][1]}" in run["reason"]

        # damage the newest complete checkpoint: the resume must say so and use the one before
        complete = checkpoints(run_dir)
        assert len(complete) == 2
        damaged = complete[-1].name
        (complete[-1] / "model.safetensors").write_bytes(b"\0" * 64)
        expected_resumes[-1] = complete[-2].name
        pid = trainers.start(config, run_id, True, {})
        assert trainers.reap(pid) == 0, (tmp_path / "trainer.log").read_text()[-3000:]
        run = store.get_run(run_id)
        assert run["state"] == "succeeded" and run["last_step"] == total
        assert checkpoints(run_dir)[-1].name == f"step-{total:07d}" and not partial_checkpoints(run_dir)
        resumed_after_last_kill = expected_resumes[-1]
        expected_resumes.append(f"step-{total:07d}")

        # resuming the finished run trains nothing more (no step beyond the planned count)
        pid = trainers.start(config, run_id, True, {})
        assert trainers.reap(pid) == 0, (tmp_path / "trainer.log").read_text()[-3000:]
        assert store.get_run(run_id)["last_step"] == total
        assert store.metrics(run_id, ["loss"])["loss"][-1][0] == total

        # every complete checkpoint damaged: the resume refuses, saying why, instead of starting over
        for ckpt in checkpoints(run_dir):
            (ckpt / "model.safetensors").write_bytes(b"\0" * 64)
        pid = trainers.start(config, run_id, True, {})
        assert trainers.reap(pid) == 1
        refused = store.get_run(run_id)
        assert refused["state"] == "failed" and "none of the complete checkpoints" in refused["reason"]
        assert (store.metrics(run_id, ["loss"])["loss"][-1][0]) == total  # nothing was retrained
    finally:
        trainers.close()

    events = _events(store, run_id)
    assert _resumes(store, run_id) == expected_resumes, events
    assert expected_resumes[0] == "", "the first kill came before any checkpoint was complete"
    assert any("no complete checkpoint" in m and "starting again from step 0" in m for m in events)
    assert sum("removed the partial checkpoint" in m for m in events) >= 2
    assert any(f"checkpoint {damaged} could not be loaded" in m for m in events), events
    warnings = {e["message"] for e in store.events(run_id) if e["level"] == "warning"}
    assert any("could not be loaded" in m for m in warnings) and any("starting again" in m for m in warnings)

    with sqlite3.connect(store.path) as conn:
        duplicates = conn.execute(
            "SELECT step, name, COUNT(*) FROM metrics WHERE run_id = ? GROUP BY step, name HAVING COUNT(*) > 1",
            (run_id,),
        ).fetchall()
    assert duplicates == []
    curves = store.metrics(run_id)
    for name in ("loss", "lr", "grad_norm", "step_time_s"):
        assert [s for s, _, _ in curves[name]] == list(range(1, total + 1)), name
    # rewritten, not kept: every step a killed attempt had logged was logged again after the kill
    last_kill_time, last_kill_step = kills[-1]
    rewritten = [
        (s, t)
        for s, _, t in curves["loss"]
        if int(resumed_after_last_kill.split("-")[1]) < s <= last_kill_step
    ]
    assert rewritten and all(t > last_kill_time for _, t in rewritten)


# -------------------------------------------------- kill -9 of the launching process

LAUNCHER = r"""
import sys, time
from nexa_core import runner
from nexa_core.launch import RunSpec
from nexa_core.train_config import TrainConfig

config = TrainConfig(model=sys.argv[1], random_init=True, deepspeed="off", batch_size=4, seq_len=32,
                     eval=False, max_steps=1_000_000)
print(runner.launch(RunSpec(config)), flush=True)
time.sleep(600)  # an app or CLI that stays up with the run attached, until it is killed
"""


def test_kill_9_of_the_launcher_then_a_new_process_reattaches_and_stops_without_orphans(nexa_home, tiny_bert):
    launcher = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, str(tiny_bert)], stdout=subprocess.PIPE, text=True,
        env={**os.environ, "NEXA_HOME": str(nexa_home)},
    )  # fmt: skip
    run_id = launcher.stdout.readline().strip()
    if not run_id:
        launcher.kill()
        pytest.fail("the launcher printed no run id")
    store = RunStore()
    supervisor = psutil.Process(store.get_run(run_id)["pid"])
    # the supervisor has started the trainer: record the run's whole tree before the kill
    _until(lambda: supervisor.children(recursive=True), timeout_s=60, what="the trainer process")
    tree = [(p.pid, p.create_time()) for p in [supervisor, *supervisor.children(recursive=True)]]
    # a stop must reach the trainer even before it installs its own handler (during its imports)
    assert not any(_ignores_sigterm(p.pid) for p in supervisor.children(recursive=True))
    launcher.send_signal(signal.SIGKILL)
    assert launcher.wait(timeout=30) == -signal.SIGKILL

    # this test process never launched the run: it reattaches through the store alone
    assert runner.refresh(store) == []
    assert store.get_run(run_id)["state"] == "running"
    assert all(_alive(pid, t) for pid, t in tree), "killing the launcher must not kill the run"
    assert runner.stop(run_id, grace_s=60) == "stopped"
    stopped = store.get_run(run_id)
    # SIGTERM alone ended it, even mid start-up (nothing was left for the SIGKILL sweep), and the
    # supervisor, reparented after the launcher died, still recorded the outcome
    assert stopped["stopped_by"] == "user" and stopped["reason"] == "stopped on request"
    _until(
        lambda: not any(_alive(pid, t) for pid, t in tree), timeout_s=10, what="the run's processes to end"
    )
    assert processes_carrying(run_id) == []


# ------------------------------------------------------- concurrent store writers

WRITER = r"""
import sqlite3, sys
from nexa_core.runstore import RunStore

store, worker, errors = RunStore(sys.argv[1]), int(sys.argv[2]), 0
for step in range(1000):
    try:
        store.log_metrics("shared", step, {f"w{worker}": float(step)})
    except sqlite3.OperationalError as exc:  # "database is locked" would land here
        errors += 1
        print(exc, file=sys.stderr)
print(errors)
"""


def test_four_processes_times_a_thousand_metric_writes_with_zero_errors(nexa_home):
    store = RunStore()
    store.create_run("shared", name="shared", spec={}, run_dir=str(nexa_home / "runs" / "shared"))
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(store.path), str(w)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for w in range(4)
    ]
    app_writes = 0
    while any(w.poll() is None for w in writers):  # the app polls and writes meanwhile
        store.metrics("shared", ["w0"])
        store.add_event("shared", "app poll")
        store.update_run("shared", total_steps=1000)
        app_writes += 1
    outputs = [w.communicate() for w in writers]
    assert [w.returncode for w in writers] == [0] * 4, [err[-2000:] for _, err in outputs]
    assert [int(out) for out, _ in outputs] == [0] * 4, [err[-2000:] for _, err in outputs]
    assert app_writes > 0
    curves = store.metrics("shared")
    assert sum(len(rows) for rows in curves.values()) == 4000
    assert all([s for s, _, _ in curves[f"w{w}"]] == list(range(1000)) for w in range(4))


# ------------------------------------------------------------ one run per device


def test_eight_concurrent_launches_on_one_device_start_exactly_one(nexa_home, tiny_bert):
    spec = RunSpec(_config(tiny_bert, max_steps=1_000_000))
    barrier = threading.Barrier(8)
    started: list[str] = []
    refused: list[str] = []

    def launch_one() -> None:
        barrier.wait()
        try:
            started.append(runner.launch(spec))
        except ConfigError as exc:
            refused.append(str(exc))

    threads = [threading.Thread(target=launch_one) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    try:
        assert len(started) == 1 and len(refused) == 7, (started, refused)
        winner = started[0]
        assert all(m == f"gpus (--gpus): busy (cpu by run {winner}); stop that run or pick another device"
                   for m in refused), refused  # fmt: skip
        store = RunStore()
        assert [r["id"] for r in store.list_runs()] == [winner]  # a refusal leaves no run row behind
        assert store.get_run(winner)["state"] == "running" and runner.run_processes(store.get_run(winner))
    finally:
        for run_id in started:
            runner.stop(run_id, grace_s=10)
    assert processes_carrying(started[0]) == []
