"""Peak host memory of real short CPU training runs against the planner, cross-validated by model.

Each case is one `nexa train` run (3 optimizer steps, fp32, batches padded to --seq-len, no
evaluation, no checkpoint); two-rank cases run under torchrun (gloo). Every rank records its own
kernel peak RSS (ru_maxrss, metric ``peak_rss_bytes/rank<N>`` in the run store); a case's measured
figure is the sum over its ranks, compared with the planner's per-node host total for the same
CPU-only layout (``PlanConfig(gpus=0, cpu_ranks=N)``). The torchrun agent process is not a rank and
is not counted (nor planned).

Two CPU constants are measured, not fitted: the process baseline and DeepSpeed's runtime, from
runs of a tiny model (``CONSTANT_CASES``) whose model-dependent terms are a few MiB. The other two
(activation factor, host fragmentation) are fitted by grid search. The headline is leave-one-model-
out cross-validation: for each model, the two constants are fitted on the other models' cases and
that model's cases are predicted. The in-sample error (fitted on every case) is printed beside it.

    python benchmarks/memory_calibration.py --from benchmarks/results/memory_calibration.json
    python benchmarks/memory_calibration.py --missing      # measure cases without a saved row
    python benchmarks/memory_calibration.py --only NAME,NAME   # (re)measure these cases
    python benchmarks/memory_calibration.py --all          # measure everything again (~1 h here)

Measurements are merged into benchmarks/results/memory_calibration.json after every case.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nexa_core.enums import Precision, Task  # noqa: E402
from nexa_core.memory import DEFAULT_CALIBRATION, MIB, Calibration, Layout, per_rank_estimate  # noqa: E402
from nexa_core.models import size_model  # noqa: E402
from nexa_core.planner import PlanConfig, plan_workload  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "memory_calibration.json"
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
STEPS = 3
# Model configs written to a folder at run time (random-initialised: no weights needed).
MODELS_DIR = Path(tempfile.gettempdir()) / "nexa-calibration-models"
LOCAL_MODELS = {
    # A Llama-style decoder scaled down from Llama 3.2 (SwiGLU MLP, grouped-query attention 12/4,
    # RMSNorm, untied 32k vocabulary): 0.12 B parameters, the family the fit set lacked.
    "llama-0.1b": {
        "model_type": "llama", "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
        "num_key_value_heads": 4, "head_dim": 64, "intermediate_size": 2048, "vocab_size": 32000,
        "max_position_embeddings": 2048, "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2,
    },
    # Tiny BERT for measuring the per-process constants: its own terms are a few MiB.
    "tiny-bert": {
        "model_type": "bert", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
        "intermediate_size": 128, "vocab_size": 30522, "max_position_embeddings": 512,
    },
}  # fmt: skip


@dataclass(frozen=True)
class Case:
    name: str
    model: str = MINILM  # catalogue id, or a key of LOCAL_MODELS
    task: str = "ner"
    batch_size: int = 8
    seq_len: int = 128
    gradient_checkpointing: bool = False
    lora: bool = False
    deepspeed: bool = False
    zero_stage: int = 0
    offload_optimizer: bool = False
    offload_param: bool = False
    random_init: bool = False  # no offline weights: a random-initialised model of the real shape
    dataset: str | None = None  # None: the task's bundled sample; e.g. "sample:instructions"
    ranks: int = 1  # processes on this machine (torchrun when > 1)

    @property
    def fold(self) -> str:
        """The cross-validation group: the model (every case of a model is held out together)."""
        return self.model.rsplit("/", 1)[-1]


def _ds(stage: int, **kw) -> dict:
    return {"deepspeed": True, "zero_stage": stage, **kw}


R = {"random_init": True}
CASES = [
    # all-MiniLM-L6-v2 (BERT, 22.7 M, the packaged weights)
    Case("minilm ner b8 s128"),
    Case("minilm ner b32 s128", batch_size=32),
    Case("minilm ner b8 s512", seq_len=512),
    Case("minilm ner b32 s256 ckpt", batch_size=32, seq_len=256, gradient_checkpointing=True),
    Case("minilm ner b16 s256 lora", batch_size=16, seq_len=256, lora=True),
    Case("minilm embedding b16 s128", task="embedding", batch_size=16),
    Case("minilm cls b64 s64", task="classification", batch_size=64, seq_len=64),
    Case("minilm zero1", **_ds(1)),
    Case("minilm zero2", **_ds(2)),
    Case("minilm zero3", **_ds(3)),
    Case("minilm zero2 offload", **_ds(2, offload_optimizer=True)),
    Case("minilm zero3 offload both", **_ds(3, offload_optimizer=True, offload_param=True)),
    Case("minilm 2-rank zero2", ranks=2, **_ds(2)),
    Case("minilm 2-rank zero3 cls b8 s256", task="classification", seq_len=256, ranks=2, **_ds(3)),
    # DistilBERT (66 M), BERT-base (110 M): random-initialised
    Case("distilbert ner b16 s256", model="distilbert-base-uncased", batch_size=16, seq_len=256, **R),
    Case("distilbert zero2 offload", model="distilbert-base-uncased", **_ds(2, offload_optimizer=True), **R),
    Case("distilbert 2-rank zero2", model="distilbert-base-uncased", ranks=2, **_ds(2), **R),
    Case("bert-base cls b8 s128", model="bert-base-uncased", task="classification", **R),
    Case("bert-base zero2 b8 s128", model="bert-base-uncased", **_ds(2), **R),
    Case("bert-base embedding b8 s64 ckpt", model="bert-base-uncased", task="embedding", seq_len=64,
         gradient_checkpointing=True, **R),
    # GPT-2 (124 M, learned positions, gelu_new, tied 50k vocabulary)
    Case("gpt2 lm b4 s256", model="gpt2", task="causal-lm", batch_size=4, seq_len=256, **R),
    Case("gpt2 lm b4 s128 ckpt zero3", model="gpt2", task="causal-lm", batch_size=4,
         gradient_checkpointing=True, **_ds(3), **R),
    Case("gpt2 lm lora b8 s128", model="gpt2", task="causal-lm", lora=True, **R),
    # Llama-style 0.12 B (SwiGLU, GQA 12/4, no attention dropout: CPU SDPA keeps no scores)
    Case("llama lm b4 s256", model="llama-0.1b", task="causal-lm", batch_size=4, seq_len=256, **R),
    Case("llama instructions b4 s256", model="llama-0.1b", task="causal-lm", batch_size=4, seq_len=256,
         dataset="sample:instructions", **R),
    Case("llama lm lora b8 s128", model="llama-0.1b", task="causal-lm", lora=True, **R),
    Case("llama ner b8 s512 ckpt zero2", model="llama-0.1b", seq_len=512, gradient_checkpointing=True, **_ds(2), **R),
    Case("llama 2-rank zero3 lora lm b2 s128", model="llama-0.1b", task="causal-lm", batch_size=2, ranks=2,
         lora=True, **_ds(3), **R),
    # Qwen2.5-0.5B (GQA 14/2, tied 152k vocabulary), LoRA: frozen fp32 base weights
    Case("qwen2.5-0.5b lora lm b2 s128", model="Qwen/Qwen2.5-0.5B", task="causal-lm", batch_size=2, lora=True, **R),
]  # fmt: skip
# Runs of a tiny model that measure the per-process constants (not cross-validation cases).
CONSTANT_CASES = [
    Case("tiny process baseline", model="tiny-bert", random_init=True),
    Case("tiny deepspeed runtime", model="tiny-bert", random_init=True, **_ds(1)),
]
# The constants each constant case measures, with the Calibration field it sets.
CONSTANT_FIELDS = {
    "tiny process baseline": "process_baseline_bytes",
    "tiny deepspeed runtime": "deepspeed_host_bytes",
}
# Fitted constants and their grids: the activation factor scales the activation formula on CPU;
# fragmentation is a share of the live host bytes.
FIT_GRID = {
    "cpu_activation_factor": [x / 20 for x in range(16, 41)],  # 0.80 .. 2.00
    "host_fragmentation": [x / 100 for x in range(0, 41, 2)],  # 0 .. 0.40
}


def model_path(model: str) -> str:
    """A catalogue id as is; a LOCAL_MODELS key as a folder holding its config.json."""
    if model not in LOCAL_MODELS:
        return model
    folder = MODELS_DIR / model
    folder.mkdir(parents=True, exist_ok=True)
    text = json.dumps(LOCAL_MODELS[model], indent=1, sort_keys=True)
    if not (folder / "config.json").is_file() or (folder / "config.json").read_text() != text:
        (folder / "config.json").write_text(text)
    return str(folder)


def train_argv(case: Case) -> list[str]:
    argv = ["-m", "nexa_core", "train", "--model", model_path(case.model), "--task", case.task]
    argv += ["--batch-size", str(case.batch_size), "--seq-len", str(case.seq_len), "--max-steps", str(STEPS)]
    argv += ["--precision", "fp32", "--no-eval", "--no-save", "--pad-to-seq-len", "--json"]
    argv += ["--deepspeed", "on" if case.deepspeed else "off", "--zero-stage", str(case.zero_stage)]
    argv += ["--offload-optimizer", "cpu" if case.offload_optimizer else "none"]
    argv += ["--offload-param", "cpu" if case.offload_param else "none"]
    argv += ["--dataset", case.dataset] if case.dataset else []
    argv += ["--gradient-checkpointing"] if case.gradient_checkpointing else []
    argv += ["--lora"] if case.lora else []
    argv += ["--random-init"] if case.random_init else []
    if case.ranks == 1:
        return [sys.executable, *argv]
    torchrun = str(Path(sys.executable).parent / "torchrun")
    port = 29500 + os.getpid() % 1000
    return [torchrun, "--nproc_per_node", str(case.ranks), "--master_addr", "127.0.0.1",
            "--master_port", str(port), *argv]  # fmt: skip


def measure(case: Case) -> dict:
    """Run the case in a fresh NEXA_HOME; each rank's kernel peak RSS from the run store."""
    from nexa_core.runstore import RunStore
    from nexa_core.telemetry import PEAK_RSS_METRIC

    with tempfile.TemporaryDirectory() as home:
        env = dict(os.environ, NEXA_HOME=home, NEXA_RUN_ID="calibration", HF_HUB_OFFLINE="1",
                   TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(ROOT))  # fmt: skip
        start = time.perf_counter()
        out = subprocess.run(train_argv(case), env=env, capture_output=True, text=True, timeout=3600)
        if out.returncode != 0:
            raise RuntimeError(f"{case.name}: exit {out.returncode}\n{out.stderr[-3000:]}")
        store = RunStore(Path(home) / "runs.sqlite")
        peaks = store.metric_maxima("calibration", PEAK_RSS_METRIC)
        # sampled RSS by rank and step (diagnostics: growth over steps; step None is before the first)
        by_step: dict[str, dict[str, int]] = {}
        for row in store.memory("calibration"):
            steps = by_step.setdefault(str(row.get("rank") or 0), {})
            key = str(row.get("step"))
            steps[key] = max(steps.get(key, 0), int(row.get("rss_bytes") or 0))
    per_rank = [int(peaks[f"{PEAK_RSS_METRIC}{r}"]) for r in range(case.ranks)]
    return {
        "peak_rss_bytes": sum(per_rank),
        "peak_rss_bytes_per_rank": per_rank,
        "sampled_rss_bytes_by_rank_and_step": by_step,
        "wall_s": round(time.perf_counter() - start, 1),
        "measured_at": time.strftime("%Y-%m-%d"),
    }


def environment() -> dict:
    import platform

    import psutil

    versions = {
        n: __import__(n).__version__ for n in ("torch", "deepspeed", "accelerate", "transformers", "peft")
    }
    return {"machine": platform.platform(), "host": socket.gethostname(), "cpu_cores": psutil.cpu_count(),
            "host_ram_bytes": psutil.virtual_memory().total, "malloc_env": {k: v for k, v in os.environ.items()
            if k.startswith("MALLOC_")}, "versions": versions}  # fmt: skip


# ------------------------------------------------------------------ estimates
def _workload(case: Case):
    config = PlanConfig(
        model=model_path(case.model), task=case.task, num_labels=7, precision="fp32",
        batch_size=case.batch_size, seq_len=case.seq_len, gradient_checkpointing=case.gradient_checkpointing,
        lora=case.lora, gpus=0, cpu_ranks=case.ranks, random_init=case.random_init, host_memory_gb=1024,
    )  # fmt: skip
    size = size_model(config.model, Task(case.task), 7, config.lora_rank if case.lora else None)
    return plan_workload(config, size, Precision.FP32)


def _layout(case: Case) -> Layout:
    stage = case.zero_stage if case.deepspeed else 0
    return Layout(stage, case.offload_optimizer, case.offload_param, 0, 1, case.ranks)


def estimator(cases: list[Case]) -> Callable[[Calibration], list[int]]:
    """A function of the calibration giving the planner's per-node host total for each case
    (the workloads are built once: this is what the grid search calls)."""
    prepared = [(_workload(c), _layout(c)) for c in cases]
    return lambda cal: [per_rank_estimate(w, lay, cal)[1].total_bytes for w, lay in prepared]


def relative_errors(estimates: list[int], measured: list[int]) -> list[float]:
    return [e / m - 1 for e, m in zip(estimates, measured, strict=True)]


def score(errors: list[float]) -> tuple[bool, float, float]:
    """The fit's objective, fixed before cross-validation was added: the smallest worst-case error
    among calibrations whose median absolute error is within 10 % (ties: the smaller median)."""
    abs_errs = [abs(e) for e in errors]
    median = statistics.median(abs_errs)
    return (median > 0.10, round(max(abs_errs), 3), median)


def fit(cases: list[Case], measured: list[int], base: Calibration) -> Calibration:
    """Grid search over FIT_GRID, the measured constants held at ``base``'s values."""
    estimate = estimator(cases)
    best, best_score = base, (True, float("inf"), float("inf"))
    for values in itertools.product(*FIT_GRID.values()):
        cal = replace(base, **dict(zip(FIT_GRID, values, strict=True)))
        s = score(relative_errors(estimate(cal), measured))
        if s < best_score:
            best, best_score = cal, s
    return best


def measured_constants(rows: dict[str, dict], base: Calibration) -> Calibration:
    """The process baseline and DeepSpeed runtime from the tiny-model runs: the run's peak less what
    the planner counts for the tiny model itself (its weights, states and activations, with neither
    fitted constant applied, so the measurement does not depend on the fit)."""
    zero = replace(base, process_baseline_bytes=0, deepspeed_host_bytes=0, cpu_activation_factor=1.0,
                   host_fragmentation=0.0)  # fmt: skip
    (baseline_case, ds_case) = CONSTANT_CASES
    model_part = estimator([baseline_case, ds_case])(zero)
    baseline = rows[baseline_case.name]["peak_rss_bytes"] - model_part[0]
    runtime = rows[ds_case.name]["peak_rss_bytes"] - model_part[1] - baseline
    return replace(
        base, process_baseline_bytes=_round_mib(baseline), deepspeed_host_bytes=_round_mib(runtime)
    )


def _round_mib(n: int) -> int:
    return round(n / MIB) * MIB


@dataclass
class Report:
    cases: list[Case]
    measured: list[int]
    in_sample: list[int]
    cross_validated: list[int]
    fitted: Calibration
    fold_fits: dict[str, Calibration]


def evaluate(rows: dict[str, dict], base: Calibration = DEFAULT_CALIBRATION) -> Report:
    """In-sample fit on every case, and leave-one-model-out: each model's cases predicted with the
    constants fitted on the other models' cases."""
    cases = [c for c in CASES if c.name in rows]
    measured = [rows[c.name]["peak_rss_bytes"] for c in cases]
    base = measured_constants(rows, base)
    fitted = fit(cases, measured, base)
    in_sample = estimator(cases)(fitted)
    cv: list[int] = [0] * len(cases)
    fold_fits = {}
    for fold in dict.fromkeys(c.fold for c in cases):
        train = [i for i, c in enumerate(cases) if c.fold != fold]
        test = [i for i, c in enumerate(cases) if c.fold == fold]
        cal = fit([cases[i] for i in train], [measured[i] for i in train], base)
        fold_fits[fold] = cal
        for i, est in zip(test, estimator([cases[i] for i in test])(cal), strict=True):
            cv[i] = est
    return Report(cases, measured, in_sample, cv, fitted, fold_fits)


def summary(errors: list[float]) -> str:
    abs_errs = [abs(e) for e in errors]
    return f"median {statistics.median(abs_errs):.1%}, worst {max(abs_errs):.1%} over {len(errors)} cases"


def constants_text(cal: Calibration) -> str:
    return (
        f"process_baseline_bytes={cal.process_baseline_bytes // MIB} MiB (measured), "
        f"deepspeed_host_bytes={cal.deepspeed_host_bytes // MIB} MiB (measured), "
        f"cpu_activation_factor={cal.cpu_activation_factor} (fitted), "
        f"host_fragmentation={cal.host_fragmentation} (fitted)"
    )


def table(report: Report, markdown: bool = False) -> str:
    cv_err = relative_errors(report.cross_validated, report.measured)
    in_err = relative_errors(report.in_sample, report.measured)
    head = ("case", "ranks", "measured MiB", "in-sample MiB", "in-sample error", "CV MiB", "CV error")
    lines = (
        ["| " + " | ".join(head) + " |", "| --- |" + " ---: |" * (len(head) - 1)]
        if markdown
        else [
            f"{head[0]:36s} {head[1]:>5s} {head[2]:>12s} {head[3]:>13s} {head[4]:>15s} {head[5]:>8s} {head[6]:>9s}"
        ]
    )
    for case, m, est, cv, e_in, e_cv in zip(
        report.cases, report.measured, report.in_sample, report.cross_validated, in_err, cv_err, strict=True
    ):
        cells = (case.name, str(case.ranks), f"{m / MIB:.0f}", f"{est / MIB:.0f}", f"{e_in:+.1%}",
                 f"{cv / MIB:.0f}", f"{e_cv:+.1%}")  # fmt: skip
        lines.append(
            "| " + " | ".join(cells) + " |"
            if markdown
            else f"{cells[0]:36s} {cells[1]:>5s} {cells[2]:>12s} {cells[3]:>13s} {cells[4]:>15s} {cells[5]:>8s} {cells[6]:>9s}"
        )
    lines.append("")
    lines.append(f"cross-validated (leave one model out): {summary(cv_err)}")
    lines.append(f"in-sample (fitted on all {len(report.cases)} cases):  {summary(in_err)}")
    lines.append(f"constants fitted on all cases: {constants_text(report.fitted)}")
    for fold, cal in report.fold_fits.items():
        lines.append(
            f"  without {fold:22s} activation factor {cal.cpu_activation_factor:.2f}, fragmentation {cal.host_fragmentation:.2f}"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------ measuring
def load_rows(path: Path) -> dict[str, dict]:
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    known = {f.name for f in fields(Case)}
    return {r["case"]["name"]: r for r in data["rows"] if set(r["case"]) <= known}


def save_rows(path: Path, rows: dict[str, dict]) -> None:
    order = {c.name: i for i, c in enumerate(CONSTANT_CASES + CASES)}
    ordered = sorted(rows.values(), key=lambda r: order.get(r["case"]["name"], len(order)))
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"steps": STEPS, "precision": "fp32", "environment": environment(), "rows": ordered}
    path.write_text(json.dumps(doc, indent=1) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--from", dest="source", help="saved measurements to re-use instead of measuring")
    parser.add_argument("--all", action="store_true", help="measure every case again")
    parser.add_argument("--missing", action="store_true", help="measure the cases without a saved row")
    parser.add_argument("--only", help="comma-separated case names to (re)measure")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    args = parser.parse_args()
    every = CONSTANT_CASES + CASES
    if args.list:
        for c in every:
            print(f"{c.name:36s} {c.fold}")
        return 0
    path = Path(args.source) if args.source else RESULTS
    rows = load_rows(path)
    if not args.source:
        by_name = {c.name: c for c in every}
        if args.only:
            unknown = [n for n in args.only.split(",") if n not in by_name]
            if unknown:
                parser.error(f"--only: unknown case(s) {', '.join(unknown)}; see --list")
            todo = [by_name[n] for n in args.only.split(",")]
        elif args.missing:
            todo = [c for c in every if c.name not in rows]
        elif args.all:
            todo = every
        else:
            parser.error(
                "give --from FILE to report saved measurements, or --missing / --only / --all to measure"
            )
        for case in todo:
            try:
                rows[case.name] = {"case": asdict(case), **measure(case)}
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                print(f"{case.name}: FAILED {exc}", file=sys.stderr)
                continue
            save_rows(path, rows)
            print(f"measured {case.name}: {rows[case.name]['peak_rss_bytes'] / MIB:.0f} MiB "
                  f"{[round(p / MIB) for p in rows[case.name]['peak_rss_bytes_per_rank']]} in {rows[case.name]['wall_s']} s", flush=True)  # fmt: skip
    missing = [c.name for c in CONSTANT_CASES if c.name not in rows]
    if missing:
        print(f"constants not measured yet: {', '.join(missing)}", file=sys.stderr)
        return 1
    report = evaluate(rows)
    print(table(report, markdown=args.markdown))
    shipped = DEFAULT_CALIBRATION
    same = all(
        getattr(shipped, f) == getattr(report.fitted, f) for f in [*FIT_GRID, *CONSTANT_FIELDS.values()]
    )
    shipped_text = ", ".join(f"{f}={getattr(shipped, f)}" for f in [*CONSTANT_FIELDS.values(), *FIT_GRID])
    print(
        f"nexa_core.memory.Calibration ships these constants: {'yes' if same else 'NO, it ships ' + shipped_text}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
