import pytest
import torch
from diffusers.training_utils import EMAModel

from amused_lightning.callbacks.ema import EMA, EmaSettings, TrainedWeightsEMA, find_ema
from amused_lightning.callbacks.placement import FrozenPlacement
from amused_lightning.model.adapters import LoraSettings, TextEncoderLoraSettings
from amused_lightning.model.finetuning import TextEncoderSettings
from amused_lightning.training.module import AmusedModule
from amused_lightning.training.optim import LR_SCHEDULES, lr_schedule

from helpers import fit, transformer_weights


def test_transformer_lora_trains_only_adapters():
    module = AmusedModule("tiny", lora=LoraSettings(r=4, alpha=8))
    trained = module.model.trained_keys()
    assert trained and all("lora_" in key and key.startswith("transformer.") for key in trained)
    targets = {key.split(".lora_")[0].rsplit(".", 1)[-1] for key in trained}
    assert targets == {"to_q", "to_k", "to_v"}


def test_lora_targets_that_match_nothing_are_rejected():
    with pytest.raises(ValueError, match=r"model.lora.target_modules=\['to_q', 'nope'\]: \['nope'\] match no"):
        AmusedModule("tiny", lora=LoraSettings(target_modules=["to_q", "nope"]))
    with pytest.raises(ValueError, match=r"\['attn3.to_k'\] match no"):
        AmusedModule("tiny", lora=LoraSettings(target_modules=["attn2.to_k", "attn3.to_k"]))
    # Ends of full names, as peft matches them: only the cross-attention's keys.
    trained = AmusedModule("tiny", lora=LoraSettings(target_modules=["attn2.to_k"])).model.trained_keys()
    assert trained and all(".attn2.to_k.lora_" in key for key in trained)
    with pytest.raises(ValueError, match=r"model.text_encoder.lora.target_modules=\['to_q'\]"):
        lora = TextEncoderLoraSettings(target_modules=["to_q"])
        AmusedModule("tiny", text_encoder=TextEncoderSettings(train=True, lora=lora))


def test_text_encoder_lora_uses_clip_names_and_moves_the_empty_prompt():
    lora = TextEncoderLoraSettings(r=2, alpha=4)
    module = AmusedModule("tiny", text_encoder=TextEncoderSettings(train=True, lora=lora))
    text_keys = {k for k in module.model.trained_keys() if k.startswith("text_encoder.")}
    assert text_keys and all("lora_" in k for k in text_keys)
    assert {k.split(".lora_")[0].rsplit(".", 1)[-1] for k in text_keys} == {"q_proj", "k_proj", "v_proj", "out_proj"}
    before = module.empty_prompt_embeddings()[1].detach().clone()
    with torch.no_grad():
        for name, param in module.model.text_encoder.named_parameters():
            if "lora_B" in name:
                param.add_(0.5)
    after = module.empty_prompt_embeddings()[1]
    assert not torch.allclose(before, after), "the empty prompt must follow the text encoder while it trains"
    assert after.requires_grad


def test_full_text_encoder_training_and_its_guard():
    module = AmusedModule("tiny", text_encoder=TextEncoderSettings(train=True))
    assert all(p.requires_grad for p in module.model.text_encoder.parameters())
    assert module.train().model.text_encoder.training
    with pytest.raises(ValueError, match="model.text_encoder.lora is set but model.text_encoder.train=False"):
        AmusedModule("tiny", text_encoder={"lora": TextEncoderLoraSettings()})


@pytest.mark.parametrize("decay", [0.0, 1.0, 1.5])
def test_ema_decay_must_lie_strictly_between_zero_and_one(decay):
    with pytest.raises(ValueError, match=f"ema.decay={decay} must lie in"):
        EMA(enabled=True, decay=decay)


def test_ema_follows_diffusers_ema_model():
    generator = torch.Generator().manual_seed(0)
    param = torch.nn.Parameter(torch.randn(5, generator=generator))
    module = torch.nn.Module()
    module.weight = param
    ours = TrainedWeightsEMA(module, EmaSettings(decay=0.95, update_after_step=2))
    reference = EMAModel([param], decay=0.95, update_after_step=2)
    for step in range(1, 40):
        with torch.no_grad():
            param.add_(torch.randn(5, generator=generator))
        ours.update(module, step)
        reference.step([param])
    assert torch.allclose(ours.shadow["weight"], reference.shadow_params[0], atol=1e-6)
    with ours.swapped_in(module):
        assert torch.equal(param.data, ours.shadow["weight"])
    assert not torch.equal(param.data, ours.shadow["weight"])


@pytest.mark.parametrize("name", LR_SCHEDULES)
def test_schedules_warm_up_in_optimizer_steps(name):
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = lr_schedule(name, optimizer, warmup_steps=10, total_steps=100)
    for _ in range(5):
        optimizer.step()
        schedule.step()
    expected = 1.0 if name == "constant" else 0.5
    assert optimizer.param_groups[0]["lr"] == pytest.approx(expected)


def test_scale_lr_multiplies_by_batch_devices_and_accumulation(tmp_path, toy_dataset):
    cli = fit(tmp_path, toy_dataset, "--trainer.max_steps", "1", "--model.lr_schedule.scale_lr", "true",
              "--trainer.accumulate_grad_batches", "3", "--model.optimizer.init_args.lr", "0.001")
    assert cli.model.hparams.batch_size == 4
    assert cli.trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.001 * 4 * 1 * 3)


def test_eight_bit_adam_keeps_uint8_state_for_large_weights(tmp_path, toy_dataset):
    cli = fit(tmp_path, toy_dataset, "--trainer.max_steps", "1", "--model.text_encoder.train", "true",
              "--model.optimizer", "bitsandbytes.optim.AdamW8bit", "--model.optimizer.init_args.lr", "1e-4",
              "--export.enabled", "false")  # the export releases the optimizer's state of a fit that is over
    optimizer = cli.trainer.optimizers[0]
    embedding = cli.model.model.text_encoder.text_model.embeddings.token_embedding.weight
    assert embedding.numel() >= 4096
    assert optimizer.state[embedding]["state1"].dtype == torch.uint8
    assert optimizer.state[embedding]["state2"].dtype == torch.uint8
    assert {group["weight_decay"] for group in optimizer.param_groups} == {0.01, 0.0}


MODES = {
    "full-8bit-adam": ("--model.optimizer", "bitsandbytes.optim.AdamW8bit", "--model.optimizer.init_args.lr", "1e-3"),
    "lora-ema": ("--model.lora.r", "4", "--model.lora.alpha", "8", "--ema.enabled", "true", "--ema.decay", "0.9"),
    "text-encoder-lora-ema": ("--model.text_encoder.train", "true", "--model.text_encoder.lora.r", "2",
                              "--ema.enabled", "true", "--ema.decay", "0.9", "--ema.update_after_step", "1"),
}


@pytest.mark.parametrize("mode", sorted(MODES))
def test_resume_is_exact_in_every_mode(mode, tmp_path, toy_dataset):
    common = ("--data.batch_size", "2", "--trainer.accumulate_grad_batches", "2",
              "--checkpoint.every_n_train_steps", "2", "--model.objective.cond_dropout_prob", "0.5", *MODES[mode])
    straight = fit(tmp_path / "straight", toy_dataset, "--trainer.max_steps", "4", *common)
    fit(tmp_path / "resumed", toy_dataset, "--trainer.max_steps", "2", *common)
    resumed = fit(tmp_path / "resumed", toy_dataset, "--trainer.max_steps", "4", "--ckpt_path", "last", *common)
    for key, value in straight.model.state_dict().items():
        assert torch.allclose(value, resumed.model.state_dict()[key], atol=1e-6, rtol=0), key
    if find_ema(straight.trainer) is not None:
        expected, actual = find_ema(straight.trainer).average.shadow, find_ema(resumed.trainer).average.shadow
        for key, value in expected.items():
            assert torch.allclose(value, actual[key], atol=1e-6, rtol=0), key
    checkpoint = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=True)
    assert set(checkpoint["state_dict"]) == straight.model.model.trained_keys()


def test_lora_checkpoint_holds_no_frozen_weights(tmp_path, toy_dataset):
    cli = fit(tmp_path, toy_dataset, "--trainer.max_steps", "2", "--model.lora.r", "4")
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["state_dict"] and all("lora_" in key for key in checkpoint["state_dict"])
    base = transformer_weights(cli)
    fresh = AmusedModule("tiny", lora=LoraSettings(r=4))
    for key, value in fresh.model.transformer.state_dict().items():
        if "lora_" not in key:
            assert torch.equal(value, base[key]), f"frozen base weight {key} changed"


def test_mixed_precision_lora_run_with_cache_offload_and_dropout(tmp_path, toy_dataset):
    # bf16-mixed on CPU exercises the same paths as fp16 on a GPU: frozen weights cast, frozen parts offloaded,
    # the empty prompt encoded while the text encoder visits the device, validation sampling bringing in what it runs.
    cli = fit(tmp_path, toy_dataset, "--trainer.max_steps", "3", "--trainer.precision", "bf16-mixed",
              "--model.lora.r", "4", "--model.objective.cond_dropout_prob", "0.5", "--validation_steps", "2",
              "--model.validation.prompts", '["a pixel art character"]',
              "--model.validation.generation.num_inference_steps", "2")
    placement = next(c for c in cli.trainer.callbacks if isinstance(c, FrozenPlacement))
    assert placement.cast_tensors > 0 and cli.trainer.global_step == 3
    assert type(cli.datamodule.train_dataset).__name__ == "CachedDataset"
    assert (tmp_path / "validation" / "step=000002.png").is_file()
