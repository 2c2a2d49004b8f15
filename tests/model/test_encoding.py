import pytest
import torch

from amused_lightning.model.encoding import drop_conditioning, encode_image_tokens, encode_prompts, tokenize_prompts


def test_chunked_vq_encode_equals_unchunked_for_every_chunk_size(tiny):
    pixels = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    whole = encode_image_tokens(tiny.vqvae, pixels)
    assert whole.shape == (5, 8, 8) and whole.dtype == torch.long
    assert whole.max() < tiny.vqvae.config.num_vq_embeddings
    for chunk_size in range(1, 7):
        assert torch.equal(encode_image_tokens(tiny.vqvae, pixels, chunk_size), whole), chunk_size


def test_vq_encode_runs_in_fp32_under_autocast(tiny):
    pixels = torch.rand(2, 3, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        tokens = encode_image_tokens(tiny.vqvae, pixels, 1)
    assert torch.equal(tokens, encode_image_tokens(tiny.vqvae, pixels))


def test_prompts_are_padded_and_truncated_to_77(tiny):
    ids = tokenize_prompts(tiny.tokenizer, ["a cat", "word " * 200])
    assert ids.shape == (2, 77)
    assert ids[0, -1] == tiny.tokenizer.pad_token_id
    assert ids[1, -1] == tiny.tokenizer.eos_token_id


def test_prompt_embeddings_are_penultimate_layer_and_projection(tiny):
    ids = tokenize_prompts(tiny.tokenizer, ["a cat"])
    hidden, pooled = encode_prompts(tiny.text_encoder, ids)
    outputs = tiny.text_encoder(ids, output_hidden_states=True)
    assert torch.equal(hidden, outputs.hidden_states[-2]) and not torch.equal(hidden, outputs.hidden_states[-1])
    assert pooled.shape == (1, tiny.text_encoder.config.projection_dim)
    assert torch.equal(pooled, outputs.text_embeds)


@pytest.mark.parametrize("drop", [[True, False, True], [False, False, False], [True, True, True]])
def test_drop_conditioning_replaces_exactly_the_dropped_samples(drop):
    hidden, pooled = torch.randn(3, 77, 4), torch.randn(3, 6)
    empty_hidden, empty_pooled = torch.randn(1, 77, 4), torch.randn(1, 6)
    new_hidden, new_pooled = drop_conditioning(hidden, pooled, empty_hidden, empty_pooled, torch.tensor(drop))
    for i, dropped in enumerate(drop):
        assert torch.equal(new_hidden[i], empty_hidden[0] if dropped else hidden[i])
        assert torch.equal(new_pooled[i], empty_pooled[0] if dropped else pooled[i])
