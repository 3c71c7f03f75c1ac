"""What a run really holds, read from the objects Accelerate and DeepSpeed built rather than from
NEXA's settings: the layout its DeepSpeed engine runs (stage, optimizer, offloads, partitioned
parameters) and the dtypes of its weights, of the tensors the optimizer steps and of its Adam
states. The trainer records both as events (tests/test_trainer.py, tests/test_llm_scale.py)."""

from __future__ import annotations

from typing import Any


def engine_report(model, optimizer) -> dict[str, Any]:
    """What DeepSpeed really set up, read from the engine and its optimizer rather than from NEXA's
    settings: the ZeRO stage, the optimizer class, whether the optimizer states and the parameters
    live on the CPU, and how many of the module's parameters are partitioned (ZeRO-3)."""
    if not hasattr(model, "zero_optimization_stage"):  # Accelerate without DeepSpeed
        return {"deepspeed": False}
    zero = getattr(optimizer, "optimizer", optimizer)  # Accelerate's wrapper -> DeepSpeed's optimizer
    params = list(model.module.parameters())
    return {
        "deepspeed": True,
        "zero_stage": int(model.zero_optimization_stage()),
        "optimizer": type(zero).__name__,
        # stage 1-2: DeepSpeedZeroOptimizer.cpu_offload; stage 3: .offload_optimizer / .offload_param
        "offload_optimizer": bool(
            getattr(zero, "cpu_offload", False) or getattr(zero, "offload_optimizer", False)
        ),
        "offload_param": bool(getattr(zero, "offload_param", False)),
        "partitioned_params": sum(hasattr(p, "ds_tensor") for p in params),
        "params": len(params),
    }


def engine_text(report: dict[str, Any]) -> str:
    if not report["deepspeed"]:
        return "DeepSpeed off"
    off = {True: "cpu", False: "none"}
    return (
        f"ZeRO stage {report['zero_stage']} ({report['optimizer']}), optimizer offload "
        f"{off[report['offload_optimizer']]}, parameter offload {off[report['offload_param']]}, "
        f"parameters partitioned {report['partitioned_params']}/{report['params']}"
    )


def _dtype_name(dtype) -> str:
    return {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}.get(
        str(dtype).removeprefix("torch."), str(dtype)
    )


def precision_report(model, optimizer) -> dict[str, list[str]]:
    """The dtypes a run really holds: the model's weights (ZeRO-3: their partitions), the tensors the
    optimizer steps (DeepSpeed's fp32 master copy, or the weights themselves) and its Adam states.
    Read from the objects, not from the configuration, so a checkpoint's stored dtype or a launcher
    default that overrode the chosen precision shows here."""
    weights = {_dtype_name(getattr(p, "ds_tensor", p).dtype) for p in model.parameters()}
    inner = optimizer
    while hasattr(inner, "optimizer"):  # Accelerate's wrapper -> DeepSpeed's ZeRO optimizer -> torch's
        inner = inner.optimizer
    # ZeRO-3 empties the inner optimizer's param groups between steps; its state keeps the tensors
    stepped = {_dtype_name(p.dtype) for g in inner.param_groups for p in g["params"] if p.numel()}
    stepped |= {_dtype_name(p.dtype) for p in inner.state if hasattr(p, "dtype")}
    states = {
        _dtype_name(v.dtype)
        for st in inner.state.values()
        for k, v in st.items()
        if k in ("exp_avg", "exp_avg_sq") and hasattr(v, "dtype")
    }
    return {
        "weights": sorted(weights),
        "optimizer_params": sorted(stepped),
        "optimizer_states": sorted(states),
    }


def precision_text(report: dict[str, list[str]]) -> str:
    return " ".join(f"{k}={'/'.join(v) or 'none'}" for k, v in report.items())
