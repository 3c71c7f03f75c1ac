"""The Slurm backend. First its pure parts (job request, batch script, argv, the schedulers' output
parsed, states mapped), then real jobs on a private two-node Slurm cluster on this machine
(scripts/slurm_local.sh, the ``slurm_cluster`` fixture): a 2-rank ZeRO-2 run through ``nexa launch
--backend slurm``, a restarted panel reattaching, Stop (scancel) leaving no process, resume, a job
over its time limit, and one Slurm kills for memory. The jobs train the packaged MiniLM on CPU."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nexa_core import runner, slurm, slurm_jobs
from nexa_core.cli import main
from nexa_core.errors import ConfigError
from nexa_core.launch import RunSpec
from nexa_core.runstore import RunState, RunStore
from nexa_core.slurm import JobInfo, SlurmRequest
from nexa_core.train_config import TrainConfig
from tests.run_helpers import processes_carrying

FAST = dict(batch_size=4, seq_len=32, eval=False, deepspeed="on", zero_stage=2)
FAST_FLAGS = ["--batch-size", "4", "--seq-len", "32", "--no-eval", "--deepspeed", "on", "--zero-stage", "2"]


def _request(**fields) -> SlurmRequest:
    return SlurmRequest(**{"partition": "debug", "time": "00:05:00", **fields})


# ------------------------------------------------------------------ the request and the script


def test_request_validation_lists_every_problem_with_its_flag():
    with pytest.raises(ConfigError) as err:
        SlurmRequest(
            partition="", nodes=0, gpus_per_node=65, time="90", account="a b", qos="-x", mem_mb="12X"
        )
    text = "\n".join(err.value.problems)
    assert len(err.value.problems) == 7, text
    for flag in ("--partition", "--nodes", "--gpus-per-node", "--time", "--account", "--qos", "--mem"):
        assert f"({flag})" in text
    assert SlurmRequest(partition="gpu", mem_mb="4G").mem_mb == 4096
    assert SlurmRequest(partition="gpu", mem_mb="300M", account="").account is None
    assert slurm.time_seconds("1-02:03:04") == 93784 and slurm.time_seconds("00:60:00") is None


def test_a_spec_slurm_cannot_honour_is_refused_with_the_field():
    spec = RunSpec(TrainConfig(**FAST), "deepspeed", 2, gpus=[0, 1])
    problems = slurm.request_problems(spec, _request(gpus_per_node=4))
    assert [p.split(" ", 1)[0] for p in problems] == ["mode", "gpus", "nproc"]
    assert "allowed: torchrun" in problems[0]
    assert (
        slurm.request_problems(RunSpec(TrainConfig(**FAST), "torchrun", 4), _request(gpus_per_node=4)) == []
    )


def test_memory_request_is_the_planners_host_estimate_plus_the_margin():
    estimate = {"host_total_bytes": 2 * 2**30}
    assert slurm.memory_request_mb(estimate, _request(gpus_per_node=8), ranks=8) == 2560  # per node already
    assert slurm.memory_request_mb(estimate, _request(), ranks=2) == 5120  # a CPU plan is per process
    assert slurm.memory_request_mb({"host_total_bytes": 10 * 2**20}, _request(), 1) == slurm.MIN_MEMORY_MB
    assert slurm.memory_request_mb(None, _request(), 1) is None


def test_the_planner_feeds_the_job_request(nexa_home):
    from nexa_core import runs

    spec = RunSpec(TrainConfig(**FAST), "torchrun", 1)
    estimate = runs.estimate_for(spec, gpus_per_node=0, nodes=2)
    request, mem = slurm_jobs.prepare(spec, _request(nodes=2), estimate)
    assert (
        mem == request.mem_mb == slurm.memory_request_mb(estimate, request, 1) and mem > slurm.MIN_MEMORY_MB
    )
    given, none = slurm_jobs.prepare(spec, _request(nodes=2, mem_mb="3G"), estimate)
    assert (given.mem_mb, none) == (3072, None)  # the user's figure wins
    assert "#SBATCH --mem=" + str(mem) + "M" in slurm_jobs.preview(spec, _request(nodes=2), estimate)


def test_batch_script_requests_the_job_and_starts_one_task_per_rank(tmp_path):
    spec = RunSpec(TrainConfig(**FAST), "torchrun", 4)
    request = _request(nodes=2, gpus_per_node=4, account="proj-1", qos="high", mem_mb="8G")
    script = slurm.build_sbatch(spec, request, "r1", tmp_path / "runs" / "r1", tmp_path, "/venv/bin/python")
    directives = [line for line in script.splitlines() if line.startswith("#SBATCH")]
    assert directives[:10] == [
        "#SBATCH --job-name=nexa-r1", "#SBATCH --partition=debug", "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=4", "#SBATCH --gpus-per-node=4", "#SBATCH --mem=8192M",
        "#SBATCH --time=00:05:00", "#SBATCH --account=proj-1", "#SBATCH --qos=high",
        f"#SBATCH --output={tmp_path}/runs/r1/run.log",
    ]  # fmt: skip
    assert "export NEXA_RUN_ID=r1" in script and f"export NEXA_STORE_RELAY={tmp_path}/runs/r1/relay" in script
    assert f"export NEXA_HOME={tmp_path}" in script and "export USE_DEEPSPEED=true" in script
    srun = next(line for line in script.splitlines() if line.startswith("srun "))
    assert "/venv/bin/python -m nexa_core train --config" in srun and srun.endswith("--run-id r1 --json &")
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0  # bash parses it
    resumed = slurm.build_sbatch(
        RunSpec(TrainConfig(**FAST), resume=True), _request(), "r1", tmp_path, tmp_path, "py"
    )
    assert "py -m nexa_core train --resume r1 --json &" in resumed and "--gpus-per-node" not in resumed


def test_each_task_gets_its_rank_from_slurms_variables(tmp_path):
    """The srun line's wrapper, run by bash as srun would run it in each task."""
    script = slurm.build_sbatch(RunSpec(TrainConfig(**FAST)), _request(), "r1", tmp_path, tmp_path, "py")
    srun = shlex.split(next(line for line in script.splitlines() if line.startswith("srun ")))
    wrapper = srun[srun.index("bash") : srun.index("nexa-rank") + 1]
    probe = [sys.executable, "-c", "import os; print(*(os.environ[k] for k in "
             "('RANK', 'LOCAL_RANK', 'WORLD_SIZE', 'NODE_RANK')))"]  # fmt: skip
    env = {**os.environ, "SLURM_PROCID": "5", "SLURM_LOCALID": "1", "SLURM_NTASKS": "8", "SLURM_NODEID": "2"}
    out = subprocess.run([*wrapper, *probe], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["5", "1", "8", "2"]


EXAMPLE = Path(__file__).resolve().parents[1] / "deployment" / "slurm" / "nexa-example.sbatch"


def test_the_documented_example_is_the_script_nexa_writes():
    """deployment/slurm/nexa-example.sbatch: its "## " lines are notes for the reader; the rest is what
    `nexa launch --backend slurm --partition gpu --nodes 2 --gpus-per-node 8 --time 04:00:00 --account
    my-project --mem 256G --deepspeed on --zero-stage 3` writes (this checkout's path shown as
    /shared/nexa). NEXA_UPDATE_EXAMPLES=1 rewrites it after a change to build_sbatch."""
    from nexa_core.launch import PROJECT_ROOT

    run, home = "20261203-120000-llama-8b-3f2a1c", Path("/shared/nexa-home")
    spec = RunSpec(TrainConfig(deepspeed="on", zero_stage=3), "torchrun", 8)
    request = SlurmRequest("gpu", 2, 8, "04:00:00", "my-project", None, "256G")
    script = slurm.build_sbatch(
        spec, request, run, home / "runs" / run, home, "/shared/nexa/.venv/bin/python"
    )
    script = script.replace(str(PROJECT_ROOT), "/shared/nexa")
    lines = EXAMPLE.read_text().splitlines(keepends=True)
    notes = [line for line in lines if line.startswith("## ")]
    if os.environ.get("NEXA_UPDATE_EXAMPLES"):
        first, rest = script.split("\n", 1)
        EXAMPLE.write_text(first + "\n" + "".join(notes) + rest)
        lines = EXAMPLE.read_text().splitlines(keepends=True)
    assert "".join(line for line in lines if not line.startswith("## ")) == script
    assert len(notes) > 10 and subprocess.run(["bash", "-n", str(EXAMPLE)]).returncode == 0


def test_command_lines():
    assert slurm.sbatch_argv(Path("/r/job.sbatch")) == ["sbatch", "--parsable", "/r/job.sbatch"]
    assert slurm.scancel_argv("42", "TERM") == ["scancel", "--signal=TERM", "42"]
    assert slurm.scancel_argv("42") == ["scancel", "42"]
    assert slurm.squeue_argv(["1", "2"])[:4] == ["squeue", "--noheader", "--states=all", "--jobs=1,2"]
    assert "--completion" in slurm.sacct_argv("7", completion=True)
    assert "--completion" not in slurm.sacct_argv("7")
    assert slurm.scontrol_argv("7") == ["scontrol", "--oneliner", "show", "job", "7"]


# --------------------------------------------------------------------------- parsing and states


def test_scheduler_output_parses():
    assert slurm.parse_sbatch("1234\n") == "1234" and slurm.parse_sbatch("77;cluster-b\n") == "77"
    assert slurm.parse_sbatch("sbatch: error\n") is None
    queue = slurm.parse_squeue("12|PENDING|Resources|gpu|2|\n13|RUNNING|None|gpu|1|node07\n")
    assert (queue["12"].state, queue["12"].reason, queue["12"].nodes, queue["12"].node_list) == (
        "PENDING", "Resources", 2, None,
    )  # fmt: skip
    assert queue["13"].active and queue["13"].node_list == "node07"
    acct = slurm.parse_sacct(
        "14|FAILED|1:0|0:9|gpu|2|node[01-02]\n14.batch|FAILED|1:0||||node01\n14.0|OUT_OF_MEMORY|0:125||||node[01-02]\n"
        "15|CANCELLED by 1000|0:15|0:0|gpu|1|node03\n"
    )
    assert (
        acct["14"].steps == {"14.batch": "FAILED", "14.0": "OUT_OF_MEMORY"} and acct["14"].exit_code == "1:0"
    )
    assert acct["15"].state == "CANCELLED" and not acct["15"].active
    ctl = slurm.parse_scontrol(
        "JobId=16 JobName=nexa-r JobState=TIMEOUT Reason=TimeLimit ExitCode=0:15 Partition=debug "
        "NodeList=nexa[1-2] NumNodes=2 DerivedExitCode=0:0\n"
    )
    assert (ctl["16"].state, ctl["16"].reason, ctl["16"].node_list, ctl["16"].nodes) == (
        "TIMEOUT",
        "TimeLimit",
        "nexa[1-2]",
        2,
    )
    assert slurm.exit_status("137:0") == (137, 0) and slurm.exit_status("0:9") == (0, 9)


@pytest.mark.parametrize(
    "info, log, stopped, state, reason",
    [
        (JobInfo("1", "PENDING", "Priority"), "", False, RunState.QUEUED, "Slurm job 1 pending (Priority)"),
        (JobInfo("1", "COMPLETING"), "", False, RunState.RUNNING, None),
        (JobInfo("1", "COMPLETED", exit_code="0:0"), "", False, RunState.SUCCEEDED, None),
        (JobInfo("1", "TIMEOUT", exit_code="0:15"), "", False, RunState.FAILED, "timeout: Slurm ended job 1 at its time limit (00:05:00)"),
        (JobInfo("1", "OUT_OF_MEMORY", exit_code="0:125"), "", False, RunState.FAILED, "out of memory: Slurm killed job 1"),
        (JobInfo("1", "FAILED", exit_code="1:0", steps={"1.0": "OUT_OF_MEMORY"}), "", False, RunState.FAILED, "out of memory"),
        (JobInfo("1", "FAILED", exit_code="1:0", derived_exit_code="0:125"), "", False, RunState.FAILED, "out of memory"),
        (JobInfo("1", "FAILED", exit_code="137:0"),
         "slurmstepd-n1: error: StepId=1.0 exceeded memory limit (118673408 > 104857600), being killed\n",
         False, RunState.FAILED, "out of memory"),
        (JobInfo("1", "NODE_FAIL", node_list="n[1-2]"), "", False, RunState.FAILED, "node failure: Slurm lost a node of job 1 (n[1-2])"),
        (JobInfo("1", "PREEMPTED"), "", False, RunState.FAILED, "preempted"),
        (JobInfo("1", "CANCELLED", exit_code="0:15"), "", False, RunState.STOPPED, "cancelled outside NEXA"),
        (JobInfo("1", "CANCELLED", exit_code="0:15"), "", True, RunState.STOPPED, "stopped on request"),
        (JobInfo("1", "FAILED", exit_code="143:0"), "", True, RunState.STOPPED, "stopped on request"),
        (JobInfo("1", "FAILED", exit_code="1:0"), "nexa train: failed (rank 1): ValueError: bad label 'X'\n",
         False, RunState.FAILED, "Slurm job 1 failed: rank 1: exit code 1: nexa train: failed (rank 1): ValueError"),
        (JobInfo("1", "BOOT_FAIL"), "", False, RunState.FAILED, "Slurm job 1 ended BOOT_FAIL"),
    ],
)  # fmt: skip
def test_scheduler_states_map_to_run_states_and_reasons(info, log, stopped, state, reason):
    got, why, _ = slurm.outcome(info, _request(), stop_requested=stopped, log=log)
    assert got is state
    assert why == reason if reason is None else why.startswith(reason), why


def test_a_killed_rank_without_slurms_word_is_not_called_out_of_memory():
    """A SIGKILL alone (exit 137, 0:9) is not Slurm saying memory: only its state, 0:125 or slurmstepd."""
    info = JobInfo("1", "FAILED", exit_code="137:0", derived_exit_code="0:9")
    assert slurm.memory_evidence(info, "srun: error: n1: task 0: Killed\n") is None


def test_a_signal_delivered_twice_at_once_is_one_stop_request_and_a_later_one_ends_the_process():
    """At its time limit Slurm signals a rank twice (slurmstepd, and srun forwarding): both are one
    request to checkpoint and stop; a signal after DUPLICATE_SIGNAL_S still ends the process."""
    code = (
        "import os, signal, time, types\n"
        "from nexa_core.training_run import DUPLICATE_SIGNAL_S, _stop_on_signals\n"
        "trainer = types.SimpleNamespace(stop_requested=False)\n"
        "_stop_on_signals(trainer)\n"
        "os.kill(os.getpid(), signal.SIGTERM); time.sleep(0.05); os.kill(os.getpid(), signal.SIGTERM)\n"
        "print('alive', trainer.stop_requested, flush=True)\n"
        "time.sleep(DUPLICATE_SIGNAL_S + 0.5); os.kill(os.getpid(), signal.SIGTERM); time.sleep(5)\n"
        "print('survived', flush=True)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["alive", "True"] and done.returncode == -15, done.stderr[-2000:]


def test_runs_table_and_summary_show_the_job_id_partition_and_nodes(nexa_home):
    from nexa_core import run_history, runs

    store = RunStore()
    store.create_run("s", name="s", spec={}, run_dir="", kind="slurm", state=RunState.SUCCEEDED)
    store.record_job("s", scheduler="slurm", job_id="42", partition="gpu", nodes=2, node_list="gpu[01-02]",
                     sched_state="COMPLETED")  # fmt: skip
    store.create_run("l", name="l", spec={}, run_dir="", state=RunState.SUCCEEDED)
    summaries = [runs.summary(store, r) for r in store.list_runs()]
    assert [s["slurm"] and s["slurm"]["job_id"] for s in summaries] == [None, "42"]
    assert [row["where"] for row in run_history.history_rows(summaries)] == [
        "this machine", "Slurm 42 · gpu · 2 node(s) (gpu[01-02])",
    ]  # fmt: skip


def test_cli_refuses_a_bad_slurm_launch_in_one_go(nexa_home, capsys):
    code = main(
        ["launch", "--backend", "slurm", "--time", "1h", "--mode", "deepspeed", "--gpus-per-node", "2"]
    )
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "partition (--partition): required" in err and "time (--time)" in err and "mode (--mode)" in err
    assert (
        main(["launch", "--backend", "pbs"]) == 2 and "choose one of local, slurm" in capsys.readouterr().err
    )
    assert main(["presets", "save", "p", "--backend", "slurm"]) == 2  # presets keep local settings only
    assert "backend (--backend): presets keep" in capsys.readouterr().err
    assert RunStore().list_runs() == []


def test_sbatch_missing_or_refusing_leaves_no_run_behind(nexa_home, tmp_path, monkeypatch):
    spec = RunSpec(TrainConfig(**FAST))
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch on PATH
    with pytest.raises(ConfigError, match="sbatch is not installed here"):
        slurm_jobs.submit(spec, _request())
    (tmp_path / "sbatch").write_text(
        "#!/bin/sh\necho 'sbatch: error: invalid partition specified: debug' >&2\nexit 1\n"
    )
    (tmp_path / "sbatch").chmod(0o755)
    with pytest.raises(ConfigError, match="sbatch refused the job: sbatch: error: invalid partition"):
        slurm_jobs.submit(spec, _request())
    assert RunStore().list_runs() == [] and not list((nexa_home / "runs").iterdir())


# ------------------------------------------------------------------- a real scheduler (slurmctld)


def _nexa(home: Path, *args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "nexa_core", *args], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "NEXA_HOME": str(home)})  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def _wait_for_step(run_id: str, step: int, timeout: float = 300) -> dict:
    """Until the run has logged ``step``, folding the ranks' relay files in as a panel would."""
    store, deadline = RunStore(), time.monotonic() + timeout
    while time.monotonic() < deadline:
        runner.refresh(store, poll_scheduler=True)
        run = store.get_run(run_id)
        if (run.get("last_step") or 0) >= step:
            return run
        assert run["state"] in ("queued", "running"), (run["reason"], runner.logs(run_id)[-3000:])
        time.sleep(1)
    raise TimeoutError(f"run {run_id} did not reach step {step} in {timeout} s")


def _checkpoints(run: dict) -> list[int]:
    return sorted(
        int(p.parent.name.split("-")[1]) for p in Path(run["run_dir"]).glob("checkpoints/step-*/COMPLETE")
    )


@pytest.mark.slow
@pytest.mark.slurm
def test_two_rank_zero2_job_from_nexa_launch_completes_and_its_loss_reaches_the_store(
    slurm_cluster, nexa_home
):
    out = _nexa(nexa_home, "launch", "--backend", "slurm", "--partition", "debug", "--nodes", "2",
                "--time", "00:05:00", "--max-steps", "3", *FAST_FLAGS, "--json")  # fmt: skip
    run_id = json.loads(out.strip().splitlines()[-1])["run_id"]
    run = runner.wait(run_id, timeout_s=300)
    log = runner.logs(run_id)
    assert run["state"] == "succeeded" and run["exit_code"] == 0, (run["reason"], log[-3000:])
    store = RunStore()
    assert [s for s, _, _ in store.metrics(run_id, ["loss"])["loss"]] == [1, 2, 3]  # what Monitor draws
    assert {row["rank"] for row in store.memory(run_id)} == {0, 1}  # both ranks' samples, relayed
    assert "DeepSpeed ZeRO stage 2" in " ".join(e["message"] for e in store.events(run_id))
    job = store.job(run_id)
    assert (job["scheduler"], job["partition"], job["nodes"], job["sched_state"]) == (
        "slurm",
        "debug",
        2,
        "COMPLETED",
    )
    assert len(job["node_list"].split(",")) == 2 or "[" in job["node_list"]  # two logical nodes
    assert "rank 1 of 2 started" in log and f"=== slurm job {job['job_id']} on" in log
    assert job["request"]["mem_mb"] >= slurm.MIN_MEMORY_MB  # from the planner's host estimate
    assert f"#SBATCH --mem={job['request']['mem_mb']}M" in (Path(run["run_dir"]) / "job.sbatch").read_text()
    listed = _nexa(nexa_home, "runs", "list")
    assert f"[Slurm {job['job_id']} · debug · 2 node(s)" in listed
    # the completion log, read by the real sacct, agrees (the source after MinJobAge on a real cluster)
    done = subprocess.run(slurm.sacct_argv(job["job_id"], completion=True), capture_output=True, text=True)
    assert slurm.parse_sacct(done.stdout)[job["job_id"]].state == "COMPLETED"


@pytest.mark.slow
@pytest.mark.slurm
def test_restarted_panel_reattaches_stop_scancels_every_rank_and_resume_resubmits(slurm_cluster, nexa_home):
    run_id = slurm_jobs.submit(RunSpec(TrainConfig(**FAST, max_steps=100_000, name="long")), _request())
    before = _wait_for_step(run_id, 2)
    first_job = RunStore().job(run_id)["job_id"]
    # a panel restarted from nothing: a new process, a new store handle, one refresh
    probe = ("import json; from nexa_core import runner; from nexa_core.runstore import RunStore; s = RunStore(); "
             f"runner.refresh(s, poll_scheduler=True); r = s.get_run({run_id!r}); j = s.job({run_id!r}); "
             "print(json.dumps([r['state'], r['last_step'], j['job_id'], j['sched_state']]))")  # fmt: skip
    fresh = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    state, step, job_id, sched = json.loads(fresh.stdout.strip().splitlines()[-1])
    assert (state, job_id, sched) == ("running", first_job, "RUNNING") and step >= before["last_step"]
    assert processes_carrying(run_id)  # the rank runs under slurmstepd on this machine

    stopped = _nexa(nexa_home, "runs", "stop", run_id, "--grace", "60")  # scancel: TERM first
    assert stopped.strip() == "stopped"
    run = RunStore().get_run(run_id)
    assert run["stopped_by"] == "user" and f"scancel of Slurm job {first_job}" in run["reason"]
    assert not processes_carrying(run_id)
    assert not slurm_jobs.query([first_job])[first_job].active
    stopped_at = run["last_step"]
    assert _checkpoints(run)[-1] == stopped_at  # the rank got TERM once and checkpointed before exiting

    runner.resume(run_id)
    resumed = _wait_for_step(run_id, stopped_at + 2)
    second_job = RunStore().job(run_id)["job_id"]
    assert second_job != first_job and resumed["state"] == "running"
    assert f"resumed from step-{stopped_at:07d}" in " ".join(e["message"] for e in RunStore().events(run_id))
    assert runner.stop(run_id, grace_s=60) == "stopped" and not processes_carrying(run_id)


@pytest.mark.slow
@pytest.mark.slurm
def test_time_limit_and_memory_kill_are_reported_from_the_scheduler(slurm_cluster, nexa_home):
    """Both jobs at once, one per logical node: the smallest time limit (1 minute), and 400 MB for a
    rank that needs about 1 GB."""
    long = dict(FAST, max_steps=100_000)
    timed_id = slurm_jobs.submit(RunSpec(TrainConfig(**long, name="timeout")), _request(time="00:01:00"))
    oom_id = slurm_jobs.submit(RunSpec(TrainConfig(**long, name="oom")), _request(mem_mb="400M"))
    store = RunStore()

    oom = runner.wait(oom_id, timeout_s=300)
    job = store.job(oom_id)
    assert oom["state"] == "failed" and oom["reason"].startswith(
        f"out of memory: Slurm killed job {job['job_id']}"
    )
    # the scheduler's own word: its state or exit status, or slurmstepd's message; never NEXA's guess
    assert any(word in oom["reason"] for word in ("OUT_OF_MEMORY", "0:125", "slurmstepd")), oom["reason"]
    assert job["sched_state"] in ("FAILED", "OUT_OF_MEMORY") and not processes_carrying(oom_id)

    timed = runner.wait(timed_id, timeout_s=300)
    assert timed["state"] == "failed", (timed["reason"], runner.logs(timed_id)[-3000:])
    assert timed["reason"].startswith("timeout: Slurm ended job") and "(00:01:00)" in timed["reason"]
    assert store.job(timed_id)["sched_state"] == "TIMEOUT" and not processes_carrying(timed_id)
    assert _checkpoints(timed)  # the time limit's TERM reached the rank, which saved before it ended
