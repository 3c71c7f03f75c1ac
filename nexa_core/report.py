"""Human-readable text for plans (the CLI's table); the app renders the same Plan with plotly."""

from __future__ import annotations

from typing import Any

from nexa_core import learned
from nexa_core.memory import GIB
from nexa_core.planner import Estimate, Plan


def gib(n: int) -> str:
    return f"{n / GIB:8.2f}"


def plan_rows(plan: Plan) -> list[dict[str, object]]:
    """One row per layout, in GiB, for the Plan page: the memory terms per GPU, or on a CPU-only plan
    (where every per-GPU term is 0) the host's terms, as the CLI's table (``plan_text``) shows them."""
    rows = []
    where = "" if plan.gpus_per_node else "host "
    for e in plan.estimates:
        source = e.per_gpu if plan.gpus_per_node else e.host
        row: dict[str, object] = {"option": e.label}
        for term in ("params", "gradients", "optimizer", "activations", "overhead"):
            row[f"{where}{term} GiB"] = round(getattr(source, f"{term}_bytes") / GIB, 3)
        if plan.gpus_per_node:
            row["per-GPU total GiB"] = round(e.per_gpu.total_bytes / GIB, 3)
        row["host total GiB"] = round(e.host.total_bytes / GIB, 3)
        row["fits"] = "yes" if e.fits else "no"
        row["from your runs"] = learned_text(plan, e)
        rows.append(row)
    return rows


def learned_text(plan: Plan, e: Estimate) -> str | None:
    """The estimate corrected by the user's past runs on this machine, with its band and how many
    runs it rests on, for the memory the plan checks (per GPU, or host per node on CPU)."""
    found = e.learned.get(learned.GPU if plan.gpus_per_node else learned.HOST)
    if not found:
        return None
    per_node = 1 if plan.gpus_per_node else e.layout.ranks_per_node  # host: per rank × ranks
    return (
        f"{found['corrected_bytes'] * per_node / GIB:.2f} GiB ±{found['band'] * 100:.0f} % "
        f"({found['runs']} runs, {found['scope']})"
    )


def estimate_metrics(estimate: dict[str, Any]) -> list[tuple[str, str, str | None]]:
    """(label, value, help) for a run's estimate (runs.estimate_for): the layout, then per GPU and host
    RAM expected for its data, each with the worst case at the --seq-len cap in its help."""
    seq = estimate.get("seq_len")
    out: list[tuple[str, str, str | None]] = [("Layout", str(estimate.get("label")), None)]
    for key, label in (("per_gpu", "per GPU"), ("host", "host RAM")):
        cap = estimate.get(f"{key}_total_bytes") or 0
        expected = estimate.get(f"expected_{key}_total_bytes")
        if key == "per_gpu" and not cap:
            out.append(("Estimated per GPU", "CPU only", "No GPU: the run trains on the CPU"))
            continue
        cap_text = f"worst case at the --seq-len {seq} cap: {cap / GIB:.2f} GiB"
        if expected is None:
            out.append((f"Estimated {label} (at the cap)", f"{cap / GIB:.2f} GiB", cap_text))
        else:
            out.append((f"Estimated {label} for this data", f"{expected / GIB:.2f} GiB", cap_text))
    return out


def data_text(estimate: dict[str, Any]) -> str | None:
    """One line on the training data the estimate planned for, or why it could not."""
    data = estimate.get("data")
    if not data:
        return estimate.get("data_note")
    rows, tokens = data["longest"]
    padded = " (every batch padded to --seq-len)" if data["padded_to_cap"] else ""
    return (
        f"Training data: {data['examples']:,} examples, tokens per example median {data['median_tokens']}, "
        f"95th percentile {data['p95_tokens']}, longest {data['max_tokens']} ({data['truncated']:,} cut at "
        f"--seq-len {data['seq_len']}); {data['batches']:,} batches per rank, the longest {rows} × {tokens} "
        f"tokens{padded}."
    )


def plan_text(plan: Plan) -> str:
    s = plan.size
    cfg = plan.config
    where = (
        f"{plan.gpus_per_node} GPU(s)/node × {cfg.nodes} node(s)"
        if plan.gpus_per_node
        else f"CPU only × {cfg.nodes} node(s)"
    )
    lines = [
        f"Model: {cfg.model or 'hypothetical'}   task: {cfg.task}   precision: {plan.precision}   {where}",
        f"Parameters: {s.params:,}   trainable: {s.trainable_params:,}   largest layer: {s.largest_layer_params:,}",
        f"Batch {cfg.batch_size} × seq {cfg.seq_len}"
        + ("   gradient checkpointing" if cfg.gradient_checkpointing else "")
        + (f"   LoRA r={cfg.lora_rank}" if cfg.lora else ""),
        "",
    ]
    header = (
        f"{'option':28s} {'params':>8s} {'grads':>8s} {'optim':>8s} {'activ':>8s} {'overhd':>8s} "
        f"{'GPU tot':>8s} {'host tot':>8s}  fits"
    )
    lines += [header + "   (GiB; GPU columns per GPU, host per node)", "-" * len(header)]
    for e in plan.estimates:
        source = e.per_gpu if plan.gpus_per_node else e.host
        lines.append(
            f"{e.label:28s} {gib(source.params_bytes)} {gib(source.gradients_bytes)} {gib(source.optimizer_bytes)} "
            f"{gib(source.activations_bytes)} {gib(source.overhead_bytes)} {gib(e.per_gpu.total_bytes)} "
            f"{gib(e.host.total_bytes)}  {'yes' if e.fits else 'no'}"
        )
    if not plan.gpus_per_node:
        lines.append("(CPU-only: the component columns show host bytes)")
    corrected = [(e.label, learned_text(plan, e)) for e in plan.estimates]
    if any(text for _, text in corrected):
        lines += [
            "",
            "From your past runs on this machine (formula × median measured/estimated, 10-90 % band):",
        ]
        lines += [f"  {label:28s} {text}" for label, text in corrected if text]
    lines += ["", "Recommendation: " + plan.recommendation.reason]
    lines += [f"Note: {n}" for n in plan.notes]
    return "\n".join(lines)
