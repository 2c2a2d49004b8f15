"""Run checkpoints written before the package took its folders by role still load: into the model (trained and EMA
weights), into an export, and into a resumed fit that writes the same layout; another format is refused in one line
that names it."""


import pytest
import torch

from amused_lightning.commands.export import main as export_main
from amused_lightning.export.card import CARD_NAME
from amused_lightning.formats import LORA_WEIGHT_NAME
from amused_lightning.model.amused import AmusedModel
from amused_lightning.run.checkpoint import EMA_STATE_KEY, MARK, RunCheckpoint

from helpers import REPO, fit

# Written by `fit` at commit b2a2b5b (before the restructuring): the tiny preset with LoRA r 2 (alpha 4) on the
# transformer and r 2 on the text encoder, EMA on, 2 optimizer steps of batch 4 at 32 px on the `toy_dataset`
# fixture. Only the absolute paths in it (ModelCheckpoint's state, the data source's path) were made relative.
FORMAT_2 = REPO / "tests" / "fixtures" / "format2-lora-ema.ckpt"
SAME_RUN = ("--model.lora.r", "2", "--model.lora.alpha", "4", "--model.text_encoder.train", "true",
            "--model.text_encoder.lora.r", "2", "--ema.enabled", "true")


def test_an_old_checkpoint_gives_the_model_its_trained_or_ema_weights():
    saved = torch.load(FORMAT_2, weights_only=True)  # plain data: no class of this package is pickled in it
    run = RunCheckpoint.read(FORMAT_2)
    assert run.step == 2 and run.optimizer == "torch.optim.adamw.AdamW" and run.run["ema_decay"] == 0.9999
    for choice, weights in (("ema", saved["callbacks"][EMA_STATE_KEY]["shadow"]), ("trained", saved["state_dict"])):
        model = AmusedModel.from_checkpoint(FORMAT_2, choice)
        state = model.state_dict()
        assert model.weights == choice and weights and all(torch.equal(state[k], v) for k, v in weights.items())
    assert AmusedModel.from_checkpoint(FORMAT_2).weights == "ema", "the EMA by default when the run kept one"


def test_an_old_checkpoint_exports(tmp_path):
    written = export_main([str(FORMAT_2), str(tmp_path / "export")])
    assert (tmp_path / "export" / LORA_WEIGHT_NAME) in written
    card = (tmp_path / "export" / CARD_NAME).read_text()
    assert "LoRA on the transformer: r 2, alpha 4" in card and "LoRA on the text encoder: r 2, alpha 32" in card
    assert "| steps | 2 optimizer steps |" in card and "the EMA of the trained weights (decay 0.9999)" in card


def test_an_old_checkpoint_resumes_and_the_new_one_has_its_layout(tmp_path, toy_dataset):
    fit(tmp_path, toy_dataset, *SAME_RUN, "--trainer.max_steps", "3", "--ckpt_path", str(FORMAT_2),
        "--trainer.limit_val_batches", "0", "--export.enabled", "false")
    old, new = torch.load(FORMAT_2, weights_only=True), torch.load(tmp_path / "checkpoints" / "last.ckpt",
                                                                   weights_only=True)
    assert new["global_step"] == 3 and new.keys() == old.keys()
    assert new["state_dict"].keys() == old["state_dict"].keys()
    assert new["callbacks"][EMA_STATE_KEY]["shadow"].keys() == old["callbacks"][EMA_STATE_KEY]["shadow"].keys()
    assert new[MARK].keys() == old[MARK].keys() and new[MARK]["format"] == old[MARK]["format"]


def test_another_format_is_refused_naming_it(tmp_path):
    checkpoint = torch.load(FORMAT_2, weights_only=True)
    checkpoint[MARK]["format"] = 1
    torch.save(checkpoint, tmp_path / "format1.ckpt")
    with pytest.raises(ValueError, match="has checkpoint format 1, this version reads format 2"):
        RunCheckpoint.read(tmp_path / "format1.ckpt")
