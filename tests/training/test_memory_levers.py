"""The memory levers are on by default and change where and when tensors live, never a value."""

from __future__ import annotations

from types import SimpleNamespace

import lightning as L
import numpy as np
import torch
from lightning.pytorch.strategies import SingleDeviceStrategy
from torch.utils.data import DataLoader

from amused_lightning.callbacks.placement import FrozenPlacement
from amused_lightning.callbacks.validation_images import validation_pixels
from amused_lightning.model.adapters import LoraSettings
from amused_lightning.model.decoding import GenerationSettings, decode_image_tokens, to_pil
from amused_lightning.model.memory import own_host_memory, sampling_parts
from amused_lightning.training.module import AmusedModule
from amused_lightning.training.settings import LRScheduleSettings, MemorySettings, ValidationSettings

from helpers import fit


def encoded_samples(count: int) -> list[dict[str, torch.Tensor]]:
    """Pre-encoded `tiny` samples (16x16 tokens over 64 codes, 32-wide prompt embeddings)."""
    generator = torch.Generator().manual_seed(0)
    return [{"image_tokens": torch.randint(0, 64, (16, 16), generator=generator),
             "encoder_hidden_states": torch.randn(77, 32, generator=generator),
             "pooled_text_emb": torch.randn(32, generator=generator),
             "micro_conds": torch.tensor([64.0, 64.0, 0.0, 0.0, 6.0])} for _ in range(count)]


def tiny_trainer(callbacks: list[L.Callback], precision: str = "32-true") -> L.Trainer:
    """Two optimizer steps of two accumulated micro-batches, on the CPU, nothing written."""
    return L.Trainer(accelerator="cpu", max_steps=2, accumulate_grad_batches=2, logger=False, precision=precision,
                     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                     limit_val_batches=0, callbacks=callbacks)


def fit_tiny(memory: MemorySettings) -> tuple[AmusedModule, list]:
    """`tiny_trainer`'s fit of `tiny` with `memory`; the module and its gradients at the end."""
    module = AmusedModule("tiny", lr_schedule=LRScheduleSettings(warmup_steps=0), memory=memory)
    tiny_trainer([]).fit(module, DataLoader(encoded_samples(8), batch_size=2))
    return module, [p.grad for p in module.model.transformer.parameters()]


def test_released_gradients_are_freed_after_each_step_and_change_no_weight():
    released, released_grads = fit_tiny(MemorySettings())
    kept, kept_grads = fit_tiny(MemorySettings(release_gradients=False))
    assert all(grad is None for grad in released_grads)
    assert any(grad is not None for grad in kept_grads)
    for a, b in zip(released.model.transformer.parameters(), kept.model.transformer.parameters()):
        assert torch.equal(a, b)


def test_frozen_weights_are_cast_before_the_strategy_moves_the_module():
    module = AmusedModule("tiny", lora=LoraSettings(r=4), lr_schedule=LRScheduleSettings(warmup_steps=0))
    trainer = tiny_trainer([FrozenPlacement()], precision="bf16-mixed")
    arriving = []
    move = trainer.strategy.model_to_device

    def recording_move() -> None:
        frozen = [p for layer in module.model.transformer.modules() if isinstance(layer, torch.nn.Linear)
                  for p in layer.parameters(recurse=False) if not p.requires_grad]
        arriving.append({p.dtype for p in frozen})
        move()

    trainer.strategy.model_to_device = recording_move
    trainer.fit(module, DataLoader(encoded_samples(8), batch_size=2))
    assert arriving == [{torch.bfloat16}]


def test_weights_mapped_from_a_file_get_memory_of_their_own(tmp_path):
    from safetensors.torch import load_file, save_file

    save_file({"weight": torch.randn(64, 64)}, tmp_path / "w.safetensors")
    layer = torch.nn.Linear(64, 64, bias=False)
    layer.load_state_dict(load_file(tmp_path / "w.safetensors"), assign=True)  # the file's pages, copy-on-write
    mapped, values = layer.weight.data_ptr(), layer.weight.detach().clone()
    assert own_host_memory(layer.parameters()) == 1
    assert layer.weight.data_ptr() != mapped and torch.equal(layer.weight, values) and layer.weight.requires_grad
    on_meta = torch.nn.Linear(2, 2, device="meta")
    assert own_host_memory(on_meta.parameters()) == 0, "only host memory is copied"


def test_a_fit_on_the_cpu_copies_the_trained_weights_and_leaves_the_frozen_ones():
    module = AmusedModule("tiny", lora=LoraSettings(r=4), lr_schedule=LRScheduleSettings(warmup_steps=0))
    params = list(module.model.parameters())
    loaded = [p.data_ptr() for p in params]
    tiny_trainer([]).fit(module, DataLoader(encoded_samples(4), batch_size=2))
    moved = {p.requires_grad: set() for p in params}
    for p, before in zip(params, loaded):
        moved[p.requires_grad].add(p.data_ptr() != before)
    assert moved == {True: {True}, False: {False}}


def test_one_image_at_a_time_decodes_the_batched_pixels(tiny):
    tokens = torch.randint(0, 64, (3, 16, 16), generator=torch.Generator().manual_seed(1))
    # Convolutions may sum in another order for another batch size: equal to fp32 rounding through the decoder
    # (far below the 1/255 step of the saved images).
    torch.testing.assert_close(decode_image_tokens(tiny.vqvae, tokens, 1), decode_image_tokens(tiny.vqvae, tokens),
                               rtol=0, atol=5e-5)


def test_validation_images_decoded_one_at_a_time_match_generate():
    prompts = ["a red square", "a blue circle", "a pixel art character"]
    module = AmusedModule("tiny", validation=ValidationSettings(prompts, GenerationSettings(4))).eval()
    lean = module.model.generate_pixels(prompts, GenerationSettings(4), decode_chunk_size=1)
    torch.testing.assert_close(lean, module.model.generate_pixels(prompts, GenerationSettings(4)), rtol=0, atol=5e-5)
    torch.testing.assert_close(validation_pixels(module), lean, rtol=0, atol=0)
    for a, b in zip(to_pil(lean), module.model.generate(prompts, GenerationSettings(4), seed=module.model.spec.seed)):
        # AmusedPipeline's exact pixels come from `generate`; here one on a rounding boundary may move by one level.
        assert np.abs(np.asarray(a).astype(int) - np.asarray(b).astype(int)).max() <= 1


def test_sampling_parts_are_all_that_decoding_runs(tiny):
    vqvae = AmusedModule("tiny").model.vqvae
    used = {id(p) for part in sampling_parts(vqvae) for p in part.parameters()}
    vqvae.encoder.to("meta")
    vqvae.quant_conv.to("meta")
    tokens = torch.randint(0, 64, (1, 16, 16))
    pixels = decode_image_tokens(vqvae, tokens)  # would fail on a meta weight
    assert pixels.shape == (1, 3, 64, 64) and used


def test_placement_brings_in_only_what_a_step_runs():
    # "meta" stands for the accelerator (a CPU-only machine has none): what moves there is what the step runs.
    module = AmusedModule("tiny")
    trainer = SimpleNamespace(strategy=SingleDeviceStrategy(torch.device("cpu")))
    parts = SimpleNamespace(vqvae=module.model.vqvae, text_encoder=module.model.text_encoder, text_encoder_trains=False)
    stand_in = SimpleNamespace(model=parts, device=torch.device("meta"))
    FrozenPlacement().on_validation_batch_start(trainer, stand_in, {"pixel_values": None, "input_ids": None}, 0)
    parts = [*module.model.vqvae.named_children(), ("text_encoder", module.model.text_encoder)]
    on_device = {name for name, part in parts if next(part.parameters()).device.type == "meta"}
    assert on_device == {"encoder", "quant_conv", "quantize", "text_encoder"}


def test_default_fit_has_the_levers_on(tmp_path, toy_dataset):
    cli = fit(tmp_path, toy_dataset, "--trainer.max_steps", "2", "--validation_steps", "100")
    placement = next(c for c in cli.trainer.callbacks if isinstance(c, FrozenPlacement))
    assert placement.offload_frozen and placement.frozen_in_compute_dtype
    assert cli.model.memory.release_gradients and cli.model.memory.decode_chunk_size == 1
    assert all(p.grad is None for p in cli.model.parameters())
