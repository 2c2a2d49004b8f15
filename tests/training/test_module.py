import copy

import lightning as L
import pytest
import torch

from amused_lightning.model.encoding import encode_prompts, tokenize_prompts
from amused_lightning.training.activation_checkpointing import enable_gradient_checkpointing
from amused_lightning.training.loss import masked_token_loss
from amused_lightning.training.module import AmusedModule
from amused_lightning.training.optim import parameter_groups
from amused_lightning.training.settings import MemorySettings, ObjectiveSettings


def batch_for(module, size=3, resolution=32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return {
        "pixel_values": torch.rand(size, 3, resolution, resolution, generator=generator),
        "micro_conds": torch.tensor([[resolution, resolution, 0, 0, 6.0]] * size),
        "input_ids": tokenize_prompts(module.model.tokenizer, [f"a pixel art character {i}" for i in range(size)]),
    }


def loss_and_grads(module, batch, generator_seed=0):
    module.zero_grad()
    tokens = module.image_tokens(batch)
    mask = torch.rand(tokens.shape, generator=torch.Generator().manual_seed(generator_seed)) < 0.5
    hidden, pooled = module.prompt_embeddings(batch)
    loss = masked_token_loss(*module.masked_logits(tokens, mask, hidden, pooled, batch["micro_conds"]))
    loss.backward()
    grads = {n: p.grad.clone() for n, p in module.model.transformer.named_parameters() if p.grad is not None}
    return loss.detach(), grads


def test_gradient_checkpointing_gives_identical_loss_and_gradients():
    plain = AmusedModule("tiny")
    checkpointed = copy.deepcopy(plain)
    enable_gradient_checkpointing(checkpointed.model.transformer)
    batch = batch_for(plain)
    loss, grads = loss_and_grads(plain, batch)
    loss_ckpt, grads_ckpt = loss_and_grads(checkpointed, batch)
    assert torch.equal(loss, loss_ckpt)
    assert all(torch.allclose(grads[n], grads_ckpt[n], atol=1e-7, rtol=1e-6) for n in grads)
    assert checkpointed.model.transformer.state_dict().keys() == plain.model.transformer.state_dict().keys()


def test_gradient_checkpointing_actually_recomputes():
    module = AmusedModule("tiny", memory=MemorySettings(gradient_checkpointing=True))
    calls = []
    module.model.transformer.transformer_layers[0].attn1.register_forward_hook(lambda *args: calls.append(1))
    loss_and_grads(module, batch_for(module))
    assert len(calls) == 2, "the checkpointed layer runs once in forward and again in backward"


def test_training_is_reproducible_and_batches_may_carry_encodings():
    module = AmusedModule("tiny", objective=ObjectiveSettings(cond_dropout_prob=0.0))
    batch = batch_for(module)
    tokens = module.image_tokens(batch)
    hidden, pooled = encode_prompts(module.model.text_encoder, batch["input_ids"])
    pre_encoded = {"image_tokens": tokens, "encoder_hidden_states": hidden, "pooled_text_emb": pooled,
                   "micro_conds": batch["micro_conds"]}
    assert torch.equal(loss_and_grads(module, batch)[0], loss_and_grads(module, pre_encoded)[0])


def test_full_conditioning_dropout_trains_on_the_empty_prompt():
    dropped, plain = AmusedModule("tiny", objective=ObjectiveSettings(cond_dropout_prob=1.0)), AmusedModule("tiny")
    batch = batch_for(dropped)
    empty = dict(batch, input_ids=tokenize_prompts(plain.model.tokenizer, [""] * 3))
    for module in (dropped, plain):
        module.trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False,
                                   enable_progress_bar=False, enable_model_summary=False)
    # Batched and single-prompt CLIP runs may differ in the last bits of float arithmetic.
    assert torch.allclose(dropped.training_step(batch, 0), plain.training_step(empty, 0), rtol=1e-6, atol=0)
    assert not torch.equal(plain.training_step(batch, 0), plain.training_step(empty, 0))


@pytest.mark.parametrize("logits_at_masked_only", [False, True])
def test_unconditional_label_smoothing_applies_to_the_dropped_samples_only(logits_at_masked_only):
    def step_loss(**objective):
        module = AmusedModule("tiny", objective=ObjectiveSettings(cond_dropout_prob=1.0, **objective),
                              memory=MemorySettings(logits_at_masked_only=logits_at_masked_only))
        module.trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False,
                                   enable_progress_bar=False, enable_model_summary=False)
        return module.training_step(batch_for(module), 0)

    # Every sample is dropped here, so the unconditional share replaces the prompted one throughout (a per-token
    # share sums in another order than a single float, hence the tolerance).
    same = dict(rtol=1e-6, atol=0)
    assert torch.allclose(step_loss(label_smoothing=0.0, unconditional_label_smoothing=0.3),
                          step_loss(label_smoothing=0.3), **same)
    assert torch.allclose(step_loss(label_smoothing=0.3, unconditional_label_smoothing=0.0),
                          step_loss(label_smoothing=0.0), **same)
    assert not torch.allclose(step_loss(label_smoothing=0.3), step_loss(label_smoothing=0.0), **same)


def test_unconditional_label_smoothing_needs_conditioning_dropout():
    with pytest.raises(ValueError, match=r"unconditional_label_smoothing=0.1 needs model.objective.cond_dropout_prob"):
        ObjectiveSettings(cond_dropout_prob=0.0, unconditional_label_smoothing=0.1)


def test_frozen_parts_stay_frozen_and_in_eval_mode():
    module = AmusedModule("tiny").train()
    model = module.model
    assert not model.vqvae.training and not model.text_encoder.training and model.transformer.training
    assert not any(p.requires_grad for p in module.model.vqvae.parameters())
    assert not any(p.requires_grad for p in module.model.text_encoder.parameters())
    assert module.model.trained_keys() == {f"transformer.{n}" for n, _ in module.model.transformer.named_parameters()}


def test_no_weight_decay_on_biases_norms_and_embeddings():
    module = AmusedModule("tiny")
    decayed, exempt = parameter_groups([module.model.transformer, module.model.text_encoder])
    names = {id(p): n for n, p in module.model.transformer.named_parameters()}
    exempt_names = {names[id(p)] for p in exempt["params"]}
    decayed_names = {names[id(p)] for p in decayed["params"]}
    assert exempt["weight_decay"] == 0.0 and "weight_decay" not in decayed
    assert {"embed.embeddings.weight", "mlm_layer.layer_norm.weight", "encoder_proj_layer_norm.weight"} <= exempt_names
    assert all("norm" in n or "embed" in n or n.endswith("bias") or ".gamma" in n or ".beta" in n
               for n in exempt_names)
    assert {"encoder_proj.weight", "mlm_layer.conv2.weight"} <= decayed_names
    assert len(exempt_names) + len(decayed_names) == len(names)


@pytest.mark.parametrize("group, setting, value", [
    ("objective", "min_masking_rate", 1.5), ("objective", "cond_dropout_prob", -0.1), ("memory", "vq_chunk_size", 0),
    ("lr_schedule", "name", "warm"), ("lr_schedule", "warmup_steps", -1), ("validation", "mask_ratios", [0.0])])
def test_bad_settings_are_rejected_with_their_name(group, setting, value):
    name = f"model.{group}.{setting}={value!r}".replace("'", ".?").replace("(", r"\(").replace("[", r"\[")
    with pytest.raises(ValueError, match=name):
        AmusedModule("tiny", **{group: {setting: value}})


def test_head_at_masked_positions_only_gives_the_same_loss_and_gradients():
    full = AmusedModule("tiny", memory=MemorySettings(logits_at_masked_only=False))
    masked_only = AmusedModule("tiny", memory=MemorySettings(logits_at_masked_only=True))
    batch = batch_for(full)
    loss, grads = loss_and_grads(full, batch)
    loss_masked, grads_masked = loss_and_grads(masked_only, batch)
    assert torch.allclose(loss, loss_masked, rtol=1e-6, atol=0)
    assert all(torch.allclose(grads[n], grads_masked[n], rtol=1e-4, atol=1e-7) for n in grads)
    tokens = full.image_tokens(batch)
    mask = torch.zeros_like(tokens, dtype=torch.bool)
    mask[0, 0, 0] = mask[2, 3, 1] = True
    hidden, pooled = full.prompt_embeddings(batch)
    logits, labels = masked_only.masked_logits(tokens, mask, hidden, pooled, batch["micro_conds"])
    assert logits.shape == (2, 64) and torch.equal(labels, tokens[mask])


def test_frozen_parts_unused_by_a_step_are_named():
    from amused_lightning.callbacks.placement import unused_frozen_parts

    module = AmusedModule("tiny")
    pixels = {"pixel_values": None, "input_ids": None}
    encoded = {"image_tokens": None, "encoder_hidden_states": None}
    model = module.model
    names = {id(m): n for n, m in model.named_modules()}
    parts = unused_frozen_parts(model.vqvae, model.text_encoder, False, pixels)
    assert {names[id(m)] for m in parts} == {"vqvae.decoder", "vqvae.post_quant_conv"}
    assert {names[id(m)] for m in unused_frozen_parts(model.vqvae, model.text_encoder, False, encoded)} == {
        "vqvae.decoder", "vqvae.post_quant_conv", "vqvae.encoder", "vqvae.quant_conv", "vqvae.quantize",
        "text_encoder"}
    assert model.text_encoder not in unused_frozen_parts(model.vqvae, model.text_encoder, True, encoded)


@pytest.mark.slow
def test_compiled_transformer_gives_the_same_loss():
    plain, compiled = AmusedModule("tiny"), AmusedModule("tiny", memory=MemorySettings(compile=True))
    batch = batch_for(plain)
    loss, grads = loss_and_grads(plain, batch)
    loss_compiled, grads_compiled = loss_and_grads(compiled, batch)
    assert torch.allclose(loss, loss_compiled, rtol=1e-5)
    assert all(torch.allclose(grads[n], grads_compiled[n], rtol=1e-3, atol=1e-6) for n in grads)


def test_frozen_weights_in_compute_dtype_change_nothing_under_autocast():
    from amused_lightning.callbacks.placement import cast_frozen_autocast_layers
    from amused_lightning.model.adapters import LoraSettings

    stored = AmusedModule("tiny", lora=LoraSettings(r=4))
    cast = copy.deepcopy(stored)  # the same adapter initialisation
    assert cast_frozen_autocast_layers(cast.model.transformer, torch.bfloat16) > 0
    assert cast_frozen_autocast_layers(cast.model.text_encoder, torch.bfloat16) > 0
    assert all(p.dtype == torch.float32 for p in cast.parameters() if p.requires_grad)
    batch = batch_for(stored)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, grads = loss_and_grads(stored, batch)
        loss_cast, grads_cast = loss_and_grads(cast, batch)
    assert torch.equal(loss, loss_cast)
    assert all(torch.equal(grads[n], grads_cast[n]) for n in grads if grads[n] is not None)


def test_final_export_uses_stored_precision_weights(tmp_path, toy_dataset):
    from diffusers import UVit2DModel

    from amused_lightning.callbacks.placement import FrozenPlacement
    from amused_lightning.model.components import load_components

    from helpers import fit

    cli = fit(tmp_path, toy_dataset, "--trainer.max_steps", "1", "--model.lora.r", "4",
              "--trainer.precision", "bf16-mixed", "--validation_steps", "100")
    placement = next(c for c in cli.trainer.callbacks if isinstance(c, FrozenPlacement))
    assert placement.cast_tensors > 0
    exported = UVit2DModel.from_pretrained(str(tmp_path / "export" / "transformer"))
    base = load_components("tiny").transformer
    assert all(torch.equal(v, base.state_dict()[k]) for k, v in exported.state_dict().items())


def test_fused_adamw_gives_the_same_update():
    import functools

    batch = batch_for(AmusedModule("tiny"))
    weights = []
    for fused in (False, True):
        module = AmusedModule("tiny")
        optimizer = functools.partial(torch.optim.AdamW, lr=1e-2, fused=fused)(
            [p for p in module.model.transformer.parameters() if p.requires_grad])
        loss_and_grads(module, batch)
        optimizer.step()
        weights.append({n: p.detach().clone() for n, p in module.model.transformer.named_parameters()})
    assert all(torch.allclose(weights[0][n], weights[1][n], rtol=1e-5, atol=1e-7) for n in weights[0])
    fresh = AmusedModule("tiny").model.transformer.state_dict()
    assert not all(torch.equal(weights[0][n], fresh[n]) for n in weights[0])
