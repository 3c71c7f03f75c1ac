"""Checkpoints are loaded without running pickled code. Model weights come from safetensors;
Accelerate already calls ``torch.load(weights_only=True)``; DeepSpeed's checkpoint engine and
``zero_to_fp32`` pass ``weights_only=False``, which would execute any code a crafted ``*.pt`` file
carries. Inside ``weights_only_torch_load()`` every ``torch.load`` is forced to ``weights_only=True``
with only the few plain DeepSpeed classes its own checkpoints hold allowed."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def deepspeed_safe_globals() -> list[Any]:
    """The non-tensor classes in DeepSpeed ZeRO checkpoints (found by loading real ZeRO-2/3 ones):
    an IntEnum, the loss-scaler state and a named tuple of fragment offsets. None can run code."""
    if "deepspeed" not in sys.modules:  # plain Accelerate checkpoints need none (and no slow import)
        return []
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [ZeroStageEnum, LossScaler, DynamicLossScaler, fragment_address]


@contextmanager
def weights_only_torch_load() -> Iterator[None]:
    """Force ``torch.load(weights_only=True)`` for everything loaded inside (DeepSpeed included)."""
    import torch

    original = torch.load
    allowed = deepspeed_safe_globals()

    def load(f: Any, *args: Any, **kwargs: Any) -> Any:
        kwargs["weights_only"] = True  # DeepSpeed asks for False; a checkpoint is data, never code
        with torch.serialization.safe_globals(allowed):
            return original(f, *args, **kwargs)

    torch.load = load
    try:
        yield
    finally:
        torch.load = original
