"""Rebuild the `toy` base model from a seed: a complete aMUSEd pipeline that draws the toy world's base world.

    python scripts/build_toy_model.py amused_lightning/pretrained/toy

1. A VQModel (4x downsampling: one token per 4x4-pixel cell at 64 px) trained to reconstruct toy images of the whole
   world, as a real VQ-GAN is trained on broad data: a plain reconstruction + codebook loss.
2. A word-level CLIP tokenizer over the world's vocabulary (held-back words included, as CLIP knows words that
   aMUSEd cannot draw) and a small CLIPTextModelWithProjection.
3. A UVit2DModel trained with this project's masked-token objective (`masking`, `loss`, `encoding`: cosine mask
   ratios, cross-entropy on masked tokens, conditioning dropout) on the base world only, jointly with the text
   encoder, which is then frozen for finetuning like CLIP is.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import diffusers
import numpy as np
import torch
from diffusers import AmusedScheduler, UVit2DModel, VQModel
from toy_probes import probe_line
from train_toy_vq import SIZE, train_vq
from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

from amused_lightning.model.amused import MODEL_INDEX
from amused_lightning.model.components import Components
from amused_lightning.model.encoding import drop_conditioning, encode_image_tokens, encode_prompts, tokenize_prompts
from amused_lightning.model.presets import CLIP_MAX_LENGTH
from amused_lightning.seeding import derive_seed
from amused_lightning.toy.world import (
    BACKGROUNDS,
    COLORS,
    HEADS,
    caption_words,
    draw_character,
    evaluation_captions,
    sample_characters,
)
from amused_lightning.training.loss import masked_token_loss
from amused_lightning.training.masking import apply_mask, random_token_mask, sample_mask_ratios

TEXT_WIDTH = 64


def transformer_config(codebook: int) -> dict:
    """The UVit2DModel of the toy pipeline, predicting one of `codebook` codes per token."""
    return dict(
        hidden_size=96, use_bias=False, hidden_dropout=0.0, cond_embed_dim=TEXT_WIDTH, micro_cond_encode_dim=8,
        micro_cond_embed_dim=40, encoder_hidden_size=TEXT_WIDTH, vocab_size=codebook + 1, codebook_size=codebook,
        in_channels=32, block_out_channels=32, num_res_blocks=4, downsample=True, upsample=True, block_num_heads=1,
        num_hidden_layers=3, num_attention_heads=3, attention_dropout=0.0, intermediate_size=192,
        layer_norm_eps=1e-6, ln_elementwise_affine=True, sample_size=SIZE // 4,
    )


# UVit2DModel has no position embedding: a token learns where it is only from the zero padding of its 3x3
# convolutions. Halving the grid and stacking four of them lets every cell tell its place, so a fully masked image
# is not decoded as identical draws at every position; it also makes the transformer layers 4x cheaper.
MICRO_CONDS = (SIZE, SIZE, 0, 0, 6.0)  # full-image crops at the default aesthetic score, as the data module sends


def toy_tokenizer() -> CLIPTokenizer:
    """A CLIP tokenizer that keeps every toy-world word whole and spells any other word byte by byte."""
    symbols = list(bytes_to_unicode().values())
    vocab = {symbol: i for i, symbol in enumerate(symbols)}
    vocab.update({symbol + "</w>": i + len(symbols) for i, symbol in enumerate(symbols)})
    merges = []
    # Merges grow a word from its end, so they can only fire at a word's end and always rebuild the whole word.
    for word in caption_words():
        for start in range(len(word) - 2, -1, -1):
            suffix = word[start + 1:] + "</w>"
            if word[start:] + "</w>" not in vocab:
                merges.append((word[start], suffix))
                vocab[word[start:] + "</w>"] = len(vocab)
    # End-of-text takes the largest id so CLIP's legacy argmax pooling (eos_token_id 2) lands on it.
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=CLIP_MAX_LENGTH)


def text_encoder_config(vocab_size: int) -> CLIPTextConfig:
    """A two-layer CLIP text tower, wide enough for the world's few dozen words."""
    return CLIPTextConfig(hidden_size=TEXT_WIDTH, intermediate_size=2 * TEXT_WIDTH, num_attention_heads=4,
                          num_hidden_layers=2, projection_dim=TEXT_WIDTH, vocab_size=vocab_size,
                          max_position_embeddings=CLIP_MAX_LENGTH, hidden_act="quick_gelu", layer_norm_eps=1e-5,
                          bos_token_id=0, eos_token_id=2, pad_token_id=1)


def render(captions_world: str, count: int, seed: int, exclude: frozenset[str] = frozenset()
           ) -> tuple[torch.Tensor, list[str]]:
    """(N, 3, 64, 64) pixels in [0, 1] and captions of `count` characters of a world."""
    characters = sample_characters(count, seed, captions_world, exclude)
    pixels = np.stack([np.asarray(draw_character(c, SIZE)) for c in characters])
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255, [c.caption() for c in characters]


def initial_transformer_and_text_encoder(resume: Path | None, vocab_size: int, codebook: int
                                         ) -> tuple[UVit2DModel, CLIPTextModelWithProjection]:
    """Fresh weights, or those of a pipeline folder written by this script to train further."""
    if resume is None:
        return (UVit2DModel(**transformer_config(codebook)),
                CLIPTextModelWithProjection(text_encoder_config(vocab_size)))
    return (UVit2DModel.from_pretrained(resume, subfolder="transformer").train().requires_grad_(True),
            CLIPTextModelWithProjection.from_pretrained(resume, subfolder="text_encoder").train().requires_grad_(True))


ATTRIBUTES = (("glasses", tuple(COLORS)), ("body", tuple(COLORS)), ("background", tuple(BACKGROUNDS)), ("head", HEADS))


def attribute_labels(characters: list) -> torch.Tensor:
    """(N, 4) class indices of the attributes a caption names: what the text tower learns to tell apart."""
    return torch.tensor([[values.index(getattr(c, name)) for name, values in ATTRIBUTES] for c in characters])


def word_knowledge_loss(text_encoder: CLIPTextModelWithProjection, heads: torch.nn.Linear, input_ids: torch.Tensor,
                        labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each named attribute read linearly from the pooled embedding of captions of the whole world:
    like CLIP, the text tower then knows every word of the world, the held-back ones included."""
    logits = heads(encode_prompts(text_encoder, input_ids)[1]).split([len(v) for _, v in ATTRIBUTES], dim=1)
    return sum(torch.nn.functional.cross_entropy(part, labels[:, i]) for i, part in enumerate(logits))


def word_task(tokenizer: CLIPTokenizer, args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attribute labels of captions of the whole world (held-out prompts excepted)."""
    held_out = evaluation_captions("base") | evaluation_captions("finetune")
    characters = sample_characters(args.num_images, derive_seed(args.seed, 7), "all", held_out)
    return tokenize_prompts(tokenizer, [c.caption() for c in characters]), attribute_labels(characters)


def masked_token_step(transformer: UVit2DModel, text_encoder: CLIPTextModelWithProjection, tokens: torch.Tensor,
                      input_ids: torch.Tensor, empty_ids: torch.Tensor, generator: torch.Generator,
                      args: argparse.Namespace) -> torch.Tensor:
    """The masked-token loss of a batch: cosine mask ratios, conditioning dropout, and label smoothing of the
    dropped samples (`--unconditional-label-smoothing`) apart from the prompted ones."""
    ratios = sample_mask_ratios(len(tokens), 0.0, generator)
    inputs, labels = apply_mask(tokens, random_token_mask(ratios, tokens[0].numel(), generator).view_as(tokens),
                                transformer.config.vocab_size - 1)
    hidden, pooled = encode_prompts(text_encoder, input_ids)
    drop = torch.rand(len(tokens), generator=generator) < args.cond_dropout_prob
    hidden, pooled = drop_conditioning(hidden, pooled, *encode_prompts(text_encoder, empty_ids), drop)
    micro_conds = torch.tensor(MICRO_CONDS).expand(len(tokens), -1)
    logits = transformer(inputs, micro_conds=micro_conds, pooled_text_emb=pooled, encoder_hidden_states=hidden)
    smoothing = torch.where(drop, args.unconditional_label_smoothing, args.label_smoothing)
    return masked_token_loss(logits, labels, smoothing)


def train_transformer(vq: VQModel, tokenizer: CLIPTokenizer, args: argparse.Namespace, save=None
                      ) -> tuple[UVit2DModel, CLIPTextModelWithProjection]:
    """The transformer and text encoder, trained jointly on the base world with the masked-token objective."""
    pixels, captions = render("base", args.num_images, derive_seed(args.seed, 4), evaluation_captions("base"))
    tokens = torch.cat([encode_image_tokens(vq, chunk) for chunk in pixels.split(256)])
    input_ids, empty_ids = tokenize_prompts(tokenizer, captions), tokenize_prompts(tokenizer, [""])
    torch.manual_seed(derive_seed(args.seed, 5))
    transformer, text_encoder = initial_transformer_and_text_encoder(args.resume, len(tokenizer),
                                                                     vq.config.num_vq_embeddings)
    word_ids, word_labels = word_task(tokenizer, args)
    heads = torch.nn.Linear(TEXT_WIDTH, sum(len(values) for _, values in ATTRIBUTES))
    params = list(transformer.parameters()) + list(text_encoder.parameters()) + list(heads.parameters())
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, args.lr, total_steps=args.steps, pct_start=0.05)
    generator, started = torch.Generator().manual_seed(derive_seed(args.seed, 6)), time.perf_counter()
    for step in range(args.steps):
        rows = torch.randint(len(tokens), (args.batch_size,), generator=generator)
        loss = masked_token_step(transformer, text_encoder, tokens[rows], input_ids[rows], empty_ids, generator, args)
        words = torch.randint(len(word_ids), (args.batch_size,), generator=generator)
        loss = loss + args.word_loss_weight * word_knowledge_loss(text_encoder, heads, word_ids[words],
                                                                   word_labels[words])
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        report(step, loss, started, Components(transformer, vq, text_encoder, tokenizer, None), args)
        if save is not None and args.save_every and (step + 1) % args.save_every == 0:
            save(transformer, text_encoder)
    return transformer.eval().requires_grad_(False), text_encoder.eval().requires_grad_(False)


def report(step: int, loss: torch.Tensor, started: float, parts: Components, args: argparse.Namespace) -> None:
    """The loss every --log-every steps, and how much the transformer uses context every --probe-every."""
    if step % args.log_every == 0 or step == args.steps - 1:
        print(f"transformer step {step + 1}/{args.steps} loss {loss.item():.4f} "
              f"({time.perf_counter() - started:.0f} s)", flush=True)
    if args.probe_every and (step + 1) % args.probe_every == 0:
        parts.transformer.eval(), parts.text_encoder.eval()
        print(f"probe at step {step + 1}: {probe_line(parts)}", flush=True)
        parts.transformer.train(), parts.text_encoder.train()


def save_pipeline(folder: Path, transformer: UVit2DModel, vq: VQModel, text_encoder: CLIPTextModelWithProjection,
                  tokenizer: CLIPTokenizer) -> None:
    """Write the diffusers pipeline layout that AmusedPipeline.from_pretrained and `model.pretrained` load."""
    folder.mkdir(parents=True, exist_ok=True)
    transformer.save_pretrained(folder / "transformer")
    vq.save_pretrained(folder / "vqvae")
    text_encoder.save_pretrained(folder / "text_encoder")
    tokenizer.save_pretrained(folder / "tokenizer")
    AmusedScheduler(mask_token_id=vq.config.num_vq_embeddings, masking_schedule="cosine").save_pretrained(
        folder / "scheduler")
    index = {**MODEL_INDEX, "_diffusers_version": diffusers.__version__}
    (folder / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", type=Path, help="pipeline folder to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vq", type=Path, help="reuse the vqvae/ of this pipeline folder instead of training one")
    parser.add_argument("--resume", type=Path, help="train the transformer and text encoder of this folder further")
    parser.add_argument("--vq-steps", type=int, default=400)
    parser.add_argument("--vq-batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=4000, help="transformer optimizer steps")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--cond-dropout-prob", type=float, default=0.1)
    parser.add_argument("--label-smoothing", type=float, default=0.0,
                        help="label smoothing of the prompted samples (a sampler draws a wrong code that often)")
    parser.add_argument("--unconditional-label-smoothing", type=float, default=0.1,
                        help="label smoothing of the samples whose prompt is dropped: bounds what guidance divides by")
    parser.add_argument("--word-loss-weight", type=float, default=1.0,
                        help="weight of the text tower's attribute loss on captions of the whole world")
    parser.add_argument("--num-images", type=int, default=4000, help="base-world training images")
    parser.add_argument("--log-every", type=int, default=100)
    parser.add_argument("--save-every", type=int, default=0, help="also write the pipeline every N steps")
    parser.add_argument("--probe-every", type=int, default=0,
                        help="print how much the transformer uses context every N steps (scripts/toy_probes.py)")
    # One thread: on 2 cores shared with other work, two threads spin-wait on each other (10x slower steps).
    parser.add_argument("--threads", type=int, default=1)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    vq = (VQModel.from_pretrained(args.vq, subfolder="vqvae") if args.vq
          else train_vq(args.vq_steps, args.vq_batch_size, args.seed, args.log_every))
    tokenizer = toy_tokenizer()
    transformer, text_encoder = train_transformer(
        vq, tokenizer, args, lambda *trained: save_pipeline(args.output, trained[0], vq, trained[1], tokenizer))
    save_pipeline(args.output, transformer, vq, text_encoder, tokenizer)
    print(f"wrote {args.output} in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
