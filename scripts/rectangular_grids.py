"""Whether aMUSEd's parts take token grids and images that are not square: prints a markdown table.

    python scripts/rectangular_grids.py

The transformers are the `amused-256-arch` / `amused-512-arch` presets (exact wiring, random weights) with one
transformer layer instead of 22, which changes nothing in how a grid flows through them; the VQ model is the
real one's architecture. Each row feeds a grid (or an image) and reports the shape that comes back. Token grids are
written height x width, as tensors hold them; images width x height, as PIL writes sizes.
"""

from __future__ import annotations

import torch
from diffusers import UVit2DModel, VQModel

from amused_lightning.model.presets import PRESETS


def transformer_output(preset: str, grid: tuple[int, int]) -> tuple[int, ...]:
    """(height, width) of the logits a preset's transformer returns for a (height, width) token grid."""
    config = {**PRESETS[preset]["transformer"], "num_hidden_layers": 1}
    model = UVit2DModel(**config).eval()
    with torch.no_grad():
        logits = model(torch.zeros(1, *grid, dtype=torch.long),
                       encoder_hidden_states=torch.zeros(1, 77, config["encoder_hidden_size"]),
                       pooled_text_emb=torch.zeros(1, config["cond_embed_dim"]),
                       micro_conds=torch.tensor([[grid[1] * 16.0, grid[0] * 16.0, 0, 0, 6]]))
    return tuple(logits.shape[2:])


def vq_round_trip(size: tuple[int, int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The token grid the real VQ architecture encodes a (width, height) image to, and the image it decodes back."""
    config = PRESETS["amused-256-arch"]["vqvae"]
    vqvae = VQModel(**config).eval()
    with torch.no_grad():
        latents = vqvae.encode(torch.rand(1, 3, size[1], size[0])).latents
        codes = vqvae.quantize(latents)[2][2].reshape(1, *latents.shape[2:])
        image = vqvae.decode(codes, force_not_quantize=True,
                             shape=(1, *codes.shape[1:], config["latent_channels"])).sample
    return tuple(codes.shape[1:]), tuple(image.shape[2:])


def main() -> None:
    torch.manual_seed(0)
    print("| part | input | output | same shape |\n|---|---|---|---|")  # grids: height x width, images: width x height
    for preset, grids in (("amused-256-arch", [(16, 16), (16, 24), (24, 16), (12, 21), (8, 32)]),
                          ("amused-512-arch", [(32, 32), (32, 48), (48, 32), (24, 42), (32, 33)])):
        for grid in grids:
            out = transformer_output(preset, grid)
            print(f"| {preset} transformer | {grid[0]}x{grid[1]} tokens | {out[0]}x{out[1]} | {out == grid} |")
    for size in ((384, 256), (256, 384), (336, 208)):
        codes, image = vq_round_trip(size)
        print(f"| VQ model | {size[0]}x{size[1]} px | {codes[0]}x{codes[1]} tokens, decoded {image[1]}x{image[0]} px |"
              f" {image == (size[1], size[0])} |")


if __name__ == "__main__":
    main()
