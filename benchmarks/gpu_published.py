"""Check the planner's GPU terms against published GPU peak-memory measurements.

benchmarks/gpu_published.json holds measured peaks of real training runs from public sources
(the transformers single-GPU guide, LitGPT's resource tables, PEFT's README and method comparison,
optimum-benchmark, torchtune), each with the configuration and the metric its source states. For
every row the planner can express, this script builds the PlanConfig, takes the Estimate for the
row's ZeRO layout and compares the part of it the metric measures (nexa_core.gpu_metrics):
torch allocated/active vs the live terms, torch reserved vs the total less the CUDA context, NVML
used vs the whole per-GPU total. Rows it cannot express say why in one line. Nothing is fitted
here: the rows check the formulas, they do not tune them.

    python benchmarks/gpu_published.py            # the table, per-source and overall medians
    python benchmarks/gpu_published.py --json     # the same as JSON
    python benchmarks/gpu_published.py --markdown # the tables in docs/BENCHMARKS.md

Offline: the models come from NEXA's catalogue (meta-device builds, no download).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from nexa_core.enums import Precision, Task  # noqa: E402
from nexa_core.gpu_metrics import comparable_bytes  # noqa: E402
from nexa_core.memory import DEFAULT_CALIBRATION, GIB  # noqa: E402
from nexa_core.models import catalogue  # noqa: E402
from nexa_core.planner import Estimate, Plan, PlanConfig, make_plan  # noqa: E402

DATA = ROOT / "benchmarks" / "gpu_published.json"
UNITS = {"B": 1, "MB": 1e6, "MiB": 2**20, "GB": 1e9, "GiB": 2**30}
SEQ_LEN_KINDS = ("fixed", "longest", "cap-assumed-reached", "data-dependent")
HOST_MEMORY_GB = 1024  # planning for the source's machine, not this one: host RAM is not what is checked
# peft's module names -> the projection they are; a fused qkv module adapts q, k and v at once.
_TARGET_CONCEPTS = {
    "q_proj": {"q"}, "query": {"q"}, "k_proj": {"k"}, "key": {"k"}, "v_proj": {"v"}, "value": {"v"},
    "query_key_value": {"q", "k", "v"}, "c_attn": {"q", "k", "v"}, "qkv_proj": {"q", "k", "v"},
    "o_proj": {"o"}, "dense": {"o"}, "fc1": {"mlp"}, "fc2": {"mlp"}, "gate_proj": {"mlp"},
    "up_proj": {"mlp"}, "down_proj": {"mlp"}, "lm_head": {"head"},
}  # fmt: skip


@dataclass(frozen=True)
class Result:
    row: dict[str, Any]
    published_bytes: float
    reason: str | None = None  # why NEXA cannot express the row; None when it can
    total_bytes: int | None = None  # NEXA's per-GPU total
    comparable: int | None = None  # the part of it the row's metric measures
    added_note: str = ""  # anything this script added to the planner's figure, said out loud

    @property
    def expressible(self) -> bool:
        return self.reason is None

    @property
    def error(self) -> float | None:
        """Signed: estimate / published - 1 (positive = NEXA over-estimates)."""
        if self.comparable is None:
            return None
        return self.comparable / self.published_bytes - 1


def load(path: Path = DATA) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def published_bytes(row: dict[str, Any]) -> float:
    return float(row["value"]) * UNITS[row["unit"]]


def _default_lora_targets(model_type: str) -> set[str]:
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as defaults

    out: set[str] = set()
    for name in defaults.get(model_type, []):
        out |= _TARGET_CONCEPTS.get(name, {name})
    return out


def _pure_bf16() -> Precision | None:
    """A precision mode with bf16 weights and optimizer states, if the planner has one."""
    for member in Precision:
        if "pure" in member.value or "true" in member.value:
            return member
    return None


def why_inexpressible(row: dict[str, Any]) -> str | None:
    """One line saying why the planner cannot describe this run, or None when it can.
    Data-dependent sequence lengths are reported separately (the estimate at the cap is a bound)."""
    peft = row["peft"] or {}
    if row["task"] == "seq2seq":
        return "encoder-decoder (T5) model: NEXA plans encoder-only and decoder-only models"
    if row["quantization"]:
        return f"{row['quantization']} 4-bit base weights (bitsandbytes, QLoRA): NEXA plans 16/32-bit weights"
    if row["optimizer"] != "adamw":
        return f"{row['optimizer']} optimizer: NEXA plans AdamW (two fp32 moments per trainable parameter)"
    if peft and peft["method"] != "lora":
        return f"{peft['method']}: not LoRA; NEXA plans LoRA or full fine-tuning"
    if row["parallelism"]["kind"] == "fsdp":
        return "PyTorch FSDP: NEXA plans DeepSpeed ZeRO (other buffers, frozen weights sharded differently)"
    if row["model"] is None:
        wide = sorted(set(peft.get("targets", [])) - {"q", "k", "v"})
        also = f"; its LoRA also adapts {', '.join(wide)} (NEXA plans peft's default targets)" if wide else ""
        return f"{row['published_model']} is not in NEXA's catalogue{also}"
    if peft:
        model_type = catalogue()[row["model"]].config["model_type"]
        defaults = _default_lora_targets(model_type)
        extra = set(peft["targets"]) - defaults
        if extra:
            return (
                f"LoRA on {', '.join(sorted(extra))}: NEXA plans peft's default targets for {model_type} "
                f"({', '.join(sorted(defaults))})"
            )
    if row["precision"] == "bf16-true" and not peft and _pure_bf16() is None:
        return (
            "pure bf16 full fine-tune (bf16 weights, gradients and AdamW states, no fp32 master copy): "
            "NEXA's bf16 is mixed precision"
        )
    for extra, why in (
        ("activation offloading", "activations offloaded to host during the forward pass"),
        ("torch.compile", "torch.compile fuses kernels and frees activations its own way"),
    ):
        if extra in row["extras"]:
            return f"{why}: not a NEXA option"
    return None


def _precision(row: dict[str, Any]) -> Precision:
    value = row["precision"]
    if value == "bf16-true" and not row["peft"]:
        pure = _pure_bf16()
        assert pure is not None  # why_inexpressible refused the row otherwise
        return pure
    # LoRA in bf16-true keeps the frozen weights in bf16 like NEXA's bf16 LoRA; the adapters' own
    # states (under 1 % of the weights here) are the only difference.
    return {"fp32": Precision.FP32, "fp16-amp": Precision.FP16, "bf16-mixed": Precision.BF16}.get(
        value, Precision.BF16
    )


def plan_config(row: dict[str, Any]) -> PlanConfig:
    peft = row["peft"] or {}
    par = row["parallelism"]
    kwargs: dict[str, Any] = {"attention": row["attention"]}
    task = Task.CAUSAL_LM if row["task"] in ("causal-lm", "masked-lm") else Task(row["task"])
    return PlanConfig(
        model=row["model"],
        task=task,
        num_labels=row["num_labels"] or 2,
        precision=_precision(row),
        batch_size=row["batch_size"],
        seq_len=row["seq_len"],
        gradient_checkpointing=row["gradient_checkpointing"],
        lora=bool(peft),
        lora_rank=peft.get("rank", 8),
        gpus=par["gpus"],
        # Only decides the plan's "fits" flag, which is not compared here; 80 GiB when the source does not say.
        gpu_memory_gb=row["gpu_memory_gb"] or 80,
        host_memory_gb=HOST_MEMORY_GB,
        **kwargs,
    )


def pick_estimate(plan: Plan, row: dict[str, Any]) -> Estimate:
    par = row["parallelism"]
    stage = par["zero_stage"] or 0
    for est in plan.estimates:
        lay = est.layout
        if (lay.zero_stage, lay.offload_optimizer, lay.offload_param) == (
            stage,
            bool(par["offload_optimizer"]),
            bool(par["offload_param"]),
        ):
            return est
    raise LookupError(f"{row['id']}: the plan has no ZeRO-{stage} layout with these offloads")


def evaluate_row(row: dict[str, Any], calibration=DEFAULT_CALIBRATION) -> Result:
    published = published_bytes(row)
    reason = why_inexpressible(row)
    if reason is not None:
        return Result(row, published, reason)
    config = plan_config(row)
    plan = make_plan(config, calibration=calibration)
    est = pick_estimate(plan, row)
    per_gpu = est.per_gpu
    note = ""
    comparable = comparable_bytes(per_gpu, row["metric"], calibration)
    if row["seq_len_kind"] == "data-dependent":
        # Expressible but for the batch shapes: the estimate at the cap is an upper bound, reported as such.
        reason = (
            f"sequence lengths depend on the data (batches padded to their longest example, cap "
            f"{row['seq_len']}); the batch shapes behind the figure are not published"
        )
    return Result(row, published, reason, per_gpu.total_bytes, comparable, note)


def evaluate(rows: list[dict[str, Any]], calibration=DEFAULT_CALIBRATION) -> list[Result]:
    return [evaluate_row(r, calibration) for r in rows]


def summary(row: dict[str, Any]) -> str:
    peft = row["peft"]
    par = row["parallelism"]
    parts = [row["published_model"], row["task"], f"b{row['batch_size']}"]
    parts.append(f"s{row['seq_len']}" if row["seq_len"] else "s?")
    parts.append(row["precision"])
    if peft:
        parts.append(f"{peft['method']}" + (f" r{peft['rank']}" if "rank" in peft else ""))
    if row["quantization"]:
        parts.append(row["quantization"])
    if row["optimizer"] != "adamw":
        parts.append(row["optimizer"])
    if row["gradient_checkpointing"]:
        parts.append("ckpt")
    if par["kind"] == "deepspeed":
        parts.append(
            f"ZeRO-{par['zero_stage']}"
            + (" opt→CPU" if par["offload_optimizer"] else "")
            + (" param→CPU" if par["offload_param"] else "")
        )
    elif par["kind"] == "fsdp":
        parts.append("FSDP")
    if par["gpus"] > 1:
        parts.append(f"{par['gpus']} GPUs")
    parts.append(row["attention"])
    return " ".join(str(p) for p in parts)


def _median_abs(results: list[Result]) -> float | None:
    errs = [abs(r.error) for r in results if r.expressible and r.error is not None]
    return statistics.median(errs) if errs else None


def report(results: list[Result]) -> str:
    lines = [
        f"{'row':72s} {'metric':20s} {'published':>9s} {'NEXA tot':>8s} {'NEXA cmp':>8s} {'error':>7s}  configuration",
        f"{'':72s} {'':20s} {'GiB':>9s} {'GiB':>8s} {'GiB':>8s}",
    ]
    for r in results:
        row = r.row
        pub = f"{r.published_bytes / GIB:9.2f}"
        if r.expressible:
            lines.append(
                f"{row['id']:72s} {row['metric']:20s} {pub} {r.total_bytes / GIB:8.2f} {r.comparable / GIB:8.2f} "
                f"{r.error:+7.1%}  {summary(row)}" + (f" [{r.added_note}]" if r.added_note else "")
            )
        elif r.comparable is not None:
            holds = "holds" if r.comparable >= r.published_bytes else "VIOLATED"
            lines.append(
                f"{row['id']:72s} {row['metric']:20s} {pub} {r.total_bytes / GIB:8.2f} {r.comparable / GIB:8.2f} "
                f"{'bound':>7s}  {summary(row)}; not expressible: {r.reason}; estimate at the cap >= published: {holds}"
            )
        else:
            lines.append(
                f"{row['id']:72s} {row['metric']:20s} {pub} {'-':>8s} {'-':>8s} {'-':>7s}  {summary(row)}; "
                f"not expressible: {r.reason}"
            )
    lines.append("")
    by_source: dict[str, list[Result]] = {}
    for r in results:
        by_source.setdefault(r.row["source"], []).append(r)
    for source, rs in by_source.items():
        med = _median_abs(rs)
        n = sum(r.expressible for r in rs)
        lines.append(
            f"{source:30s} {n:2d} of {len(rs):2d} rows expressible"
            + (f", median |error| {med:.1%}" if med is not None else "")
        )
    expressible = [r for r in results if r.expressible]
    errs = [abs(r.error) for r in expressible if r.error is not None]
    lines.append(
        f"overall: {len(expressible)} of {len(results)} rows expressible; median |error| "
        f"{statistics.median(errs):.1%}, worst {max(errs):.1%} (goal: median <= 15 %)"
        if errs
        else "overall: no expressible rows"
    )
    return "\n".join(lines)


def markdown(results: list[Result]) -> str:
    """The docs/BENCHMARKS.md table: compared rows with their errors, then the rest with their reasons."""
    lines = [
        "| row | configuration | metric | published GiB | NEXA total GiB | NEXA comparable GiB | error |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        if r.comparable is None:
            continue
        err = f"{r.error:+.1%}" if r.expressible else "bound: " + ("holds" if r.error >= 0 else "violated")
        note = f"; {r.added_note}" if r.added_note else ""
        lines.append(
            f"| `{r.row['id']}` | {summary(r.row)}{note} | {r.row['metric']} | {r.published_bytes / GIB:.2f} "
            f"| {r.total_bytes / GIB:.2f} | {r.comparable / GIB:.2f} | {err} |"
        )
    lines += ["", "| row | published GiB | why NEXA cannot express it |", "| --- | ---: | --- |"]
    for r in results:
        if r.comparable is None:
            lines.append(f"| `{r.row['id']}` | {r.published_bytes / GIB:.2f} | {r.reason} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DATA, help="rows to check (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--markdown", action="store_true", help="print the docs/BENCHMARKS.md tables")
    args = parser.parse_args(argv)
    results = evaluate(load(args.data)["rows"])
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "id": r.row["id"],
                        "metric": r.row["metric"],
                        "published_bytes": r.published_bytes,
                        "nexa_total_bytes": r.total_bytes,
                        "nexa_comparable_bytes": r.comparable,
                        "error": r.error,
                        "expressible": r.expressible,
                        "reason": r.reason,
                        "note": r.added_note,
                    }
                    for r in results
                ],
                indent=1,
            )
        )
    elif args.markdown:
        print(markdown(results))
    else:
        print(report(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
