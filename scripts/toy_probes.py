"""Probes of the `toy` pipeline's parts: whether the VQ's codes are the cells' colours, and whether the transformer
uses the image tokens it is shown.

    python scripts/toy_probes.py [pipeline folder, default: the embedded toy]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from diffusers import VQModel

from amused_lightning.model.components import Components, load_components
from amused_lightning.model.decoding import decode_image_tokens, to_pil
from amused_lightning.model.encoding import encode_image_tokens, encode_prompts, tokenize_prompts
from amused_lightning.toy.cell_score import read_cells
from amused_lightning.toy.world import PARTS, cell_parts, draw_character, evaluation_characters, ideal_cells
from amused_lightning.training.masking import random_token_mask

HEAD = PARTS.index("head")


def pixels_of(characters: list) -> torch.Tensor:
    """(N, 3, 64, 64) pixels in [0, 1] of the characters' drawings."""
    images = np.stack([np.asarray(draw_character(c, 64)) for c in characters])
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255


@torch.no_grad()
def vq_code_accuracy(vq: VQModel, count: int = 64) -> tuple[float, float]:
    """Share of the cells of held-out characters encoded to their colour's code (code k = PALETTE[k]), and share of
    codes decoded to a cell read back as their colour."""
    characters = evaluation_characters("all", count)
    ideal = torch.from_numpy(np.stack([ideal_cells(c) for c in characters]))
    encoded = encode_image_tokens(vq, pixels_of(characters))
    decoded = np.stack([read_cells(image) for image in to_pil(decode_image_tokens(vq, ideal))])
    return float((encoded == ideal).float().mean()), float((decoded == ideal.numpy()).mean())


def lower_head_rows(head: str) -> torch.Tensor:
    """(16, 16) the head's cells in its two lowest rows."""
    parts = torch.from_numpy(cell_parts(head)) == HEAD
    rows = parts.any(dim=1).nonzero()[:, 0][-2:]
    lower = torch.zeros_like(parts)
    lower[rows] = parts[rows]
    return lower


def held_out_batch(parts: Components, count: int) -> tuple[list, torch.Tensor, torch.Tensor, torch.Tensor]:
    """`count` held-out base-world characters with their image tokens and prompt embeddings (hidden, pooled)."""
    characters = evaluation_characters("base", count)
    tokens = encode_image_tokens(parts.vqvae, pixels_of(characters))
    hidden, pooled = encode_prompts(parts.text_encoder, tokenize_prompts(parts.tokenizer,
                                                                         [c.caption() for c in characters]))
    return characters, tokens, hidden, pooled


def predict(parts: Components, inputs: torch.Tensor, hidden: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
    """The transformer's logits for full-image 64 px crops at the default aesthetic score."""
    micro_conds = torch.tensor([64, 64, 0, 0, 6.0]).expand(inputs.shape[0], -1)
    return parts.transformer(inputs, micro_conds=micro_conds, pooled_text_emb=pooled, encoder_hidden_states=hidden)


@torch.no_grad()
def context_probe(parts: Components, count: int = 32) -> dict[str, float]:
    """Mean probability of the true code of each held-out base-world character's two lower head rows, given the
    prompt and every other token ("revealed"), or the prompt alone ("masked"). A model that uses context gives the
    head's colour, seen in its upper rows, most of the probability; one that does not stays near 1/8."""
    characters, tokens, hidden, pooled = held_out_batch(parts, count)
    targets = torch.stack([lower_head_rows(c.head) for c in characters])
    mask_id = parts.transformer.config.vocab_size - 1
    probabilities = {}
    for name, hidden_cells in (("revealed", targets), ("masked", torch.ones_like(targets))):
        logits = predict(parts, torch.where(hidden_cells, mask_id, tokens), hidden, pooled)
        true = logits.float().softmax(dim=1).gather(1, tokens[:, None])[:, 0]
        probabilities[name] = float(true[targets].mean())
    return probabilities


@torch.no_grad()
def masked_accuracy(parts: Components, ratio: float, count: int = 32) -> float:
    """Share of held-out base-world tokens predicted right (arg-max, given the prompt) with `ratio` of them masked
    at random (the same masks at every call)."""
    _, tokens, hidden, pooled = held_out_batch(parts, count)
    generator = torch.Generator().manual_seed(0)
    masked = random_token_mask(torch.full((count,), ratio), tokens[0].numel(), generator).view_as(tokens)
    logits = predict(parts, torch.where(masked, parts.transformer.config.vocab_size - 1, tokens), hidden, pooled)
    return float((logits.argmax(dim=1) == tokens)[masked].float().mean())


def probe_line(parts: Components) -> str:
    """The context figures of a model on one line."""
    probe = context_probe(parts)
    fewest, most = masked_accuracy(parts, 0.1), masked_accuracy(parts, 1.0)
    return (f"held-out accuracy {fewest:.3f} with 10% masked, {most:.3f} with all masked (context gain "
            f"{fewest - most:+.3f}); head colour probe p(true) {probe['revealed']:.3f} with the rest revealed, "
            f"{probe['masked']:.3f} with all masked")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pipeline", nargs="?", default="toy")
    parts = load_components(parser.parse_args().pipeline)
    codes, decoded = vq_code_accuracy(parts.vqvae)
    print(f"VQ: codes right {codes:.2%}, decoded right {decoded:.2%}")
    print(probe_line(parts))


if __name__ == "__main__":
    main()
