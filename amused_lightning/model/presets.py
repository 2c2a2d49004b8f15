"""Random-weight aMUSEd components built in code: `tiny` for tests, `*-arch` with the real architectures."""

from __future__ import annotations

from transformers import CLIPTextConfig, CLIPTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

CLIP_MAX_LENGTH = 77

# CLIP-L/14 text tower of amused-256 and amused-512 (their text_encoder/config.json).
_CLIP_L14 = dict(
    hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12, projection_dim=768,
    vocab_size=49408, max_position_embeddings=CLIP_MAX_LENGTH, hidden_act="quick_gelu", layer_norm_eps=1e-5,
    bos_token_id=0, eos_token_id=2, pad_token_id=1,
)

# Shared VQ-GAN of both checkpoints (vqvae/config.json): 16x downsampling, 8192 codes.
_AMUSED_VQ = dict(
    in_channels=3, out_channels=3, act_fn="silu", latent_channels=64, layers_per_block=2, norm_num_groups=32,
    norm_type="group", num_vq_embeddings=8192, vq_embed_dim=None, lookup_from_codebook=True,
    mid_block_add_attention=False, sample_size=32, scaling_factor=0.18215, force_upcast=True,
    block_out_channels=(128, 256, 256, 512, 768),
    down_block_types=("DownEncoderBlock2D",) * 5, up_block_types=("UpDecoderBlock2D",) * 5,
)

_AMUSED_TRANSFORMER = dict(
    hidden_size=1024, use_bias=False, hidden_dropout=0.0, cond_embed_dim=768, micro_cond_encode_dim=256,
    micro_cond_embed_dim=1280, encoder_hidden_size=768, vocab_size=8256, codebook_size=8192, in_channels=768,
    block_out_channels=768, num_res_blocks=3, block_num_heads=12, num_hidden_layers=22, num_attention_heads=16,
    attention_dropout=0.0, intermediate_size=2816, layer_norm_eps=1e-6, ln_elementwise_affine=True,
)

PRESETS: dict[str, dict[str, dict]] = {
    "amused-256-arch": dict(
        transformer={**_AMUSED_TRANSFORMER, "downsample": False, "upsample": False, "sample_size": 16},
        vqvae=_AMUSED_VQ, text_encoder=_CLIP_L14, scheduler=dict(mask_token_id=8255, masking_schedule="cosine"),
    ),
    "amused-512-arch": dict(
        transformer={**_AMUSED_TRANSFORMER, "downsample": True, "upsample": True, "sample_size": 32},
        vqvae=_AMUSED_VQ, text_encoder=_CLIP_L14, scheduler=dict(mask_token_id=8255, masking_schedule="cosine"),
    ),
    # Same wiring at toy width: 4x downsampling, 64 codes, a 2-layer CLIP. A step takes milliseconds on CPU.
    "tiny": dict(
        transformer=dict(
            hidden_size=32, use_bias=False, hidden_dropout=0.0, cond_embed_dim=32, micro_cond_encode_dim=8,
            micro_cond_embed_dim=40, encoder_hidden_size=32, vocab_size=65, codebook_size=64, in_channels=16,
            block_out_channels=32, num_res_blocks=1, downsample=False, upsample=False, block_num_heads=2,
            num_hidden_layers=2, num_attention_heads=2, attention_dropout=0.0, intermediate_size=64,
            layer_norm_eps=1e-6, ln_elementwise_affine=True, sample_size=16,
        ),
        vqvae=dict(
            in_channels=3, out_channels=3, act_fn="silu", latent_channels=8, layers_per_block=1, norm_num_groups=8,
            norm_type="group", num_vq_embeddings=64, vq_embed_dim=None, lookup_from_codebook=True,
            mid_block_add_attention=False, sample_size=64, scaling_factor=0.18215, force_upcast=True,
            block_out_channels=(16, 16, 32), down_block_types=("DownEncoderBlock2D",) * 3,
            up_block_types=("UpDecoderBlock2D",) * 3,
        ),
        text_encoder=dict(
            hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=2, projection_dim=32,
            vocab_size=514, max_position_embeddings=CLIP_MAX_LENGTH, hidden_act="quick_gelu", layer_norm_eps=1e-5,
            bos_token_id=0, eos_token_id=2, pad_token_id=1,
        ),
        scheduler=dict(mask_token_id=64, masking_schedule="cosine"),
    ),
}


def byte_level_clip_tokenizer() -> CLIPTokenizer:
    """A CLIP tokenizer over the 256 byte symbols (no merges) that needs no download."""
    symbols = list(bytes_to_unicode().values())
    vocab = {symbol: i for i, symbol in enumerate(symbols)}
    vocab.update({symbol + "</w>": i + len(symbols) for i, symbol in enumerate(symbols)})
    # End-of-text takes the largest id so CLIP's legacy argmax pooling (eos_token_id 2) lands on it, as in real CLIP.
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=CLIP_MAX_LENGTH)


def clip_text_config(preset: str) -> CLIPTextConfig:
    """The text encoder config of a preset."""
    return CLIPTextConfig(**PRESETS[preset]["text_encoder"])
