"""Resume says what it does: `last` without last.ckpt takes the newest step checkpoint; a new learning rate or
schedule is applied and said; a change to what the trained weights mean is refused, naming the setting."""

import logging

import pytest
import torch

from amused_lightning.training.resume import check_resume_settings

from helpers import fails_with, fit, tiny_fit

LORA = ("--model.lora.r", "4", "--model.lora.alpha", "8", "--checkpoint.every_n_train_steps", "1")


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, toy_dataset):
    """A 2-step LoRA run with step checkpoints, its last.ckpt removed."""
    root = tmp_path_factory.mktemp("lora-run")
    fit(root, toy_dataset, "--trainer.max_steps", "2", *LORA)
    (root / "checkpoints" / "last.ckpt").unlink()
    return root


@pytest.mark.parametrize("change, refusal", [
    (("--model.lora.alpha", "16"), "model.lora.alpha changed on resume: 8.0 -> 16.0"),
    (("--model.lora.r", "8"), "model.lora.r changed on resume: 4 -> 8"),
    (("--model.lora.target_modules", "[to_q]"), "model.lora.target_modules changed on resume: "
                                                "['to_k', 'to_q', 'to_v'] -> ['to_q']"),
    (("--model.lora", "null"), "model.lora changed on resume: on -> off"),
    (("--model.lora.use_dora", "true"), "model.lora.use_dora changed on resume: False -> True"),
    (("--model.text_encoder.train", "true"), "model.text_encoder.train changed on resume: False -> True"),
])
def test_a_change_to_what_the_weights_mean_is_refused(lora_run, toy_dataset, capsys, change, refusal):
    line = fails_with(capsys, *tiny_fit(lora_run, toy_dataset, *LORA, *change, "--ckpt_path", "last"))
    assert refusal in line and "step=2.ckpt was trained with" in line, line


def test_another_optimizer_class_is_refused_before_a_step(lora_run, toy_dataset, capsys):
    sgd = ("--model.optimizer", "torch.optim.SGD", "--model.optimizer.init_args.lr", "0.1")
    line = fails_with(capsys, *tiny_fit(lora_run, toy_dataset, *LORA, *sgd, "--ckpt_path", "last"))
    assert "model.optimizer changed on resume: torch.optim.adamw.AdamW -> torch.optim.sgd.SGD" in line, line
    assert sorted(p.name for p in (lora_run / "checkpoints").glob("*.ckpt")) == ["step=1.ckpt", "step=2.ckpt"]


def test_the_other_checks_name_the_base_model_and_a_preset_seed():
    old = {"pretrained": "tiny", "seed": 0, "lora": None, "objective": {"cond_dropout_prob": 0.1}}
    with pytest.raises(ValueError, match="model.pretrained changed on resume: tiny -> toy"):
        check_resume_settings(old, {**old, "pretrained": "toy"}, "x.ckpt")
    with pytest.raises(ValueError, match="seed_everything changed on resume: 0 -> 1"):
        check_resume_settings(old, {**old, "seed": 1}, "x.ckpt")  # a preset's base weights come from the seed
    assert check_resume_settings(old, {**old, "objective": {"cond_dropout_prob": 0.2}}, "x.ckpt") == [
        "model.objective.cond_dropout_prob changed on resume: 0.1 -> 0.2 (applied)"]


def test_last_without_last_ckpt_resumes_from_the_newest_step_and_applies_a_new_rate(lora_run, toy_dataset, caplog):
    new_rate = ("--model.optimizer.init_args.lr", "5e-4", "--model.lr_schedule.name", "linear",
                "--model.lr_schedule.warmup_steps", "0")
    with caplog.at_level(logging.INFO, logger="amused_lightning"):
        cli = fit(lora_run, toy_dataset, "--trainer.max_steps", "5", *LORA, *new_rate, "--ckpt_path", "last")
    assert cli.trainer.global_step == 5
    assert (f"--ckpt_path last: {lora_run / 'checkpoints'} holds no last.ckpt; resuming from the newest step "
            "checkpoint, step=2.ckpt") in caplog.messages
    assert "learning rate changed on resume: 0.001 -> 0.0005" in caplog.messages
    assert "model.lr_schedule.name changed on resume: constant -> linear (applied)" in caplog.messages
    # Linear decay over 5 steps from the new rate: after step 4 the rate is 5e-4 * (5 - 4) / 5.
    optimizer = torch.load(lora_run / "checkpoints" / "step=4.ckpt", weights_only=True)["optimizer_states"][0]
    assert optimizer["param_groups"][0]["initial_lr"] == 5e-4
    assert optimizer["param_groups"][0]["lr"] == pytest.approx(5e-4 / 5)
