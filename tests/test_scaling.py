"""Scale-out: hosts, hostfile, include/exclude, multi-machine Accelerate config and per-node commands,
checked with the launchers' own parsers; then real multi-rank runs on this CPU machine (gloo): a
2-rank ZeRO-3 run through the DeepSpeed launcher, a two-"node" torchrun on loopback, and a rank
killed mid-run. The real runs use a tiny random-initialised BERT and two steps."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import psutil
import pytest

from nexa_core import runner, scaling
from nexa_core.errors import ConfigError
from nexa_core.exits import classify_exit
from nexa_core.launch import LaunchMode, RunSpec, build_launch
from nexa_core.runstore import RunState, RunStore
from nexa_core.supervise import shm_buffers
from nexa_core.train_config import TrainConfig
from tests.run_helpers import processes_carrying, wait_for_step

FAST = dict(batch_size=4, seq_len=32, eval=False)
HOSTS = ["worker-0 slots=2", "10.0.0.7 slots=4", "gpu-node.cluster.local slots=1"]


def _spec(mode="deepspeed", nproc=1, **node):
    return RunSpec(TrainConfig(**FAST), mode, nproc, **node)


@pytest.fixture
def tiny_bert(tmp_path):
    """A one-layer BERT config (random weights; the packaged MiniLM tokenizer fits its vocabulary)."""
    folder = tmp_path / "tiny-bert"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 1,
                                                    "num_attention_heads": 2, "intermediate_size": 64}))  # fmt: skip
    return str(folder)


# ------------------------------------------------------------------ hosts and validation


def test_hosts_parse_and_every_bad_line_is_reported():
    assert scaling.parse_hosts("# cluster\nworker-0 slots=2\n\n10.0.0.7 slots=4\nsolo\n") == [
        scaling.Host("worker-0", 2), scaling.Host("10.0.0.7", 4), scaling.Host("solo", 1),
    ]  # fmt: skip
    with pytest.raises(ConfigError) as err:
        scaling.parse_hosts("-oProxyCommand=x slots=1\nok slots=0\nok2 slots=65\nfe80::1 slots=1\na b c\n")
    problems = err.value.problems
    assert len(problems) == 5 and all(p.startswith("hosts (--host)") for p in problems)
    assert "RFC 1123" in problems[0] and "from 1 to 64" in problems[1] and "line 5" in problems[4]
    assert "IPv4" in problems[3]  # ':' would clash with the host:slots syntax


def test_run_spec_node_validation_names_each_field():
    with pytest.raises(ConfigError) as err:
        _spec("torchrun", nproc=2, nodes=2, node_rank=2, master_addr="-bad")
    text = str(err.value)
    assert "node_rank (--node-rank)" in text and "master_addr (--master-addr)" in text
    assert "master_port (--master-port): required" in text
    with pytest.raises(ConfigError, match="mode .*python runs one process"):
        _spec("python", nodes=2, master_addr="10.0.0.1", master_port=29500)
    with pytest.raises(ConfigError, match="give one or the other"):
        _spec(
            "deepspeed", hosts=HOSTS[:2], nodes=2, master_port=29500, include="worker-0", exclude="10.0.0.7"
        )
    with pytest.raises(ConfigError, match="only for the deepspeed launcher"):
        _spec("torchrun", hosts=HOSTS[:2], nodes=2, master_port=29500, include="worker-0")
    with pytest.raises(ConfigError, match=r"nodes \(--nodes\): 3 host\(s\) take part"):
        _spec("deepspeed", hosts=HOSTS, nodes=2, master_port=29500)
    with pytest.raises(ConfigError, match="has slots 0 to 1"):
        _spec("deepspeed", hosts=HOSTS, nodes=1, master_port=29500, include="worker-0:5")
    with pytest.raises(ConfigError, match=r"nproc \(--nproc\): 2 ranks per node"):
        _spec("torchrun", nproc=2, hosts=HOSTS, nodes=3, master_port=29500)
    with pytest.raises(ConfigError, match="accelerate without DeepSpeed"):
        RunSpec(TrainConfig(**FAST, deepspeed="off"), "accelerate", 2)


# ----------------------------------------------- generated files, read by the launchers' parsers


def test_hostfile_reads_back_through_deepspeeds_parser(tmp_path):
    from deepspeed.launcher.runner import fetch_hostfile

    hosts = scaling.parse_hosts("\n".join(HOSTS))
    (tmp_path / "hostfile").write_text(scaling.hostfile_text(hosts))
    assert dict(fetch_hostfile(str(tmp_path / "hostfile"))) == {h.name: h.slots for h in hosts}


@pytest.mark.parametrize(
    "include,exclude",
    [
        ("", ""),
        ("worker-0", ""),
        ("worker-0:1@10.0.0.7:0,2", ""),
        ("", "10.0.0.7"),
        ("", "worker-0:0@10.0.0.7:3"),
    ],
)
def test_include_exclude_match_deepspeeds_filter(include, exclude):
    from deepspeed.launcher.runner import parse_inclusion_exclusion

    hosts = scaling.parse_hosts("\n".join(HOSTS))
    ours, problems = scaling.active_resources(hosts, include, exclude)
    theirs = parse_inclusion_exclusion({h.name: h.slots for h in hosts}, include, exclude)
    assert problems == [] and dict(ours) == {k: list(v) for k, v in theirs.items()}


@pytest.mark.parametrize("include,exclude", [("nohost", ""), ("worker-0:2", ""), ("worker-0", "worker-0")])
def test_filters_deepspeed_refuses_are_refused_with_a_field(include, exclude):
    from deepspeed.launcher.runner import parse_inclusion_exclusion

    hosts = scaling.parse_hosts("\n".join(HOSTS))
    with pytest.raises(ValueError):
        parse_inclusion_exclusion({h.name: h.slots for h in hosts}, include, exclude)
    _, problems = scaling.active_resources(hosts, include, exclude)
    assert problems and problems[0].startswith(
        ("include (--include)", "exclude (--exclude)", "include (--include) /")
    )


@pytest.mark.parametrize("ssh", [False, True])
def test_multi_machine_accelerate_config_loads_in_accelerate(tmp_path, ssh):
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file

    spec = _spec(
        "accelerate", nproc=2, hosts=HOSTS[:2], nodes=2, node_rank=0, master_port=29610, ssh_launcher=ssh
    )
    scaling.write_launch_files(spec, tmp_path, has_gpu=False)
    config = load_config_from_file(str(tmp_path / "accelerate_config.yaml"))
    assert isinstance(config, ClusterConfig)
    assert (
        config.distributed_type.value == "DEEPSPEED" and config.num_machines == 2 and config.machine_rank == 0
    )
    assert (
        config.num_processes == 4
        and config.main_process_ip == "worker-0"
        and config.main_process_port == 29610
    )
    ds = config.deepspeed_config
    assert ds["deepspeed_multinode_launcher"] == ("pdsh" if ssh else "standard")
    assert ds["deepspeed_config_file"] == str(tmp_path / "deepspeed_config.json")
    assert ("deepspeed_hostfile" in ds) is ssh
    assert (tmp_path / "hostfile").read_text() == "worker-0 slots=2\n10.0.0.7 slots=4\n"
    assert RunSpec.from_dict(spec.train, json.loads((tmp_path / "spec.json").read_text())) == spec  # resume


def test_accelerate_distributed_type_follows_deepspeed_and_gpus(tmp_path):
    off = RunSpec(TrainConfig(**FAST, deepspeed="off"), "accelerate", 2, gpus=[0, 1])
    template = {"deepspeed_config": {"zero3_init_flag": False}}
    config = scaling.accelerate_config(off, tmp_path, template, has_gpu=True)
    assert config["distributed_type"] == "MULTI_GPU" and "deepspeed_config" not in config
    argv, env = build_launch(off, "r", tmp_path, "/py")
    assert "--use_deepspeed" not in argv and "USE_DEEPSPEED" not in env
    one_cpu = RunSpec(TrainConfig(**FAST, deepspeed="off"), "accelerate", 1)
    assert (
        scaling.accelerate_config(one_cpu, tmp_path, template, has_gpu=False)["distributed_type"]
        == "MULTI_CPU"
    )


def test_each_node_command_parses_in_its_launcher(tmp_path):
    """The argv after `python -m <launcher>` is read by that launcher's own argument parser."""
    from accelerate.commands.launch import launch_command_parser
    from deepspeed.launcher.runner import parse_args as deepspeed_args
    from torch.distributed.run import get_args_parser

    torchrun = scaling.node_commands(
        _spec("torchrun", nodes=2, master_addr="10.0.0.1", master_port=29620), "r", tmp_path
    )
    assert [(c.node_rank, c.by_panel) for c in torchrun] == [(0, True), (1, False)]
    for c in torchrun:
        args = get_args_parser().parse_args(c.argv[3:])
        assert (args.nnodes, args.node_rank, args.master_addr, args.master_port) == (
            "2",
            c.node_rank,
            "10.0.0.1",
            29620,
        )
        assert args.training_script == "nexa_core" and args.module

    acc = scaling.node_commands(
        _spec("accelerate", hosts=HOSTS[:2], nodes=2, master_port=29621), "r", tmp_path
    )
    args = launch_command_parser().parse_args(acc[1].argv[3:])
    assert (args.num_machines, args.machine_rank, args.main_process_ip) == (2, 1, "worker-0")
    assert args.config_file == str(tmp_path / "accelerate_config.yaml") and acc[1].host == "10.0.0.7"

    nossh = scaling.node_commands(
        _spec("deepspeed", nproc=2, hosts=HOSTS[:2], nodes=2, master_port=29622), "r", tmp_path
    )
    args = deepspeed_args(nossh[1].argv[3:])
    assert args.hostfile == str(tmp_path / "hostfile") and args.no_ssh and args.node_rank == 1
    assert (args.num_nodes, args.num_gpus, args.master_addr, args.module, args.no_local_rank) == (
        2,
        2,
        "worker-0",
        True,
        True,
    )

    ssh = scaling.node_commands(
        _spec("deepspeed", hosts=HOSTS, nodes=2, master_port=29623, exclude="gpu-node.cluster.local", ssh_launcher=True),
        "r", tmp_path,
    )  # fmt: skip
    assert len(ssh) == 1 and ssh[0].by_panel  # the launcher starts the other node over ssh/pdsh
    args = deepspeed_args(ssh[0].argv[3:])
    assert args.exclude == "gpu-node.cluster.local" and not args.no_ssh and args.num_nodes == -1
    assert "NEXA_RUN_ID=r" in ssh[0].text() and ssh[0].text().endswith("--json")


def test_global_batch_warning():
    spec = _spec("torchrun", nproc=2, nodes=2, master_addr="10.0.0.1", master_port=29630)
    assert spec.world_size == 4 and scaling.global_batch(4, 1, 4) == 16
    assert scaling.global_batch_warning(spec, 16) is None and scaling.global_batch_warning(spec, None) is None
    warning = scaling.global_batch_warning(spec, 32)
    assert "Global batch is 16" in warning and "4 rank(s)" in warning and "32" in warning
    filtered = _spec("deepspeed", hosts=HOSTS, nodes=2, master_port=29631, include="worker-0@10.0.0.7:0,1")
    assert filtered.world_size == 4  # 2 slots on each included host


def test_planner_per_gpu_figures_follow_nodes():
    from nexa_core.planner import PlanConfig, make_plan

    def zero3_per_gpu(nodes):
        plan = make_plan(PlanConfig(params=10**9, gpus=8, nodes=nodes, gpu_memory_gb=80, host_memory_gb=512))
        (e,) = [e for e in plan.estimates if e.layout.zero_stage == 3 and not e.layout.offload_optimizer]
        return e.per_gpu.total_bytes

    assert zero3_per_gpu(2) < zero3_per_gpu(1)  # ZeRO-3 shards over 16 GPUs instead of 8


def test_failure_summary_names_the_rank_that_failed_first():
    log = (
        "nexa train: failed (rank 1): ValueError: bad label 'X'\n"
        "nexa train: failed (rank 0): RuntimeError: Connection closed by peer\n"
        "torch.distributed.elastic.multiprocessing.errors.ChildFailedError:\n"
        "============================================================\nFailures:\n[1]:\n  rank      : 0 (local_rank: 0)\n"
        "  exitcode  : -9 (pid: 11)\n------------------------------------------------------------\n"
        "Root Cause (first observed failure):\n[0]:\n  time      : 2025-01-01_00:00:00\n  host      : node-b\n"
        "  rank      : 1 (local_rank: 0)\n  exitcode  : 1 (pid: 12)\n  error_file: <N/A>\n"
        "============================================================\n"
    )
    state, reason = classify_exit(1, log)
    assert state is RunState.FAILED
    assert reason == "rank 1 on node-b: exit code 1: nexa train: failed (rank 1): ValueError: bad label 'X'"
    killed = log.replace("exitcode  : 1 (pid: 12)", "exitcode  : -9 (pid: 12)")
    assert classify_exit(1, killed)[1].startswith("rank 1 on node-b: killed (SIGKILL)")


def test_a_sigkilled_rank_in_the_root_causes_second_is_the_cause_not_its_echo():
    """torchrun stamps ranks without an error file with the second its agent saw them end; a rank
    killed by SIGKILL and the rank that lost its connection to it then tie, and torchrun names the
    lower rank (the report below is one a run printed here, trimmed)."""

    def report(other_code: str) -> str:
        return (
            "nexa train: failed (rank 0): RuntimeError: [pair.cc:553] Connection closed by peer [127.0.0.1]:51865.\n"
            "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: \n"
            "============================================================\nnexa_core FAILED\n"
            "------------------------------------------------------------\nFailures:\n[1]:\n"
            "  time      : 2026-12-04_15:59:52\n  host      : localhost\n  rank      : 1 (local_rank: 1)\n"
            f"  exitcode  : {other_code} (pid: 22018)\n  error_file: <N/A>\n"
            "------------------------------------------------------------\n"
            "Root Cause (first observed failure):\n[0]:\n  time      : 2026-12-04_15:59:52\n  host      : localhost\n"
            "  rank      : 0 (local_rank: 0)\n  exitcode  : 1 (pid: 22017) \n  error_file: <N/A>\n"
            "============================================================\n"
        )

    reason = classify_exit(1, report("-9"))[1]
    assert reason.startswith("rank 1 on localhost: killed (SIGKILL) without a stop request"), reason
    # the agent ends the other ranks with SIGTERM: a rank that raised stays the cause
    reason = classify_exit(1, report("-15"))[1]
    assert reason.startswith("rank 0 on localhost: exit code 1: nexa train: failed (rank 0)"), reason
    # a SIGKILL in a later second is not part of the tie
    later = report("-9").replace(
        "time      : 2026-12-04_15:59:52\n  host      : localhost\n  rank      : 1",
        "time      : 2026-12-04_15:59:53\n  host      : localhost\n  rank      : 1",
    )
    assert classify_exit(1, later)[1].startswith("rank 0 on localhost: exit code 1"), later


def test_a_runs_cpu_all_reduce_buffers_are_found_by_its_rendezvous_and_no_others(tmp_path):
    names = ["deepspeed_allreduce_buffer_0_127.0.0.1_40001_0", "deepspeed_allreduce_buffer_0_127.0.0.1_40001_1",
             "deepspeed_allreduce_buffer_0_127.0.0.1_400011_0",  # another run's port
             "deepspeed_allreduce_buffer_1000_127.0.0.1_40001_0",  # another user's
             "deepspeed_allreduce_buffer_0_10.0.0.1_40001_0"]  # fmt: skip
    for name in names:
        (tmp_path / name).write_bytes(b"")
    command = [
        "python",
        "-m",
        "deepspeed.launcher.runner",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        "40001",
    ]
    assert [p.name for p in shm_buffers(command, 0, tmp_path)] == names[:2]
    assert shm_buffers(["python", "-m", "nexa_core", "train"], 0, tmp_path) == []  # no rendezvous: none


def test_the_deepspeed_launcher_s_killed_rank_is_the_one_that_never_said_how_it_ended():
    """That launcher names no rank: its last line carries the first failed rank's exit status (with
    the last rank's command, whichever failed), and the survivors' errors are only the echo."""
    started = "".join(f"nexa train: rank {r} of 3 started on node-a (pid {100 + r})\n" for r in range(3))
    echo = (
        "nexa train: failed (rank 0): RuntimeError: Connection closed by peer\n"
        "nexa train: stopped (rank 2): stopped at step 3 of 10; resume with: nexa train --resume <run id>\n"
    )
    last = (
        "[launch.py:259:sigkill_handler] ['python', '-m', 'nexa_core', 'train'] exits with return code = -9\n"
    )
    state, reason = classify_exit(247, started + echo + last)  # sys.exit(-9) is status 247
    assert state is RunState.FAILED
    assert reason.startswith("rank 1 on node-a: killed (SIGKILL) without a stop request"), reason
    # two silent ranks: the log cannot tell which was killed, so none is named (never the echo)
    state, reason = classify_exit(247, started + echo.splitlines()[0] + "\n" + last)
    assert reason.startswith("killed (SIGKILL) without a stop request"), reason
    # a rank that raised says so itself, before the others' echo
    raised = (
        started + "nexa train: failed (rank 2): ValueError: bad label 'X'\n" + echo.splitlines()[0] + "\n"
    )
    reason = classify_exit(1, raised + last.replace("-9", "1"))[1]
    assert reason == "rank 2: exit code 1: nexa train: failed (rank 2): ValueError: bad label 'X'", reason


def test_the_deepspeed_launcher_naming_the_echo_still_blames_the_silent_rank():
    """The launcher polls its ranks from a set: when the killed rank and the one that lost its
    connection have both ended, it may report the echo's status (seen in a clean-clone run: rank 1
    SIGKILLed, "exits with return code = 1" and rank 0's connection error)."""
    log = (
        "nexa train: rank 0 of 2 started on node-a (pid 100)\n"
        "nexa train: rank 1 of 2 started on node-a (pid 101)\n"
        "nexa train: failed (rank 0): RuntimeError: [/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/"
        "pair.cc:537] Read error [127.0.0.1]:28068: Connection reset by peer. This is typically caused by a"
        " remote worker hanging or bugs in the application.\n"
        "[launch.py:259:sigkill_handler] ['python', '-m', 'nexa_core', 'train'] exits with return code = 1\n"
    )
    state, reason = classify_exit(1, log)
    assert state is RunState.FAILED
    assert reason.startswith("rank 1 on node-a: killed by a signal without a stop request"), reason
    # a failure of its own (not the echo) is still the cause, silent rank or not
    own = log.replace("RuntimeError: [/__w", "ValueError: bad label 'X' [/__w").replace(
        "Read error [127.0.0.1]:28068: Connection reset by peer", "in the data"
    )
    assert classify_exit(1, own)[1].startswith("rank 0: exit code 1: nexa train: failed (rank 0): ValueError")


def test_monitor_draws_one_host_memory_line_per_host_and_rank():
    from nexa_core import charts, monitor

    rows = [{"t": 100.0 + i, "rank": rank, "host": host, "rss_bytes": 2**30, "gpu_index": None,
             "gpu_allocated_bytes": None, "nvml_used_bytes": None}
            for i in range(3) for host, rank in (("node-a", 0), ("node-a", 1), ("node-b", 2))]  # fmt: skip
    series = {"memory": monitor.memory_series(rows)}
    names = [t.name for t in charts.figures(series, None)["host_memory"].data]
    assert names == ["node-a rank 0 RSS", "node-a rank 1 RSS", "node-b rank 2 RSS", "all ranks"]


# --------------------------------------------------------------------------- real processes


def test_two_rank_zero3_through_the_deepspeed_launcher_completes_and_exports(nexa_home, tiny_bert, tmp_path):
    from transformers import AutoModelForTokenClassification

    from nexa_core.export import export_checkpoint

    train = TrainConfig(model=tiny_bert, random_init=True, max_steps=2, deepspeed="on", zero_stage=3,
                        offload_optimizer="none", offload_param="none", **FAST)  # fmt: skip
    run = runner.wait(runner.launch(RunSpec(train, LaunchMode.DEEPSPEED, nproc=2)), timeout_s=600)
    assert run["state"] == "succeeded", (run["reason"], runner.logs(run["id"])[-3000:])
    assert "deepspeed.launcher.runner" in " ".join(run["command"])
    assert not shm_buffers(run["command"], os.getuid())  # DeepSpeed's CPU all-reduce files, removed
    store = RunStore()
    assert [s for s, _, _ in store.metrics(run["id"], ["loss"])["loss"]] == [1, 2]  # rank 0 alone writes
    assert {row["rank"] for row in store.memory(run["id"])} == {0, 1}
    events = " ".join(e["message"] for e in store.events(run["id"]))
    assert "DeepSpeed ZeRO stage 3" in events
    AutoModelForTokenClassification.from_pretrained(export_checkpoint(run["id"], tmp_path / "export"))


def test_two_nodes_on_loopback_complete(nexa_home, tiny_bert):
    """Node 0 launched by the run manager, node 1 by hand with the command the panel shows for it."""
    from nexa_core.device_manager import _free_port

    train = TrainConfig(model=tiny_bert, random_init=True, max_steps=2, deepspeed="off", **FAST)
    spec = RunSpec(train, LaunchMode.TORCHRUN, nproc=1, nodes=2, node_rank=0, master_addr="127.0.0.1",
                   master_port=_free_port())  # fmt: skip
    run_id = runner.launch(spec)
    run_dir = Path(RunStore().get_run(run_id)["run_dir"])
    node1 = scaling.node_commands(spec, run_id, run_dir)[1]
    assert not node1.by_panel and "--node_rank 1" in node1.text()
    with (run_dir / "node1.log").open("wb") as log:
        other = subprocess.run(node1.argv, env={**os.environ, **node1.env}, stdout=log, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, timeout=600)  # fmt: skip
    run = runner.wait(run_id, timeout_s=300)
    assert other.returncode == 0 and run["state"] == "succeeded", (
        run["reason"], (run_dir / "node1.log").read_text()[-2000:], runner.logs(run_id)[-2000:],
    )  # fmt: skip
    assert {row["rank"] for row in RunStore().memory(run_id)} == {0, 1}
    assert not processes_carrying(run_id)


@pytest.mark.parametrize(
    "mode, deepspeed",
    [(LaunchMode.TORCHRUN, "off"), (LaunchMode.DEEPSPEED, "on")],
    ids=["torchrun", "deepspeed"],
)
def test_killing_one_rank_fails_the_run_with_that_ranks_summary_and_leaves_nothing(
    nexa_home, tiny_bert, mode, deepspeed
):
    train = TrainConfig(model=tiny_bert, random_init=True, max_steps=10_000, deepspeed=deepspeed, **FAST)
    run_id = runner.launch(RunSpec(train, mode, nproc=2))
    store = RunStore()
    wait_for_step(run_id, 1)
    procs = runner.run_processes(store.get_run(run_id))
    (rank1,) = [p for p in procs if p.environ().get("RANK") == "1" and "train" in p.cmdline()]
    rank1.send_signal(signal.SIGKILL)
    run = runner.wait(run_id, timeout_s=120)
    assert run["state"] == "failed"
    # the launcher records the killed rank's status (SIGKILL) unless it polled the echo first
    killed = "killed (SIGKILL)" in run["reason"] or "killed by a signal" in run["reason"]
    assert run["reason"].startswith("rank 1 on ") and killed, run["reason"]
    assert not shm_buffers(run["command"], os.getuid())
    assert not [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not processes_carrying(run_id)
