"""Model FLOPs of one training sample, counted from the run's own modules on the meta device (shapes only, nothing
computed): the transformer's forward and the backward autograd really runs (weight gradients only for trained
weights, so LoRA's frozen layers cost their input gradients alone), plus the frozen encoders' forward when a batch
makes the step run them (pixels through the VQ encoder, prompt ids through CLIP)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map
from torch.utils.flop_counter import flop_registry

from amused_lightning.model.presets import CLIP_MAX_LENGTH

MICRO_COND_SIZE = 5  # orig width, orig height, crop top, crop left, aesthetic score
RECOMPUTES = "recomputes_in_backward"
"""A class attribute that marks a block class wrapped to recompute its activations in backward (activation
checkpointing): its last base is the plain class."""


class _FlopSum(TorchDispatchMode):
    """Adds up torch's own FLOP formulas (matmuls, convolutions, attention) of every op dispatched inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            shapes = (tree_map(_shape, args), tree_map(_shape, kwargs), tree_map(_shape, out))
            self.total += formula(*shapes[0], **shapes[1], out_val=shapes[2])
        return out


def _shape(value):
    return value.shape if isinstance(value, torch.Tensor) else value


def _stand_in(tensor: torch.Tensor) -> torch.Tensor:
    # FLOPs do not depend on the dtype: floats become fp32, so frozen weights stored in fp16 (FrozenPlacement) meet
    # fp32 inputs without the autocast a training step runs under.
    dtype = torch.float32 if tensor.is_floating_point() else tensor.dtype
    return torch.empty(tensor.shape, dtype=dtype, device="meta")


def meta_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """Meta-device fp32 stand-ins of `module`'s parameters (trained ones still requiring grad) and buffers."""
    state = {name: _stand_in(p).requires_grad_(p.requires_grad) for name, p in module.named_parameters()}
    state.update({name: _stand_in(b) for name, b in module.named_buffers()})
    return state


@contextmanager
def plain_forward(module: nn.Module) -> Iterator[None]:
    """Inside, `module` runs uncompiled and without activation checkpointing: a count of model FLOPs leaves out
    recomputation, and compiling for meta tensors would cost a compile."""
    wrapped = [(m, type(m)) for m in module.modules() if getattr(type(m), RECOMPUTES, False)]
    compiled = module.__dict__.get("_compiled_call_impl")
    try:
        for m, cls in wrapped:
            m.__class__ = cls.__bases__[-1]
        module._compiled_call_impl = None
        yield
    finally:
        for m, cls in wrapped:
            m.__class__ = cls
        module._compiled_call_impl = compiled


def count_flops(module: nn.Module, run: Callable[[nn.Module, dict[str, torch.Tensor]], None]) -> int:
    """FLOPs of `run(module, meta_state)`, which calls `module` through `torch.func.functional_call` on meta tensors.
    Attention is counted as its math (two batched matmuls each way), the same on every device."""
    state = meta_state(module)
    with plain_forward(module), sdpa_kernel(SDPBackend.MATH), _FlopSum() as counter:
        run(module, state)
    return counter.total


def _meta(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.zeros(*shape, dtype=dtype, device="meta")


def gradients(output: torch.Tensor, inputs: list[torch.Tensor]) -> None:
    """The backward autograd runs for `inputs` (no `.grad` is written: the tensors are meta stand-ins)."""
    if inputs:
        torch.autograd.grad(output.float().sum(), inputs, allow_unused=True)


def every_layer_flops(transformer: nn.Module, height: int, width: int, text_trains: bool) -> int:
    """Forward and backward FLOPs of one sample through every layer of `transformer` as it is."""
    config = transformer.config

    def run(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
        hidden = _meta(1, CLIP_MAX_LENGTH, config.encoder_hidden_size).requires_grad_(text_trains)
        pooled = _meta(1, config.cond_embed_dim).requires_grad_(text_trains)
        logits = torch.func.functional_call(module, state, (_meta(1, height, width, dtype=torch.long),), {
            "encoder_hidden_states": hidden, "pooled_text_emb": pooled, "micro_conds": _meta(1, MICRO_COND_SIZE)})
        trained = [t for t in state.values() if t.requires_grad]
        gradients(logits, trained + ([hidden, pooled] if text_trains else []))

    return count_flops(transformer, run)


def alike(layers: nn.ModuleList) -> bool:
    """Whether every layer has the same parameters (names, shapes, trained or not): the same FLOPs each."""
    shapes = [[(name, p.shape, p.requires_grad) for name, p in layer.named_parameters()] for layer in layers]
    return all(s == shapes[0] for s in shapes) and len({type(layer) for layer in layers}) == 1


@contextmanager
def first_layers(transformer: nn.Module, count: int) -> Iterator[None]:
    """Inside, `transformer` runs only its first `count` transformer layers."""
    layers = transformer.transformer_layers
    transformer.transformer_layers = nn.ModuleList(layers[:count])
    try:
        yield
    finally:
        transformer.transformer_layers = layers


def transformer_training_flops(transformer: nn.Module, height: int, width: int, text_trains: bool = False) -> int:
    """Forward and backward FLOPs of one sample of a (height x width)-token grid, all logits computed (the model's
    FLOPs; the masked head saves a little of them); with `text_trains`, the gradient of the text conditioning too.
    Alike layers are counted from one and two of them (a layer's FLOPs are the difference)."""
    layers = getattr(transformer, "transformer_layers", None)
    if layers is None or len(layers) < 3 or not alike(layers):
        return every_layer_flops(transformer, height, width, text_trains)
    counts = []
    for count in (1, 2):
        with first_layers(transformer, count):
            counts.append(every_layer_flops(transformer, height, width, text_trains))
    return counts[0] + (len(layers) - 1) * (counts[1] - counts[0])


class _VQEncode(nn.Module):
    """The part of the VQ model a training step runs on pixels: encoder and quantizer."""

    def __init__(self, vqvae: nn.Module):
        super().__init__()
        self.vqvae = vqvae

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.vqvae.quantize(self.vqvae.encode(pixels).latents)[2][2]


def vq_encode_flops(vqvae: nn.Module, height: int, width: int) -> int:
    """FLOPs of encoding one (height x width)-pixel image to tokens."""
    return count_flops(_VQEncode(vqvae), lambda m, s: torch.func.functional_call(m, s, (_meta(1, 3, height, width),)))


def text_encode_flops(text_encoder: nn.Module) -> int:
    """FLOPs of CLIP on one prompt; forward and backward (for its trained weights) when any weight trains."""

    def run(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
        ids = _meta(1, CLIP_MAX_LENGTH, dtype=torch.long)
        out = torch.func.functional_call(module, state, (ids,), {"output_hidden_states": True, "return_dict": True})
        gradients(out.hidden_states[-2].sum() + out.text_embeds.sum(), [t for t in state.values() if t.requires_grad])

    return count_flops(text_encoder, run)
