"""A replica of diffusers' `examples/amused/train_amused.py` training step, for memory simulation only.

It holds and computes what the reference does on one GPU under `accelerate --mixed_precision fp16`: the transformer
in fp32 (LoRA on to_q/to_k/to_v when asked), CLIP cast to fp16 and the VQ model in fp32 on the device for the whole
run; every micro-batch the pixels VQ-encoded in fp32 and the prompt CLIP-encoded in fp16 under no_grad, the
transformer run under autocast with its output cast back to fp32 (accelerate's `convert_outputs_to_fp32`), the full
(B, 8192, h, w) logits reshaped to (B·L, 8192) and scored by cross-entropy, the loss divided by the accumulation
steps and scaled by the GradScaler; every step unscale, the optimizer (torch AdamW with its CUDA default, foreach,
or bitsandbytes AdamW8bit, with the script's default betas, eps and weight decay) and `zero_grad(set_to_none=True)`.
Its `--gradient_checkpointing` raises a TypeError on current diffusers, so the replica runs without it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers import UVit2DModel, VQModel
from peft import LoraConfig
from torch import nn
from torch._subclasses.fake_tensor import unset_fake_temporarily
from transformers import CLIPTextModelWithProjection

from amused_lightning.model.decoding import GenerationSettings, decode_image_tokens, generate_tokens
from amused_lightning.model.encoding import pixels_per_token
from amused_lightning.model.presets import PRESETS, clip_text_config

from memsim.common import (
    CLIP_LENGTH,
    DEVICE,
    SimResult,
    SimRow,
    autocast,
    autocast_dtype,
    pixel_batch,
    simulated_micro_batches,
)
from memsim.fake import built_on_meta, fake_cuda
from memsim.tracker import MemoryTracker

NO_DECAY = ("bias", "layer_norm.weight", "mlm_ln.weight", "embeddings.weight")  # the script's name fragments


class AcceleratedForward(nn.Module):
    """The transformer as `accelerator.prepare` returns it under fp16: forward in autocast, outputs cast to fp32."""

    def __init__(self, model: nn.Module, precision: str):
        super().__init__()
        self.model, self.precision = model, precision

    def forward(self, *args, **kwargs) -> torch.Tensor:
        with autocast(self.precision, cache_enabled=True):
            out = self.model(*args, **kwargs)
        return out.float() if out.dtype in (torch.float16, torch.bfloat16) else out


def reference_parts(row: SimRow) -> tuple[UVit2DModel, VQModel, CLIPTextModelWithProjection]:
    """Transformer (with the script's LoRA when asked), VQ model and text encoder, placed as the script places them."""
    spec = PRESETS[row.preset]
    dtype = autocast_dtype(row.precision) or torch.float32

    def build():
        model = UVit2DModel(**spec["transformer"])
        if row.mode == "lora":
            model.add_adapter(LoraConfig(r=16, lora_alpha=row.lora_alpha, target_modules=["to_q", "to_k", "to_v"]))
        # `text_encoder.to(device, dtype)`: only the cast copy ever reaches the device.
        text_encoder = CLIPTextModelWithProjection(clip_text_config(row.preset)).requires_grad_(False).to(dtype)
        return model, VQModel(**spec["vqvae"]).requires_grad_(False), text_encoder

    model, vq, text_encoder = built_on_meta(build)
    model.to_empty(device=DEVICE)
    text_encoder.to_empty(device=DEVICE)
    vq.to_empty(device=DEVICE)
    return model, vq, text_encoder


def reference_optimizer(model: nn.Module, mode: str) -> torch.optim.Optimizer:
    """The script's optimizer: two groups split by name fragment; AdamW (foreach, its CUDA default) or AdamW8bit."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [{"params": [p for n, p in named if not any(f in n for f in NO_DECAY)], "weight_decay": 1e-2},
              {"params": [p for n, p in named if any(f in n for f in NO_DECAY)], "weight_decay": 0.0}]
    kwargs = dict(lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    with unset_fake_temporarily():
        if mode == "8bit":
            import bitsandbytes

            return bitsandbytes.optim.AdamW8bit(groups, **kwargs)
        return torch.optim.AdamW(groups, foreach=True, **kwargs)


def encode_prompt(text_encoder: nn.Module, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The script's `encode_prompt`: penultimate hidden states and projected pooled embedding."""
    outputs = text_encoder(input_ids, return_dict=True, output_hidden_states=True)
    return outputs.hidden_states[-2], outputs[0]


def masked_inputs(vq: VQModel, pixels: torch.Tensor, mask_id: int, grid: int) -> tuple[torch.Tensor, torch.Tensor]:
    """VQ tokens of the whole micro-batch in fp32, the script's random mask, model inputs and labels."""
    tokens = vq.quantize(vq.encode(pixels).latents)[2][2].reshape(pixels.shape[0], -1)
    batch, seq_len = tokens.shape
    mask_prob = torch.cos(torch.rand(batch, device=DEVICE) * math.pi * 0.5)
    count = (seq_len * mask_prob).round().clamp(min=1)
    mask = torch.rand(batch, seq_len, device=DEVICE).argsort(dim=-1) < count.unsqueeze(-1)
    inputs = torch.where(mask, mask_id, tokens).reshape(batch, grid, grid)
    return inputs, torch.where(mask, tokens, -100)


def reference_loss(model: AcceleratedForward, inputs: torch.Tensor, labels: torch.Tensor, hidden: torch.Tensor,
                   pooled: torch.Tensor, micro_conds: torch.Tensor, codebook: int) -> torch.Tensor:
    """Full-vocabulary logits, permuted to (B·L, codebook) and scored against every position's label."""
    logits = model(input_ids=inputs, encoder_hidden_states=hidden, micro_conds=micro_conds, pooled_text_emb=pooled)
    logits = logits.reshape(inputs.shape[0], codebook, -1).permute(0, 2, 1).reshape(-1, codebook)
    return F.cross_entropy(logits, labels.view(-1), ignore_index=-100, reduction="mean")


def reference_steps(parts: tuple, row: SimRow, tracker: MemoryTracker, steps: int) -> torch.optim.Optimizer:
    """`steps` optimizer steps of the script's loop; returns its optimizer (state still held)."""
    model, vq, text_encoder = parts
    optimizer = reference_optimizer(model, row.mode)
    forward = AcceleratedForward(model, row.precision)
    scaler = torch.amp.GradScaler("cuda", enabled=row.precision == "16-mixed")
    grid = row.resolution // pixels_per_token(vq.config)
    mask_id, codebook = model.config.vocab_size - 1, model.config.codebook_size
    with tracker.phase("placement"), torch.no_grad():
        empty = encode_prompt(text_encoder, torch.zeros(1, CLIP_LENGTH, dtype=torch.long, device=DEVICE))
        # StyleDrop: the one image's prompt is encoded once and repeated to the batch size.
        fixed = [t.repeat(row.batch, *[1] * (t.dim() - 1)) for t in empty] if row.instance_image else None
    for _ in range(steps):
        for _ in range(simulated_micro_batches(row.accumulation)):
            with tracker.phase("batch to device"):
                batch = pixel_batch(row.batch, row.resolution, with_prompts=not row.instance_image)
            with tracker.phase("VQ and CLIP encoding"), torch.no_grad():
                inputs, labels = masked_inputs(vq, batch["pixel_values"], mask_id, grid)
                hidden, pooled = fixed or encode_prompt(text_encoder, batch["input_ids"])
            with tracker.phase("forward"):
                loss = reference_loss(forward, inputs, labels, hidden, pooled, batch["micro_conds"], codebook)
            with tracker.phase("backward"):
                scaler.scale(loss / row.accumulation).backward()
            del loss, batch, inputs, labels, hidden, pooled
        with tracker.phase("optimizer step"):
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
    return optimizer


def reference_validation(parts: tuple, row: SimRow, tracker: MemoryTracker, inference_steps: int) -> None:
    """AmusedPipeline on the validation prompts: CLIP on prompts and empty prompts, guided decoding, VQ decode."""
    model, vq, text_encoder = parts
    with tracker.phase("validation sampling"), torch.no_grad():
        ids = torch.zeros(row.validation_prompts, CLIP_LENGTH, dtype=torch.long, device=DEVICE)
        hidden, pooled = encode_prompt(text_encoder, ids)
        empty = encode_prompt(text_encoder, ids)
        grid = (row.resolution // pixels_per_token(vq.config),) * 2
        settings = GenerationSettings(num_inference_steps=inference_steps)
        tokens = generate_tokens(AcceleratedForward(model, row.precision), hidden, pooled, *empty, grid,
                                 (row.resolution, row.resolution), settings, model.config.vocab_size - 1,
                                 torch.Generator(device=DEVICE).manual_seed(0))
        decode_image_tokens(vq, tokens)


def simulate_reference(row: SimRow, steps: int = 2, inference_steps: int = 2) -> SimResult:
    """Peak device memory of the reference script on `row`: `steps` optimizer steps, then validation sampling."""
    with fake_cuda() as tracker:
        with tracker.phase("placement"):
            parts = reference_parts(row)
        optimizer = reference_steps(parts, row, tracker, steps)
        if row.validation_prompts:
            reference_validation(parts, row, tracker, inference_steps)
        del optimizer
        return SimResult.of(tracker)
