"""The memory levers change where and when tensors live, never a value."""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader

from amused_lightning.args import LRScheduleArgs
from amused_lightning.decoding import decode_image_tokens
from amused_lightning.memory import ReleaseGradients, decode_in_chunks, sampling_parts
from amused_lightning.module import AmusedModule


def encoded_samples(count: int) -> list[dict[str, torch.Tensor]]:
    """Pre-encoded `tiny` samples (16x16 tokens over 64 codes, 32-wide prompt embeddings)."""
    generator = torch.Generator().manual_seed(0)
    return [{"image_tokens": torch.randint(0, 64, (16, 16), generator=generator),
             "encoder_hidden_states": torch.randn(77, 32, generator=generator),
             "pooled_text_emb": torch.randn(32, generator=generator),
             "micro_conds": torch.tensor([64.0, 64.0, 0.0, 0.0, 6.0])} for _ in range(count)]


def fit_tiny(callbacks: list[L.Callback]) -> tuple[AmusedModule, list]:
    """Two optimizer steps of two accumulated micro-batches on `tiny`; the module and its gradients at the end."""
    module = AmusedModule(lr_schedule=LRScheduleArgs(warmup_steps=0))
    trainer = L.Trainer(accelerator="cpu", max_steps=2, accumulate_grad_batches=2, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, callbacks=callbacks)
    trainer.fit(module, DataLoader(encoded_samples(8), batch_size=2))
    return module, [p.grad for p in module.transformer.parameters()]


def test_release_gradients_frees_them_after_each_step_and_changes_no_weight():
    released, released_grads = fit_tiny([ReleaseGradients()])
    kept, kept_grads = fit_tiny([])
    assert all(grad is None for grad in released_grads)
    assert any(grad is not None for grad in kept_grads)
    for a, b in zip(released.transformer.parameters(), kept.transformer.parameters()):
        assert torch.equal(a, b)


def test_decoding_in_chunks_gives_the_batched_pixels(tiny):
    tokens = torch.randint(0, 64, (3, 16, 16), generator=torch.Generator().manual_seed(1))
    # Convolutions may sum in another order for another batch size: equal to fp32 rounding through the decoder
    # (far below the 1/255 step of the saved images).
    torch.testing.assert_close(decode_in_chunks(tiny.vqvae, tokens, 1), decode_image_tokens(tiny.vqvae, tokens),
                               rtol=0, atol=5e-5)


def test_sampling_parts_are_all_that_decoding_runs(tiny):
    vqvae = AmusedModule().vqvae
    used = {id(p) for part in sampling_parts(vqvae) for p in part.parameters()}
    vqvae.encoder.to("meta")
    vqvae.quant_conv.to("meta")
    tokens = torch.randint(0, 64, (1, 16, 16))
    pixels = decode_image_tokens(vqvae, tokens)  # would fail on a meta weight
    assert pixels.shape == (1, 3, 64, 64) and used
