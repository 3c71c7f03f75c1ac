"""Bytes of live tensor storages created inside a block: a device-independent peak-memory meter.

torch.cuda.max_memory_allocated needs a GPU and the CPU allocator keeps no such figure, so this
TorchDispatchMode sees every aten op, adds the storages its outputs bring into being and subtracts
each one when Python frees it. A view or an in-place result shares a storage an input already had
(detach, t, add_): that is not a new allocation and is not counted.
"""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


def _storage_keys(tree) -> set[int]:
    return {t.untyped_storage().data_ptr() for t in tree_flatten(tree)[0] if isinstance(t, torch.Tensor)}


class LiveStorageBytes(TorchDispatchMode):
    """`live`: bytes of the storages created inside it and still alive; `peak`: the most at once."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self.seen: set[int] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = _storage_keys((args, kwargs))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            key, size = storage.data_ptr(), storage.nbytes()
            if key in self.seen or key in inputs or size == 0:
                continue
            self.seen.add(key)
            self.live += size
            self.peak = max(self.peak, self.live)
            weakref.finalize(storage, self._freed, key, size)
        return out

    def _freed(self, key: int, size: int) -> None:
        self.seen.discard(key)
        self.live -= size
