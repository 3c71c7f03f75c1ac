"""When DeepSpeed's fp32 gradient partition exists: during the optimizer step only, or through backward.

One CPU rank, bf16, ZeRO 1-3, a small random-initialised GPT-2 (2 layers, width 128, vocabulary
1000) and plain SGD (no state, steps in place, so every tensor the step creates is DeepSpeed's).
Step 1 warms up (DeepSpeed allocates its gradient buffers in the first backward); step 2 is
measured with a TorchDispatchMode that counts the bytes of every storage the ops create and that
is still alive: what forward and backward leave alive at their end, and the step's own peak. The
planner's GPU estimate takes the step's peak to be the fp32 gradients of the rank's partition (4
bytes per trainable parameter for the cast, and 2 for the flat 16-bit copy it is cast from:
memory.zero_step_gradients) and puts nothing of them beside the activations. Printed per stage:
both figures, in bytes and per trainable parameter, and the planner's term.

    python benchmarks/zero_step_grads.py [--stages 1,2,3]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.live_bytes import LiveStorageBytes  # noqa: E402


def measure(stage: int) -> dict[str, int]:
    """{trainable, backward_left_bytes, step_peak_bytes, step_left_bytes} of the second step at this ZeRO stage."""
    from nexa_core.device_manager import ensure_distributed_env

    ensure_distributed_env()
    import deepspeed
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_embd=128, n_layer=2, n_head=2, vocab_size=1000, n_positions=64))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    config = {
        "train_micro_batch_size_per_gpu": 2,
        "bf16": {"enabled": True},
        "zero_optimization": {"stage": stage},
        "zero_allow_untested_optimizer": True,
    }
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, foreach=False)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    batch = torch.randint(0, 1000, (2, 64))
    engine.backward(engine(input_ids=batch, labels=batch).loss)
    engine.step()
    with LiveStorageBytes() as backward:
        loss = engine(input_ids=batch, labels=batch).loss
        engine.backward(loss)
        del loss
    with LiveStorageBytes() as step:
        engine.step()
    engine.destroy()
    return {
        "trainable": trainable,
        "backward_left_bytes": backward.live,
        "step_peak_bytes": step.peak,
        "step_left_bytes": step.live,
    }


def planned_step_bytes(stage: int, trainable: int) -> int:
    """The planner's bytes of the gradients a ZeRO step creates, for this model on one GPU rank
    (the measurement runs DeepSpeed's same optimizer code on the CPU)."""
    from nexa_core.enums import Precision
    from nexa_core.memory import Layout, Workload, zero_step_gradients

    workload = Workload(trainable, trainable, trainable, None, Precision.BF16)
    return zero_step_gradients(workload, Layout(stage, False, False, 1, 1))[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", default="1,2,3", help="comma-separated ZeRO stages (default 1,2,3)")
    stages = [int(x) for x in parser.parse_args(argv).stages.split(",")]
    worst = 0.0
    for stage in stages:
        m = measure(stage)
        planned = planned_step_bytes(stage, m["trainable"])
        error = m["step_peak_bytes"] / planned - 1
        worst = max(worst, abs(error))
        print(
            f"ZeRO-{stage}: {m['trainable']:,} trainable; forward+backward left alive "
            f"{m['backward_left_bytes']:,} B ({m['backward_left_bytes'] / m['trainable']:.2f} B a parameter); "
            f"step peak {m['step_peak_bytes']:,} B ({m['step_peak_bytes'] / m['trainable']:.2f} B a parameter), "
            f"planner {planned:,} B ({error:+.1%}); step left alive {m['step_left_bytes']:,} B"
        )
    print(f"worst |error| of the planner's step term: {worst:.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
