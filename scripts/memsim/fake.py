"""A fake CUDA device for memory simulation: FakeTensorMode with a MemoryTracker, on a CPU-only torch build.

The process must have loaded the fake CUDA runtime (`shim.load_fake_cuda`) before importing torch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode, unset_fake_temporarily

from memsim.tracker import MemoryTracker

T = TypeVar("T")


def check_fake_cuda_loaded() -> None:
    """Fail with the fix when the fake CUDA runtime was not loaded before torch."""
    if torch._C._get_accelerator().type != "cuda":
        raise RuntimeError("memory simulation needs the fake CUDA runtime loaded before `import torch`: run it "
                           "through scripts/simulate_memory.py, or call memsim/shim.py's load_fake_cuda() first")


def built_on_meta(build: Callable[[], T]) -> T:
    """`build()` with every tensor on the meta device: no memory, no random initialisation."""
    with unset_fake_temporarily(), torch.device("meta"):
        return build()


def rebinding_to(module: torch.nn.Module, *args, **kwargs) -> torch.nn.Module:
    """`Module.to` for fake tensors: the real one swaps each parameter in place, which fake tensors refuse (the
    tracker holds weak references to them), so each is rebound to a moved copy (the old storage is freed as `to`
    frees it). Only frozen parts move once an optimizer exists, so no optimizer keeps a stale parameter."""
    device, dtype = torch._C._nn._parse_to(*args, **kwargs)[:2]
    for sub in module.modules():
        for table in (sub._parameters, sub._buffers):
            for key, tensor in table.items():
                if tensor is None:
                    continue
                cast = dtype if dtype is not None and tensor.is_floating_point() else tensor.dtype
                moved = tensor.detach().to(device or tensor.device, cast)
                if moved.device != tensor.device or moved.dtype != tensor.dtype:
                    table[key] = torch.nn.Parameter(moved, tensor.requires_grad) if key in sub._parameters else moved
    return module


def flash_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    """SDPA as a GPU runs it for fp16/bf16 without a mask (flash attention: no stored score matrix); the math path
    otherwise, as a CPU build would pick for every call."""
    if attn_mask is None and query.dtype in (torch.float16, torch.bfloat16) and query.device.type == "cuda":
        return torch.ops.aten._scaled_dot_product_flash_attention(
            query, key, value, dropout_p, is_causal, scale=scale)[0]
    return _math_sdpa(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale,
                      enable_gqa=enable_gqa)


_math_sdpa = F.scaled_dot_product_attention


@contextmanager
def fake_cuda() -> Iterator[MemoryTracker]:
    """Fake CUDA tensors (no data) with a tracker of their live bytes; autocast("cuda"), flash SDPA and `Module.to`
    enabled."""
    check_fake_cuda_loaded()
    amp = torch.cuda.amp.common
    saved = (amp.amp_definitely_not_available, F.scaled_dot_product_attention, torch.cuda.synchronize,
             torch.cuda.is_bf16_supported, torch.nn.Module.to)
    amp.amp_definitely_not_available = lambda: False  # else autocast("cuda") turns itself off on a CPU build
    F.scaled_dot_product_attention = flash_attention
    torch.cuda.synchronize = lambda device=None: None  # bitsandbytes synchronises around its kernels
    torch.cuda.is_bf16_supported = lambda including_emulation=True: True  # a bf16-capable GPU (Ampere and later)
    torch.nn.Module.to = rebinding_to
    tracker = MemoryTracker("cuda")
    try:
        with FakeTensorMode(allow_non_fake_inputs=True), tracker:
            yield tracker
    finally:
        (amp.amp_definitely_not_available, F.scaled_dot_product_attention, torch.cuda.synchronize,
         torch.cuda.is_bf16_supported, torch.nn.Module.to) = saved
