"""Human-readable text for plans (the CLI's table); the app renders the same Plan with plotly."""

from __future__ import annotations

from nexa_core.memory import GIB
from nexa_core.planner import Plan


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
        rows.append(row)
    return rows


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
    lines += ["", "Recommendation: " + plan.recommendation.reason]
    lines += [f"Note: {n}" for n in plan.notes]
    return "\n".join(lines)
