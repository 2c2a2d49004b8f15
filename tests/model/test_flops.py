"""FLOP counts against a hand count and the known figures of the real architectures."""

import pytest
import torch
import torch.nn.functional as F
from diffusers import UVit2DModel, VQModel
from peft import LoraConfig
from torch import nn
from transformers import CLIPTextModelWithProjection

from amused_lightning.callbacks.placement import cast_frozen_weights
from amused_lightning.model.adapters import LoraSettings
from amused_lightning.model.flops import (
    alike,
    count_flops,
    every_layer_flops,
    gradients,
    text_encode_flops,
    transformer_training_flops,
    vq_encode_flops,
)
from amused_lightning.model.presets import PRESETS, clip_text_config
from amused_lightning.training.activation_checkpointing import enable_gradient_checkpointing
from amused_lightning.training.module import AmusedModule


class ConvAttentionHead(nn.Module):
    """A 3x3 convolution over a 4x4 image, a projection of its 16 positions, one attention head, an output layer."""

    def __init__(self):
        super().__init__()
        self.conv, self.proj, self.out = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, 16), nn.Linear(16, 4)

    def forward(self, x):
        tokens = self.proj(self.conv(x).flatten(2).transpose(1, 2))  # (1, 16, 16)
        return self.out(F.scaled_dot_product_attention(tokens, tokens, tokens))


# Hand count for one sample. Forward: conv 2*3*8*9*16, projection 2*16*8*16, attention 4*L*S*d with L = S = d = 16
# (scores and weighted sum), output 2*16*16*4. A trained weight costs its forward again for its gradient; a layer
# whose input leads back to a trained weight costs its forward again for the input's gradient.
CONV, PROJ, ATTENTION, OUT = 6912, 4096, 16384, 2048
FORWARD = CONV + PROJ + ATTENTION + OUT


@pytest.mark.parametrize("trained, backward", [
    (("conv", "proj", "out"), CONV + 2 * PROJ + 2 * ATTENTION + 2 * OUT),  # nothing needs the image's gradient
    (("out",), OUT),  # frozen below the output: its weight gradient only
    (("conv",), CONV + PROJ + 2 * ATTENTION + OUT),  # frozen layers above a trained one pass input gradients only
])
def test_flops_of_a_small_model_equal_the_hand_count(trained, backward):
    model = ConvAttentionHead()
    for name, param in model.named_parameters():
        param.requires_grad_(name.split(".")[0] in trained)

    def forward(module, state):
        return torch.func.functional_call(module, state, (torch.zeros(1, 3, 4, 4, device="meta"),))

    def train(module, state):
        gradients(forward(module, state), [t for t in state.values() if t.requires_grad])

    assert count_flops(model, forward) == FORWARD
    assert count_flops(model, train) == FORWARD + backward
    assert all(p.grad is None for p in model.parameters()), "counting writes no gradient"


def meta_parts(preset: str):
    """The preset's transformer, VQ model and text encoder built on the meta device (no weights: counts only)."""
    with torch.device("meta"):
        return (UVit2DModel.from_config(PRESETS[preset]["transformer"]), VQModel.from_config(PRESETS[preset]["vqvae"]),
                CLIPTextModelWithProjection(clip_text_config(preset)))


@pytest.mark.parametrize("preset, grid, transformer_g, vq_g", [("amused-256-arch", 16, 657, 216),
                                                               ("amused-512-arch", 32, 698, 865)])
def test_real_architectures_match_the_known_figures(preset, grid, transformer_g, vq_g):
    transformer, vqvae, text_encoder = meta_parts(preset)
    full = transformer_training_flops(transformer, grid, grid)
    assert round(full / 1e9) == transformer_g
    assert full == every_layer_flops(transformer, grid, grid, False), "22 alike layers: counted from a few"
    assert round(vq_encode_flops(vqvae, grid * 16, grid * 16) / 1e9) == vq_g
    assert round(text_encode_flops(text_encoder.requires_grad_(False)) / 1e9) == 13
    enable_gradient_checkpointing(transformer)
    assert transformer_training_flops(transformer, grid, grid) == full, "recomputation is not model FLOPs"
    assert type(transformer.transformer_layers[0]).__name__.startswith("Checkpointed")
    # LoRA: the frozen weights get no gradient, so the backward is about one forward (input gradients) plus the
    # adapters', not two.
    with torch.device("meta"):
        transformer.add_adapter(LoraConfig(r=16, lora_alpha=32, target_modules=["to_q", "to_k", "to_v"]))
    lora = transformer_training_flops(transformer, grid, grid)
    assert 0.64 * full < lora < 0.66 * full
    assert lora == every_layer_flops(transformer, grid, grid, False)
    transformer.transformer_layers[3].attn1.to_q.lora_A.default.weight.requires_grad_(False)
    assert not alike(transformer.transformer_layers), "a layer that differs: every layer is counted"


def test_trained_text_conditioning_adds_its_gradient():
    transformer, _, _ = meta_parts("tiny")
    assert transformer_training_flops(transformer, 8, 8, text_trains=True) > transformer_training_flops(
        transformer, 8, 8)


def test_frozen_weights_stored_in_fp16_count_the_same():
    module = AmusedModule("tiny", lora=LoraSettings(r=4, alpha=8))
    before = transformer_training_flops(module.model.transformer, 8, 8)
    assert cast_frozen_weights(module, torch.float16) > 0
    assert transformer_training_flops(module.model.transformer, 8, 8) == before > 0
