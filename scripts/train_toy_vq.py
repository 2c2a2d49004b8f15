"""The `toy` model's VQModel: one code per palette colour, fixed by the colour of a cell alone.

    python scripts/train_toy_vq.py <folder>      # writes <folder>/vqvae (build_toy_model.py --vq <folder> reuses it)

A VQ-GAN trained only to reconstruct gives one flat colour several codes, by position and neighbourhood, and its
decoder sorts them out; the transformer is then asked to predict codes the picture does not determine, and a head's
visible cells do not say its colour (BENCHMARKS.md, "Why the old `toy` ignored its image tokens"). This one is
trained with the answer: code k is the colour PALETTE[k] of the cell (the colour of the part covering most of it),
and the decoder draws each code as a flat cell of that colour. Half of every batch is mosaics of random cells, so no
code can lean on a layout: a cell's code depends on that cell, and a code decodes to its colour wherever it stands.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import VQModel

from amused_lightning.seeding import derive_seed
from amused_lightning.toy.world import GRID, PALETTE, draw_cells, draw_character, ideal_cells, sample_characters

SIZE = 64
CODEBOOK = len(PALETTE)
VQ_CONFIG = dict(
    in_channels=3, out_channels=3, act_fn="silu", latent_channels=8, layers_per_block=1, norm_num_groups=1,
    norm_type="spatial", num_vq_embeddings=CODEBOOK, vq_embed_dim=None, lookup_from_codebook=True,
    mid_block_add_attention=False, sample_size=SIZE, scaling_factor=1.0, force_upcast=True,
    block_out_channels=(32, 32, 32), down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3,
)


def as_pixels(images: list) -> torch.Tensor:
    """(N, 3, H, W) pixels in [0, 1] of PIL images."""
    return torch.from_numpy(np.stack([np.asarray(image) for image in images])).permute(0, 3, 1, 2).float() / 255


def training_batch(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 3, 64, 64) pixels and (N, 16, 16) their cells' codes: characters of the whole world, then as many mosaics
    of random palette cells."""
    characters = sample_characters(count - count // 2, seed)
    mosaics = np.random.default_rng(seed).integers(0, CODEBOOK, (count // 2, GRID, GRID))
    cells = np.concatenate([np.stack([ideal_cells(c) for c in characters]), mosaics])
    images = [draw_character(c, SIZE) for c in characters] + [draw_cells(m, SIZE) for m in mosaics]
    return as_pixels(images), torch.from_numpy(cells).long()


def code_logits(vq: VQModel, pixels: torch.Tensor) -> torch.Tensor:
    """(N, codes, 16, 16) negative squared distances of the encoder's latents to every code: the nearest wins."""
    latents = vq.encode(pixels).latents
    codes = vq.quantize.embedding.weight
    return -((latents[:, None] - codes[None, :, :, None, None]) ** 2).sum(2)


def decode_codes(vq: VQModel, codes: torch.Tensor) -> torch.Tensor:
    """(N, 3, 64, 64) pixels of (N, 16, 16) codes, as the pipeline decodes tokens."""
    shape = (*codes.shape, vq.config.latent_channels)
    return vq.decode(codes, force_not_quantize=True, shape=shape).sample


def random_crops(pixels: torch.Tensor, cells: torch.Tensor, generator: torch.Generator, size: int = 8
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """One crop of `size` x `size` whole cells per image, and its cells: the VQ is convolutional, and small crops
    train faster."""
    offsets = torch.randint(0, GRID - size + 1, (len(pixels), 2), generator=generator).tolist()
    cell = SIZE // GRID
    return (torch.stack([image[:, top * cell:(top + size) * cell, left * cell:(left + size) * cell]
                         for image, (top, left) in zip(pixels, offsets)]),
            torch.stack([grid[top:top + size, left:left + size] for grid, (top, left) in zip(cells, offsets)]))


def vq_loss(vq: VQModel, pixels: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each cell's code by distance, plus the flat drawing of the true codes by the decoder."""
    flat = torch.from_numpy(np.array([rgb for _, _, rgb in PALETTE], dtype=np.float32) / 255)[cells]
    flat = flat.permute(0, 3, 1, 2).repeat_interleave(SIZE // GRID, 2).repeat_interleave(SIZE // GRID, 3)
    return F.cross_entropy(code_logits(vq, pixels), cells) + 10 * F.mse_loss(decode_codes(vq, cells), flat)


def train_vq(steps: int, batch_size: int, seed: int, log_every: int) -> VQModel:
    """A VQModel whose code is each cell's palette colour, and whose decoder draws codes as flat cells."""
    torch.manual_seed(derive_seed(seed, 1))
    vq = VQModel(**VQ_CONFIG)
    optimizer = torch.optim.Adam(vq.parameters(), lr=3e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    generator, started = torch.Generator().manual_seed(derive_seed(seed, 2)), time.perf_counter()
    for step in range(steps):
        loss = vq_loss(vq, *random_crops(*training_batch(batch_size, derive_seed(seed, 3, step)), generator))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % log_every == 0 or step == steps - 1:
            print(f"vq step {step + 1}/{steps} loss {loss.item():.5f} ({time.perf_counter() - started:.0f} s)",
                  flush=True)
    return vq.eval().requires_grad_(False)


@torch.no_grad()
def code_accuracy(vq: VQModel, count: int = 256, seed: int = 12345) -> tuple[float, float]:
    """Share of cells of fresh images (characters and mosaics) encoded to their colour's code, and share of codes
    decoded to a cell read back as their colour."""
    from amused_lightning.model.decoding import to_pil
    from amused_lightning.toy.cell_score import read_cells

    pixels, cells = training_batch(count, seed)
    encoded = code_logits(vq, pixels).argmax(1)
    decoded = np.stack([read_cells(image) for image in to_pil(decode_codes(vq, cells).clip(0, 1))])
    return float((encoded == cells).float().mean()), float((decoded == cells.numpy()).mean())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", type=Path, help="pipeline folder whose vqvae/ to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--log-every", type=int, default=50)
    args = parser.parse_args(argv)
    vq = train_vq(args.steps, args.batch_size, args.seed, args.log_every)
    print("codes right {:.2%}, decoded right {:.2%}".format(*code_accuracy(vq)))
    vq.save_pretrained(args.output / "vqvae")


if __name__ == "__main__":
    main()
