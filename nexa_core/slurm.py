"""The Slurm backend, pure parts: the job request, the sbatch script, the argv of sbatch / scancel /
squeue / sacct / scontrol, their output parsed, and a job's scheduler state mapped to NEXA's run
states and reasons. Nothing here runs a command; ``slurm_jobs.py`` submits, polls and stops.

How a job runs (docs/SCALING.md, "Slurm"): ``srun`` starts every rank as its own Slurm task (one per
GPU, or ``--nproc`` per CPU node), the way DeepSpeed's own ``--launcher slurm`` does; each rank takes
RANK / LOCAL_RANK / WORLD_SIZE from SLURM_PROCID / SLURM_LOCALID / SLURM_NTASKS and meets the others
at the first node of the allocation. No torchrun agent sits between Slurm and the ranks, so a
Slurm signal (Stop's ``scancel --signal=TERM``, the time limit) reaches each rank exactly once and
the trainer checkpoints before it exits (under torchrun a rank would get it twice: from Slurm,
which signals every process of a step, and again from the agent; the second ends it at once).
"""

from __future__ import annotations

import math
import re
import shlex
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from nexa_core.enums import _Choice
from nexa_core.errors import int_problems, raise_if
from nexa_core.exits import LOG_FILE, classify_exit
from nexa_core.launch import PROJECT_ROOT, LaunchMode, RunSpec, build_launch
from nexa_core.runstore import RunState

SBATCH_FILE = "job.sbatch"
DEFAULT_TIME = "01:00:00"
MAX_NODES = 1024
MEMORY_MARGIN = 0.25  # over the planner's host estimate: allocator slack, the batch shell, page cache
MIN_MEMORY_MB = 1024
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")  # partition, account, QOS
_TIME = re.compile(r"^(?:(\d{1,3})-)?(\d{1,3}):(\d{2}):(\d{2})$")
_MEM = re.compile(r"^(\d+)\s*([KMGT]?)B?$", re.IGNORECASE)
# Slurm's exit status for a task the out-of-memory handler killed: SIG_OOM (253) as "0:125"
# (slurm_protocol_defs.h: "Exit status reported as 0:125 (0x80 is the signal flag and 253 - 128 = 125)").
SLURM_OOM_SIGNAL = 125
# What slurmstepd writes into the job's output when it kills for memory: the accounting sampler
# (JobAcctGatherParams=OverMemoryKill) or the cgroup OOM handler (task/cgroup).
_SLURM_MEMORY_KILL = re.compile(
    r"^slurmstepd\S*: error: (?:.*exceeded memory limit.*|Exceeded (?:job|step) memory limit.*"
    r"|Detected \d+ oom[-_]kill event.*)$|^srun: error: .*: Out Of Memory$",
    re.M,
)


class Backend(_Choice):
    LOCAL = "local"  # this machine: nexa_core/runner.py
    SLURM = "slurm"  # sbatch to a Slurm cluster: nexa_core/slurm_jobs.py


def parse_mem(value: object) -> int | None:
    """Megabytes from sbatch's ``--mem`` syntax (``2048``, ``300M``, ``4G``, ``1T``); None if unreadable."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    match = _MEM.match(str(value).strip()) if isinstance(value, str) else None
    if not match:
        return None
    scale = {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024**2}[match.group(2).upper()]
    return math.ceil(int(match.group(1)) * scale)


def time_seconds(text: str) -> int | None:
    """Seconds of a ``[D-]HH:MM:SS`` time limit, or None when it is not one."""
    match = _TIME.match(text) if isinstance(text, str) else None
    if not match or int(match.group(3)) > 59 or int(match.group(4)) > 59:
        return None
    days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


@dataclass
class SlurmRequest:
    """What a run asks Slurm for: ``nodes`` × (``gpus_per_node`` GPUs, or CPU ranks), ``mem_mb`` per
    node, for at most ``time``, in ``partition`` (and optionally ``account`` / ``qos``)."""

    partition: str = ""
    nodes: int = 1
    gpus_per_node: int = 0  # 0: CPU nodes, RunSpec.nproc ranks on each
    time: str = DEFAULT_TIME  # [D-]HH:MM:SS
    account: str | None = None
    qos: str | None = None
    mem_mb: int | str | None = None  # per node; None: the planner's host estimate plus a margin

    def __post_init__(self) -> None:
        problems = []
        for name, flag in (("partition", "--partition"), ("account", "--account"), ("qos", "--qos")):
            value = getattr(self, name)
            if name != "partition" and value in (None, ""):
                setattr(self, name, None)
                continue
            if value in (None, ""):
                problems.append(
                    f"{name} ({flag}): required: the partition to queue in (`sinfo -s` lists them)"
                )
            elif not isinstance(value, str) or not _NAME.match(value):
                problems.append(
                    f"{name} ({flag}): {value!r} is not a Slurm name (1 to 64 letters, digits, '_', '.', '-'; "
                    f"see `sinfo -s` for partitions, `sacctmgr show assoc user=$USER` for accounts and QOS)"
                )
        problems += int_problems("nodes", self.nodes, 1, MAX_NODES)
        problems += int_problems("gpus_per_node", self.gpus_per_node, 0, 64)
        seconds = time_seconds(self.time)
        if not seconds:
            problems.append(
                f"time (--time): the job's time limit as [D-]HH:MM:SS, e.g. 02:00:00; got {self.time!r}"
            )
        if self.mem_mb is not None:
            mem = parse_mem(self.mem_mb)
            if mem is None or not 1 <= mem <= 64 * 1024**2:
                problems.append(
                    f"mem (--mem): memory per node as sbatch writes it (2048, 300M, 4G), at least 1M; got {self.mem_mb!r}"
                )
            else:
                self.mem_mb = mem
        raise_if(problems)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SlurmRequest:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def ranks_per_node(spec: RunSpec, request: SlurmRequest) -> int:
    """One rank per GPU; on CPU nodes the spec's ``nproc``."""
    return request.gpus_per_node or spec.nproc


def request_problems(spec: RunSpec, request: SlurmRequest | None) -> list[str]:
    """What a RunSpec may not say when Slurm places the ranks (the allocation decides hosts and GPUs).
    ``request`` None: the spec's own part only (the request had problems of its own)."""
    problems = []
    if spec.mode not in (LaunchMode.PYTHON, LaunchMode.TORCHRUN):
        problems.append(
            f"mode (--mode): on Slurm, srun starts every rank (one Slurm task per rank, as deepspeed "
            f"--launcher slurm does), so {spec.mode} is not used; allowed: torchrun (nproc ranks per node), python"
        )
    if spec.gpus:
        problems.append("gpus (--gpus): on Slurm the GPUs come from the allocation; use --gpus-per-node")
    local = [
        name for name in ("hosts", "include", "exclude", "ssh_launcher", "master_addr") if getattr(spec, name)
    ]
    if spec.nodes != 1 or spec.node_rank or local:
        problems.append(
            f"{', '.join(local or ['nodes'])}: Slurm chooses the machines; give --nodes with --backend slurm, "
            "not hosts, filters, a node rank or a master address"
        )
    if request is not None and request.gpus_per_node and spec.nproc not in (1, request.gpus_per_node):
        problems.append(
            f"nproc (--nproc): one rank per GPU on Slurm; {request.gpus_per_node} GPUs per node, got nproc={spec.nproc}"
        )
    return problems


def memory_request_mb(estimate: dict[str, Any] | None, request: SlurmRequest, ranks: int) -> int | None:
    """Memory per node to ask for: the planner's host estimate for one node (times the ranks on a CPU
    node: a CPU-only plan is for one process per node) plus ``MEMORY_MARGIN``, in whole MiB, at least
    ``MIN_MEMORY_MB``. None without an estimate (then the partition's default applies)."""
    host = (estimate or {}).get("host_total_bytes")
    if not host:
        return None
    per_node = host * (1 if request.gpus_per_node else ranks)
    return max(MIN_MEMORY_MB, math.ceil(per_node * (1 + MEMORY_MARGIN) / 2**20))


def build_sbatch(
    spec: RunSpec,
    request: SlurmRequest,
    run_id: str,
    run_dir: Path,
    nexa_home: Path,
    python: str,
) -> str:
    """The batch script of the run (bash; every value shell-quoted). ``python`` is the interpreter of
    the environment the nodes share; ``run_dir`` and ``nexa_home`` must be on a shared file system."""
    from nexa_core.relay import RELAY_DIR, RELAY_ENV

    ranks = ranks_per_node(spec, request)
    train, env = build_launch(
        replace(spec, mode=LaunchMode.PYTHON, nproc=1, master_port=None), run_id, run_dir, python
    )
    # NEXA_HOME as given (not this process's), always in the same place in the script
    env = {"NEXA_HOME": str(nexa_home), **{k: v for k, v in env.items() if k != "NEXA_HOME"}}
    env[RELAY_ENV] = str(run_dir / RELAY_DIR)
    if str(spec.train.deepspeed) == "on":
        env["USE_DEEPSPEED"] = "true"
    q = shlex.quote
    directives = {
        "job-name": f"nexa-{run_id}", "partition": request.partition, "nodes": request.nodes,
        "ntasks-per-node": ranks, "gpus-per-node": request.gpus_per_node or None,
        "mem": f"{request.mem_mb}M" if request.mem_mb else None, "time": request.time,
        "account": request.account, "qos": request.qos, "output": run_dir / LOG_FILE, "open-mode": "append",
        "chdir": PROJECT_ROOT, "export": "ALL",
    }  # fmt: skip
    port = str(spec.master_port) if spec.master_port else "$((20000 + SLURM_JOB_ID % 20000))"
    lines = [
        "#!/bin/bash",
        f"# NEXA run {run_id}: written by nexa_core/slurm.py (build_sbatch), submitted with sbatch --parsable.",
        *(f"#SBATCH --{k}={q(str(v))}" for k, v in directives.items() if v is not None),
        "set -uo pipefail",
        "",
        "# NEXA_HOME and the run folder are on the shared file system; ranks write their metrics to",
        "# relay files there (nexa_core/relay.py), never to runs.sqlite (SQLite's WAL is single-host).",
        *(f"export {k}={q(v)}" for k, v in env.items()),
        f"export PYTHONPATH={q(str(PROJECT_ROOT))}${{PYTHONPATH:+:$PYTHONPATH}}",
        f"export LOCAL_WORLD_SIZE={ranks}",
        "",
        "# Rendezvous: the first node of the allocation (its address as Slurm knows it), a port from the job id.",
        'head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        "MASTER_ADDR=$(scontrol show node \"$head_node\" | sed -n 's/.*NodeAddr=\\([^ ]*\\).*/\\1/p')",
        'export MASTER_ADDR="${MASTER_ADDR:-$head_node}"',
        f"export MASTER_PORT={port}",
        'echo "=== slurm job $SLURM_JOB_ID on $SLURM_JOB_NODELIST: $SLURM_NTASKS rank(s),'
        ' rendezvous $MASTER_ADDR:$MASTER_PORT"',
        "",
        "# At the time limit Slurm signals this shell too: it keeps waiting while the ranks checkpoint.",
        "trap 'echo \"nexa: the batch script got SIGTERM; waiting for the ranks\"' TERM",
        "srun --kill-on-bad-exit=1 bash -c "
        + q('export RANK=$SLURM_PROCID LOCAL_RANK=$SLURM_LOCALID WORLD_SIZE=$SLURM_NTASKS '
            'NODE_RANK=$SLURM_NODEID; exec "$@"')
        + " nexa-rank " + shlex.join(train) + " &",
        "srun_pid=$!",
        "while true; do",
        '  wait "$srun_pid"; status=$?',
        '  kill -0 "$srun_pid" 2>/dev/null || break  # srun ended (a trapped signal only interrupts wait)',
        "done",
        'exit "$status"',
    ]  # fmt: skip
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- commands (argv)
def sbatch_argv(script: Path) -> list[str]:
    return ["sbatch", "--parsable", str(script)]


def scancel_argv(job_id: str, signal: str | None = None) -> list[str]:
    """``scancel JOB`` ends the job (Slurm's TERM, then KILL after KillWait); with ``signal`` it only
    signals every process of the job's steps (not the batch shell), and the job goes on."""
    return ["scancel", *([f"--signal={signal}"] if signal else []), job_id]


_SQUEUE_FORMAT = "%i|%T|%r|%P|%D|%N"
_SACCT_FIELDS = "JobID,State,ExitCode,DerivedExitCode,Partition,NNodes,NodeList"


def squeue_argv(job_ids: list[str]) -> list[str]:
    """Every listed job the controller still holds (active ones, and ended ones for MinJobAge)."""
    return [
        "squeue",
        "--noheader",
        "--states=all",
        f"--jobs={','.join(job_ids)}",
        f"--format={_SQUEUE_FORMAT}",
    ]


def sacct_argv(job_id: str, completion: bool = False) -> list[str]:
    """The accounting record of a job and its steps (``completion``: the job completion log instead,
    for clusters without slurmdbd; it has no steps)."""
    return ["sacct", *(["--completion"] if completion else []), "--noheader", "--parsable2",
            f"--jobs={job_id}", f"--format={_SACCT_FIELDS}"]  # fmt: skip


def scontrol_argv(job_id: str) -> list[str]:
    return ["scontrol", "--oneliner", "show", "job", job_id]


# ------------------------------------------------------------------------------ parsed output
@dataclass
class JobInfo:
    """One job as the scheduler reports it. ``exit_code`` / ``derived_exit_code`` keep Slurm's
    ``code:signal`` text; ``steps`` maps step ids (``123.0``, ``123.batch``) to their states."""

    job_id: str
    state: str
    reason: str | None = None
    partition: str | None = None
    nodes: int | None = None
    node_list: str | None = None
    exit_code: str | None = None
    derived_exit_code: str | None = None
    steps: dict[str, str] = field(default_factory=dict)
    source: str = "squeue"

    @property
    def active(self) -> bool:
        return self.state in _QUEUED or self.state in _RUNNING


def _state(text: str) -> str:
    """``CANCELLED by 1000`` -> ``CANCELLED``; ``RUNNING`` stays."""
    return text.split()[0].upper() if text.strip() else "UNKNOWN"


def _int(text: str | None) -> int | None:
    return int(text) if text and text.strip().isdigit() else None


def _none(text: str | None) -> str | None:
    return None if text in (None, "", "None", "(null)") else text


def parse_sbatch(stdout: str) -> str | None:
    """The job id from ``sbatch --parsable`` (``123`` or ``123;cluster``)."""
    first = stdout.strip().splitlines()[-1:] if stdout.strip() else []
    job = first[0].split(";")[0].strip() if first else ""
    return job if job.isdigit() else None


def parse_squeue(text: str) -> dict[str, JobInfo]:
    out = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) != 6 or not parts[0].strip():
            continue
        job, state, reason, partition, nodes, node_list = (p.strip() for p in parts)
        out[job] = JobInfo(
            job, _state(state), _none(reason), partition or None, _int(nodes), _none(node_list)
        )
    return out


def parse_sacct(text: str, source: str = "sacct") -> dict[str, JobInfo]:
    """``--parsable2`` lines of ``_SACCT_FIELDS``: the job's own line, then one per step."""
    out: dict[str, JobInfo] = {}
    steps: dict[str, dict[str, str]] = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) != 7 or not parts[0]:
            continue
        job_id, state, code, derived, partition, nodes, node_list = parts
        job, _, step = job_id.partition(".")
        if step:
            steps.setdefault(job, {})[job_id] = _state(state)
            continue
        out[job] = JobInfo(job, _state(state), None, partition or None, _int(nodes), _none(node_list),
                           code or None, derived or None, source=source)  # fmt: skip
    for job, info in out.items():
        info.steps = steps.get(job, {})
    return out


def parse_scontrol(text: str) -> dict[str, JobInfo]:
    """``scontrol --oneliner show job``: one line of ``Key=Value`` pairs per job."""
    out = {}
    for line in text.splitlines():
        pairs = dict(re.findall(r"(\w[\w/:]*)=(\S*)", line))
        job = pairs.get("JobId")
        if not job:
            continue
        out[job] = JobInfo(job, _state(pairs.get("JobState", "")), _none(pairs.get("Reason")),
                           pairs.get("Partition"), _int(pairs.get("NumNodes")), _none(pairs.get("NodeList")),
                           pairs.get("ExitCode"), pairs.get("DerivedExitCode"), source="scontrol")  # fmt: skip
    return out


def exit_status(code: str | None) -> tuple[int | None, int | None]:
    """Slurm's ``code:signal`` as (exit code, signal)."""
    if not code or ":" not in code:
        return None, None
    left, _, right = code.partition(":")
    return _int(left), _int(right)


# --------------------------------------------------------------------- scheduler state -> NEXA
_QUEUED = {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "SUSPENDED"}
_RUNNING = {"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING", "RESIZING", "STOPPED"}
_RESUME_HINT = "; resume continues from the last complete checkpoint"


def memory_evidence(info: JobInfo, log: str) -> str | None:
    """Slurm's own word that it killed the job for memory: the state OUT_OF_MEMORY (of the job or a
    step), the OOM exit status 0:125, or slurmstepd's message in the job's output."""
    if info.state == "OUT_OF_MEMORY":
        return "Slurm state OUT_OF_MEMORY"
    oom_steps = [s for s, state in info.steps.items() if state == "OUT_OF_MEMORY"]
    if oom_steps:
        return f"Slurm state OUT_OF_MEMORY for step {oom_steps[0]}"
    for name, code in (("DerivedExitCode", info.derived_exit_code), ("ExitCode", info.exit_code)):
        if exit_status(code)[1] == SLURM_OOM_SIGNAL:
            return f"Slurm {name} {code} (its out-of-memory status)"
    match = _SLURM_MEMORY_KILL.search(log)
    return f"Slurm: {match.group(0).strip()[:300]}" if match else None


def outcome(
    info: JobInfo, request: SlurmRequest, *, stop_requested: bool = False, log: str = ""
) -> tuple[RunState, str | None, int | None]:
    """(NEXA state, reason, exit code) for the job as the scheduler reports it. Pending jobs carry
    Slurm's reason (Priority, Resources, ...); ended ones a reason a user can act on."""
    job, state = info.job_id, info.state
    if state in _QUEUED:
        return RunState.QUEUED, f"Slurm job {job} {state.lower()} ({info.reason or 'no reason given'})", None
    if state in _RUNNING:
        return RunState.RUNNING, None, None
    code, signal = exit_status(info.exit_code)
    exit_code = -signal if signal else code
    if state == "COMPLETED":
        return RunState.SUCCEEDED, None, 0
    if stop_requested:
        return RunState.STOPPED, f"stopped on request (scancel; Slurm job {job} {state})", exit_code
    evidence = memory_evidence(info, log)
    if evidence:
        mem = f" ({request.mem_mb}M per node)" if request.mem_mb else ""
        return (
            RunState.FAILED,
            f"out of memory: Slurm killed job {job} for using more than its memory request{mem}: {evidence}; "
            "ask for more with --mem, or pick a layout that needs less (nexa plan)",
            exit_code,
        )
    if state == "TIMEOUT":
        return (
            RunState.FAILED,
            f"timeout: Slurm ended job {job} at its time limit ({request.time}){_RESUME_HINT}",
            exit_code,
        )
    if state == "NODE_FAIL":
        return (
            RunState.FAILED,
            f"node failure: Slurm lost a node of job {job} ({info.node_list}){_RESUME_HINT}",
            exit_code,
        )
    if state == "PREEMPTED":
        return (
            RunState.FAILED,
            f"preempted: Slurm gave job {job}'s nodes to another job{_RESUME_HINT}",
            exit_code,
        )
    if state == "CANCELLED":
        return (
            RunState.STOPPED,
            f"cancelled outside NEXA (scancel of Slurm job {job} by a user or an administrator)",
            exit_code,
        )
    if state == "FAILED":
        _, why = classify_exit(code if code is not None else 1, log)
        return RunState.FAILED, f"Slurm job {job} failed: {why}", exit_code
    return RunState.FAILED, f"Slurm job {job} ended {state}", exit_code  # BOOT_FAIL, DEADLINE, ...
