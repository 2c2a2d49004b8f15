"""Peak device memory of everything run under it, counted from the storages that ops create and free.

Works on real tensors and on FakeTensors (shapes, dtypes and devices without data), where it gives what
`torch.cuda.max_memory_allocated` would report: each storage rounded up to the caching allocator's 512-byte blocks,
counted from the op that creates it until its last reference goes.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch._subclasses.fake_tensor import FakeTensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

BLOCK = 512  # the CUDA caching allocator rounds every allocation up to this
aten = torch.ops.aten
_BOOL_INDEXED = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default, aten._index_put_impl_.default}


def rounded(nbytes: int) -> int:
    """Bytes the caching allocator hands out for a request of `nbytes`."""
    return -(-nbytes // BLOCK) * BLOCK


def all_positions(mask: torch.Tensor) -> list[torch.Tensor]:
    """Long indices (one per dimension) as many as a fake boolean `mask` has entries: the largest result a
    data-dependent mask can give. Fake tensors carry no values, so only the count matters."""
    return [mask.new_zeros(mask.numel(), dtype=torch.long) for _ in range(mask.dim())]


def _is_fake_mask(index) -> bool:
    return isinstance(index, FakeTensor) and index.dtype == torch.bool


def static_indices(func, args: tuple) -> tuple:
    """Arguments of an index op with each fake boolean mask replaced by all its positions (its True count is
    unknown without data: taking every entry gives the op's largest output)."""
    if func not in _BOOL_INDEXED or not any(_is_fake_mask(i) for i in args[1]):
        return args
    indices = []
    for index in args[1]:
        indices += all_positions(index) if _is_fake_mask(index) else [index]
    return (args[0], indices, *args[2:])


def placeholder_scalar(tensor: torch.Tensor) -> bool | int | float:
    """A value for `.item()` on a fake tensor, which has none. Device-side flags read zero, so NaN and overflow
    tests pass (GradScaler steps); host-side scalars (optimizer step counts, sampling temperatures) read one, which
    keeps bias corrections finite. No shape in a training step depends on such a value."""
    if tensor.dtype == torch.bool:
        return False
    value = 0 if tensor.device.type != "cpu" else 1
    return float(value) if tensor.dtype.is_floating_point else value


class MemoryTracker(TorchDispatchMode):
    """Live bytes on `device_type` and their peak, with the phase (a label set by `phase`) in which it was reached."""

    def __init__(self, device_type: str = "cuda"):
        super().__init__()
        self.device_type = device_type
        self.live: dict[int, int] = {}
        self.current = self.peak = 0
        self.label, self.peak_label = "start", "start"
        self.phase_peaks: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is aten._local_scalar_dense.default and isinstance(args[0], FakeTensor):
            return placeholder_scalar(args[0])
        if func is aten.nonzero.default and isinstance(args[0], FakeTensor):
            out = args[0].new_zeros((args[0].numel(), args[0].dim()), dtype=torch.long)
        else:
            out = func(*static_indices(func, args), **(kwargs or {}))
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor) and tensor.device.type == self.device_type:
                self.track(tensor)
        return out

    def track(self, tensor: torch.Tensor) -> None:
        """Count `tensor`'s storage until it is freed (once, however many views share it)."""
        storage = tensor.untyped_storage()
        key = storage._cdata
        if key in self.live or storage.nbytes() == 0:
            return
        self.live[key] = rounded(storage.nbytes())
        weakref.finalize(storage, self._free, key)
        self.current += self.live[key]
        self.phase_peaks[self.label] = max(self.phase_peaks.get(self.label, 0), self.current)
        if self.current > self.peak:
            self.peak, self.peak_label = self.current, self.label

    def track_existing(self, tensors) -> None:
        """Count tensors created before the tracker started (weights already on the device)."""
        for tensor in tensors:
            if tensor is not None and tensor.device.type == self.device_type:
                self.track(tensor)

    def _free(self, key: int) -> None:
        self.current -= self.live.pop(key, 0)

    @contextmanager
    def phase(self, label: str) -> Iterator[None]:
        """Attribute the memory reached inside the block to `label`."""
        previous, self.label = self.label, label
        self.phase_peaks[label] = max(self.phase_peaks.get(label, 0), self.current)
        try:
            yield
        finally:
            self.label = previous
