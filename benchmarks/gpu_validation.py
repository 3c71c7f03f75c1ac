"""GPU validation kit: measure real training peaks on one GPU and print the planner's error per case.

Each case is a `nexa train` run (a TrainConfig through NEXA's run_training: bundled data padded to
the sequence length, a random-initialised model from a catalogue config, some scaled down,
DeepSpeedTrainer) for a few steps in its own process (benchmarks/gpu_validation_worker.py), so
peaks never mix. Measured: torch max allocated and max reserved per optimizer step (the figures are the
maximum over steps 2+, once the optimizer state exists), NVML used memory of the process and of
the device (sampled every 20 ms), peak RSS. Compared with the planner's Estimate for the case's
ZeRO layout (nexa_core.gpu_metrics): allocated vs the live terms, reserved vs the per-GPU total
less the CUDA context, NVML vs the per-GPU total.

    python benchmarks/gpu_validation.py              # on a GPU machine: every case, < 8 min on H100/H200
    python benchmarks/gpu_validation.py --list       # the cases and the estimated device time
    python benchmarks/gpu_validation.py --cases a,b  # a subset
    python benchmarks/gpu_validation.py --dry-run    # CPU, tiny models, 2 steps, RSS: checks the kit itself
    python benchmarks/gpu_validation.py --replan benchmarks/results/gpu_validation-*.json
                                                     # no run: earlier measurements against today's planner

Results: benchmarks/results/gpu_validation-<date>-<gpu>.json (date, GPU, driver, CUDA, library
versions, every measurement and estimate). --dry-run writes to a temporary folder unless --out.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from nexa_core.gpu_metrics import GpuMetric, comparable_bytes  # noqa: E402
from nexa_core.memory import GIB, MIB  # noqa: E402
from nexa_core.models import catalogue  # noqa: E402
from nexa_core.planner import PlanConfig, make_plan  # noqa: E402
from nexa_core.train_config import TrainConfig  # noqa: E402

WORKER = Path(__file__).with_name("gpu_validation_worker.py")
RESULTS = ROOT / "benchmarks" / "results"
BUDGET_S = 8 * 60  # one data-centre GPU (H100/H200 class), all cases together
# Rough device-time model, stated so the budget can be checked before a GPU is spent: process start
# (imports, random init of the model on the CPU, moving it to the GPU, DeepSpeed set-up), DeepSpeed's
# JIT builds of FusedAdam and CPUAdam the first time they are needed, and the steps themselves.
STARTUP_S = {"gpu": 25.0, "cpu": 12.0}
JIT_BUILD_S = {"fused_adam": 45.0, "cpu_adam": 60.0}
EFFECTIVE_FLOPS = 2e14  # bf16 training on an H100-class GPU, well under its peak
CPU_ADAM_BYTES_PER_S = 4e9  # offloaded optimizer step on the host (16 bytes per parameter)
HOST_MEMORY_GB = 1024  # the host is not what this kit checks

LLAMA_0_1B = {
    "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "num_key_value_heads": 4,
    "head_dim": 64, "intermediate_size": 2048, "vocab_size": 32000, "tie_word_embeddings": False,
    "bos_token_id": 1, "eos_token_id": 2,
}  # fmt: skip
# --dry-run shrinks every model to this (per model_type) and trains 2 fp32 steps of batch 2 x 32. The
# vocabulary stays at 30522: the bundled data is tokenised with the packaged MiniLM tokenizer.
TINY = {
    "gpt2": {"n_layer": 2, "n_embd": 64, "n_head": 2, "vocab_size": 30522, "bos_token_id": 0, "eos_token_id": 0},
    "llama": {
        "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "head_dim": 16, "intermediate_size": 128, "vocab_size": 30522, "bos_token_id": 1, "eos_token_id": 2,
    },
    "bert": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128, "vocab_size": 30522},
}  # fmt: skip
# Every case is a `nexa train` run: bundled data padded to seq_len (fixed shapes), random weights,
# no evaluation, no checkpoint; stage and offloads always explicit (the DeepSpeed template's own
# offloads would otherwise apply to ZeRO-3).
RUN_DEFAULTS: dict[str, Any] = {
    "task": "causal-lm", "batch_size": 8, "seq_len": 1024, "precision": "bf16", "deepspeed": "on",
    "zero_stage": 0, "offload_optimizer": "none", "offload_param": "none", "max_steps": 3,
    "random_init": True, "eval": False, "save": False, "pad_to_seq_len": True,
}  # fmt: skip
DRY_RUN = {"precision": "fp32", "batch_size": 2, "seq_len": 32, "max_steps": 2}


@dataclass
class Case:
    name: str
    train: TrainConfig  # what the worker runs (its model is replaced by a folder with the config below)
    overrides: dict[str, Any] = field(default_factory=dict)  # model config changes: scaled-down variants
    dry_run: bool = False  # also run (tiny) by --dry-run


def case(
    name: str, model: str, overrides: dict[str, Any] | None = None, dry_run: bool = False, **train
) -> Case:
    config = TrainConfig(**{**RUN_DEFAULTS, "model": model, "name": name, **train})  # the run's name too
    return Case(name, config, overrides or {}, dry_run)


L1B = "meta-llama/Llama-3.2-1B"
CASES = [
    # ~1B first: the scale users plan for, kept if a device lease ends the run early
    # Llama-3.2-1B: SwiGLU, GQA 32/8, vocabulary 128k
    case("llama-3.2-1b bf16 zero2", L1B, batch_size=4, zero_stage=2),
    case("llama-3.2-1b bf16 zero3", L1B, batch_size=4, zero_stage=3),
    case("llama-3.2-1b bf16 zero3 offload both", L1B, batch_size=4, zero_stage=3, offload_optimizer="cpu", offload_param="cpu", dry_run=True),
    case("llama-3.2-1b bf16 zero2 ckpt s2048", L1B, batch_size=4, seq_len=2048, zero_stage=2, gradient_checkpointing=True),
    case("llama-3.2-1b bf16 lora16 ckpt", L1B, lora=True, lora_rank=16, gradient_checkpointing=True, dry_run=True),
    # ~0.1B: GPT-2 small through the precision and ZeRO paths; max_steps 3: peaks over steps 2+
    case("gpt2 bf16 no-deepspeed", "gpt2", deepspeed="off", dry_run=True),  # Accelerate alone, torch AdamW
    case("gpt2 bf16 zero0", "gpt2"),
    case("gpt2 fp32 zero0", "gpt2", precision="fp32"),
    case("gpt2 bf16 zero2", "gpt2", zero_stage=2, dry_run=True),
    # ~0.1B Llama-style (SwiGLU, GQA 12/4): Llama 3.2 scaled down
    case("llama-0.1b bf16 zero2", L1B, LLAMA_0_1B, zero_stage=2),
    # ~0.35B: GPT-2 medium (decoder) and BERT-large (encoder, token classification, 7 labels)
    case("gpt2-medium bf16 zero2", "gpt2-medium", zero_stage=2),
    case("gpt2-medium bf16 zero2 offload", "gpt2-medium", zero_stage=2, offload_optimizer="cpu"),
    case("bert-large ner bf16 zero2", "bert-large-uncased", task="ner", batch_size=16, seq_len=512, zero_stage=2),
]  # fmt: skip


def case_config(case: Case, dry_run: bool) -> dict[str, Any]:
    config = dict(catalogue()[case.train.model].config, **case.overrides)
    if dry_run:
        config.update(TINY[config["model_type"]])
    return config


def run_settings(case: Case, dry_run: bool) -> TrainConfig:
    """What the worker runs: the case's TrainConfig, shrunk for --dry-run (fp32 on CPU, batch 2 x 32, 2 steps)."""
    return TrainConfig.from_dict({**case.train.to_dict(), **(DRY_RUN if dry_run else {})})


def layout_of(train: TrainConfig) -> tuple[int, bool, bool]:
    """(ZeRO stage, optimizer offload, parameter offload) as the run's DeepSpeed settings resolve them."""
    stage, off_opt, off_param = train.deepspeed_settings().layout()
    return stage, str(off_opt) == "cpu", str(off_param) == "cpu"


def estimated_seconds(case: Case, params: int, dry_run: bool) -> float:
    if dry_run:
        return STARTUP_S["cpu"]
    train = case.train
    tokens = train.batch_size * train.seq_len
    flops = 6 * params * tokens * (4 / 3 if train.gradient_checkpointing else 1)
    offload = layout_of(train)[1]
    step = flops / EFFECTIVE_FLOPS + (params * 16 / CPU_ADAM_BYTES_PER_S if offload else 0)
    return STARTUP_S["gpu"] + (train.max_steps or 1) * step


def jit_seconds(cases: list[Case], dry_run: bool) -> float:
    """DeepSpeed builds its fused GPU Adam and its CPU Adam on first use (cached afterwards)."""
    if dry_run:
        return 0.0
    deepspeed = [c for c in cases if str(c.train.deepspeed) == "on"]
    offloads = [layout_of(c.train)[1] for c in deepspeed]
    return JIT_BUILD_S["fused_adam"] * (not all(offloads) and bool(deepspeed)) + JIT_BUILD_S[
        "cpu_adam"
    ] * any(offloads)


def plan_for(case: Case, model_dir: Path, dry_run: bool, gpu_memory_gb: float):
    train = run_settings(case, dry_run)
    config = PlanConfig(
        model=str(model_dir),
        task=train.task,
        num_labels=train.num_labels or 7,  # the bundled NER data has 7 labels
        precision=train.precision,
        batch_size=train.batch_size,
        seq_len=train.seq_len,
        gradient_checkpointing=train.gradient_checkpointing,
        lora=train.lora,
        lora_rank=train.lora_rank,
        gpus=0 if dry_run else 1,
        gpu_memory_gb=gpu_memory_gb,
        host_memory_gb=HOST_MEMORY_GB,
    )
    plan = make_plan(config)
    want = layout_of(train)
    est = next(
        e
        for e in plan.estimates
        if (e.layout.zero_stage, e.layout.offload_optimizer, e.layout.offload_param) == want
    )
    return plan, est


def environment(dry_run: bool) -> dict[str, Any]:
    """Library versions and, from NVML (no CUDA context in this process), the GPU and driver."""
    import importlib.metadata as md
    import platform

    import torch

    env: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "host_cpus": os.cpu_count(),
    }
    for lib in ("deepspeed", "transformers", "accelerate", "peft"):
        try:
            env[lib] = md.version(lib)
        except md.PackageNotFoundError:
            env[lib] = None
    env["gpu"] = None
    if not dry_run:
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            name = pynvml.nvmlDeviceGetName(handle)
            env["gpu"] = name.decode() if isinstance(name, bytes) else name
            env["gpu_memory_bytes"] = int(pynvml.nvmlDeviceGetMemoryInfo(handle).total)
            driver = pynvml.nvmlSystemGetDriverVersion()
            env["driver"] = driver.decode() if isinstance(driver, bytes) else driver
        except Exception as exc:  # no driver, no GPU
            env["gpu_error"] = f"{type(exc).__name__}: {exc}"
    return env


def run_worker(case: Case, model_dir: Path, dry_run: bool, timeout_s: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        argv = [sys.executable, str(WORKER), "--config", json.dumps(run_settings(case, dry_run).to_dict())]
        argv += ["--model-dir", str(model_dir), "--out", str(out)]
        env = dict(
            os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", NEXA_HOME=str(Path(tmp) / "home")
        )
        if dry_run:
            env["CUDA_VISIBLE_DEVICES"] = ""  # the CPU path even on a GPU machine
        try:
            proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout_s:.0f} s"}
        if proc.returncode != 0 or not out.exists():
            return {"error": f"exit {proc.returncode}: {proc.stderr.strip()[-1500:]}"}
        return json.loads(out.read_text())


def compare(result: dict[str, Any], est, dry_run: bool) -> dict[str, float | None]:
    """Signed errors (estimate / measured - 1) per metric."""

    def err(estimate: int, measured: int | None) -> float | None:
        return None if not measured else estimate / measured - 1

    if dry_run:
        return {"host_rss": err(est.host.total_bytes, result.get("peak_rss_bytes"))}
    return {
        "allocated": err(
            comparable_bytes(est.per_gpu, GpuMetric.ALLOCATED), result.get("peak_allocated_bytes")
        ),
        "reserved": err(comparable_bytes(est.per_gpu, GpuMetric.RESERVED), result.get("peak_reserved_bytes")),
        "nvml": err(comparable_bytes(est.per_gpu, GpuMetric.NVML), result.get("nvml_used_peak_bytes")),
    }


def result_row(case: Case, planned, result: dict[str, Any], dry_run: bool) -> dict[str, Any]:
    """One case as the results file keeps it: its settings, the planner's estimate, what was measured."""
    plan, est = planned
    estimate = {
        "params": plan.size.params,
        "trainable_params": plan.size.trainable_params,
        "per_gpu": est.per_gpu.to_dict(),
        "per_gpu_total_bytes": est.per_gpu.total_bytes,
        "allocated_bytes": comparable_bytes(est.per_gpu, GpuMetric.ALLOCATED),
        "reserved_bytes": comparable_bytes(est.per_gpu, GpuMetric.RESERVED),
        "host_total_bytes": est.host.total_bytes,
    }
    return {
        "case": {**run_settings(case, dry_run).to_dict(), "overrides": case.overrides},
        "estimate": estimate,
        "result": result,
        "errors": {} if "error" in result else compare(result, est, dry_run),
    }


def replan(paths: list[Path]) -> tuple[list[dict[str, Any]], bool]:
    """The measured cases of earlier results files against today's planner (no GPU needed): each
    case is planned anew from its name in CASES and the GPU size the file records. Returns the rows
    and whether they are dry runs (files of both kinds are refused: they measure different things)."""
    by_name = {c.name: c for c in CASES}
    payloads = {path: json.loads(Path(path).read_text()) for path in paths}
    kinds = {bool(p["dry_run"]) for p in payloads.values()}
    if len(kinds) > 1:
        raise ValueError("dry-run and GPU results files measure different things: replan them apart")
    dry = kinds.pop()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for path, payload in payloads.items():
            gpu_gb = payload["environment"].get("gpu_memory_bytes", 80 * GIB) / GIB
            for old in payload["cases"]:
                case = by_name.get(old["case"]["name"])
                if case is None or "error" in old["result"]:
                    continue
                folder = Path(tmp) / re.sub(r"[^A-Za-z0-9]+", "-", f"{path}-{case.name}")
                folder.mkdir()
                (folder / "config.json").write_text(json.dumps(case_config(case, dry)))
                rows.append(result_row(case, plan_for(case, folder, dry, gpu_gb), old["result"], dry))
    return rows, dry


def _fmt(measured: int | None, estimate: int, error: float | None, unit: int) -> str:
    if measured is None:
        return f"{'-':>7s} {estimate / unit:7.2f} {'-':>7s}"
    return f"{measured / unit:7.2f} {estimate / unit:7.2f} {error:+7.1%}"


def report(rows: list[dict[str, Any]], dry_run: bool) -> str:
    if dry_run:
        lines = [f"{'case':40s} {'RSS MiB':>9s} {'est MiB':>9s} {'error':>7s} {'wall s':>6s}"]
    else:
        head = "meas GiB  est GiB   error"
        lines = [
            f"{'case':40s} {'allocated: ' + head:34s} {'reserved: ' + head:34s} {'NVML used: ' + head:34s} {'wall s':>6s}"
        ]
    for row in rows:
        res, est, errs = row["result"], row["estimate"], row["errors"]
        if "error" in res:
            lines.append(f"{row['case']['name']:40s} FAILED: {res['error'].splitlines()[-1][:200]}")
            continue
        if dry_run:
            rss, host = res["peak_rss_bytes"], est["host_total_bytes"]
            lines.append(
                f"{row['case']['name']:40s} {rss / MIB:9.0f} {host / MIB:9.0f} {errs['host_rss']:+7.1%} {res['wall_s']:6.1f}"
            )
            continue
        cells = [
            _fmt(res.get("peak_allocated_bytes"), est["allocated_bytes"], errs["allocated"], GIB),
            _fmt(res.get("peak_reserved_bytes"), est["reserved_bytes"], errs["reserved"], GIB),
            _fmt(res.get("nvml_used_peak_bytes"), est["per_gpu_total_bytes"], errs["nvml"], GIB),
        ]
        lines.append(
            f"{row['case']['name']:40s} " + " ".join(f"{c:34s}" for c in cells) + f" {res['wall_s']:6.1f}"
        )
    for metric in ("host_rss",) if dry_run else ("allocated", "reserved", "nvml"):
        errs = [abs(r["errors"][metric]) for r in rows if r["errors"].get(metric) is not None]
        if errs:
            lines.append(
                f"{metric}: median |error| {statistics.median(errs):.1%}, worst {max(errs):.1%} over {len(errs)} cases"
            )
    return "\n".join(lines)


def result_path(out: Path | None, dry_run: bool, env: dict[str, Any], date: str) -> Path:
    """--out, else benchmarks/results/gpu_validation-<date>-<gpu>.json (a temporary folder for --dry-run)."""
    if out is None and dry_run:
        out = Path(tempfile.mkdtemp(prefix="gpu_validation-")) / f"gpu_validation-{date}-cpu-dry-run.json"
    elif out is None:
        gpu = re.sub(r"[^a-z0-9]+", "-", env["gpu"].lower()).strip("-")
        out = RESULTS / f"gpu_validation-{date}-{gpu}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny models, 2 steps, peak RSS")
    parser.add_argument("--cases", help="comma-separated case names (default: all; --dry-run: its subset)")
    parser.add_argument(
        "--list", action="store_true", help="list the cases and the estimated time, run nothing"
    )
    parser.add_argument(
        "--out", type=Path, help="result JSON (default: benchmarks/results/gpu_validation-<date>-<gpu>.json)"
    )
    parser.add_argument(
        "--timeout", type=float, default=None, help="seconds per case (default 240 GPU, 180 dry run)"
    )
    parser.add_argument(
        "--replan",
        type=Path,
        nargs="+",
        metavar="RESULTS",
        help="no run: the measured cases of these results files against today's planner",
    )
    args = parser.parse_args(argv)
    if args.replan:
        missing = [str(p) for p in args.replan if not p.is_file()]
        if missing:
            parser.error(f"--replan: no such results file: {', '.join(missing)}")
        try:
            rows, dry = replan(args.replan)
        except (ValueError, KeyError, json.JSONDecodeError) as exc:
            parser.error(f"--replan: {exc}")
        print(report(rows, dry))
        return 0
    dry = args.dry_run
    if args.cases:
        wanted = [n.strip() for n in args.cases.split(",")]
        unknown = sorted(set(wanted) - {c.name for c in CASES})
        if unknown:
            parser.error(f"unknown case(s) {unknown}; --list shows them")
        cases = [c for c in CASES if c.name in wanted]
    else:
        cases = [c for c in CASES if c.dry_run] if dry else CASES
    env = environment(dry)
    if not dry and not env.get("gpu") and not args.list:
        print(
            f"no GPU found ({env.get('gpu_error', 'NVML lists none')}); use --dry-run on a CPU machine",
            file=sys.stderr,
        )
        return 2
    gpu_gb = env.get("gpu_memory_bytes", 80 * GIB) / GIB
    if not dry and any(str(c.train.deepspeed) == "on" for c in cases):
        # DeepSpeed builds FusedAdam / CPUAdam on first use unless installed prebuilt (DS_BUILD_OPS=1).
        tools = {t: shutil.which(t) or "MISSING" for t in ("nvcc", "ninja")}
        print(f"DeepSpeed JIT ops need nvcc and ninja: {tools}; a failed build shows as FAILED below")

    with tempfile.TemporaryDirectory() as tmp:
        dirs, plans = {}, {}
        for case in cases:
            folder = Path(tmp) / re.sub(r"[^A-Za-z0-9]+", "-", case.name)
            folder.mkdir()
            (folder / "config.json").write_text(json.dumps(case_config(case, dry)))
            dirs[case.name] = folder
            plans[case.name] = plan_for(case, folder, dry, gpu_gb)
        per_case = {c.name: estimated_seconds(c, plans[c.name][0].size.params, dry) for c in cases}
        total_est = sum(per_case.values()) + jit_seconds(cases, dry)
        where = "CPU (dry run)" if dry else env["gpu"] or "no GPU here"
        print(
            f"{len(cases)} cases on {where}; estimated {total_est / 60:.1f} min (budget {BUDGET_S / 60:.0f} min on one H100/H200)"
        )
        for c in cases:
            print(
                f"  {c.name:40s} {plans[c.name][0].size.params / 1e6:8.1f} M params  ~{per_case[c.name]:5.0f} s"
            )
        if args.list:
            return 0
        timeout = args.timeout or (180.0 if dry else 240.0)
        date = time.strftime("%Y-%m-%d")
        out = result_path(args.out, dry, env, date)
        payload: dict[str, Any] = {
            "date": date,
            "dry_run": dry,
            "environment": env,
            "budget_s": BUDGET_S,
            "estimated_s": round(total_est),
            "wall_s": None,
            "cases": [],
        }
        rows, start = payload["cases"], time.perf_counter()
        for case in cases:
            result = run_worker(case, dirs[case.name], dry, timeout)
            rows.append(result_row(case, plans[case.name], result, dry))
            # Written after every case: a run cut short (a device lease ending) keeps what it measured.
            payload["wall_s"] = round(time.perf_counter() - start, 1)
            out.write_text(json.dumps(payload, indent=1))
            print(
                f"  done {case.name} ({'FAILED' if 'error' in result else str(result['wall_s']) + ' s'})",
                flush=True,
            )
        wall = time.perf_counter() - start

    print(report(rows, dry))
    if dry:
        print("dry run: tiny models on the CPU check the kit's code path, not the planner's GPU terms")
    print(f"wall {wall:.0f} s (estimated {total_est:.0f} s); results: {out}")
    return 1 if any("error" in r["result"] for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
