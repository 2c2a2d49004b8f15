"""Every seed recipe runs as written for two optimizer steps, with the model swapped to `tiny` and the hub dataset
swapped to a local one of the same shape (columns image and text; the StyleDrop image under its recipe name)."""

import importlib

import pytest
import torch
import yaml
from PIL import Image

from amused_lightning.commands.fit import cli_main

from helpers import CONFIGS, recipe_configs

# The seed document's values: (model, batch, lr, resolution, optimizer, lora alpha, max steps, validation steps).
SEED = {
    "amused-256-nouns-full": ("amused/amused-256", 8, 1e-4, 256, "torch.optim.AdamW", None, 10000, 250),
    "amused-256-nouns-full-8bit-adam": ("amused/amused-256", 16, 2e-5, 256, "bitsandbytes.optim.AdamW8bit", None,
                                        10000, 250),
    "amused-256-nouns-lora": ("amused/amused-256", 16, 8e-4, 256, "torch.optim.AdamW", 32, 10000, 250),
    "amused-512-minecraft-full": ("amused/amused-512", 8, 8e-5, 512, "torch.optim.AdamW", None, 10000, 250),
    "amused-512-minecraft-full-8bit-adam": ("amused/amused-512", 8, 5e-6, 512, "bitsandbytes.optim.AdamW8bit", None,
                                            10000, 250),
    "amused-512-minecraft-lora": ("amused/amused-512", 8, 1e-4, 512, "torch.optim.AdamW", 32, 10000, 250),
    "styledrop-256": ("amused/amused-256", 1, 4e-4, 256, "torch.optim.AdamW", 32, 10000, 100),
    "styledrop-512": ("amused/amused-512", 1, 1e-3, 512, "torch.optim.AdamW", 1, 100000, 100),
}


def test_every_seed_recipe_has_a_config():
    assert {p.stem for p in CONFIGS.glob("*.yaml")} - {"quickstart"} == set(SEED)


def resolved_config(recipe: str, capsys) -> dict:
    """The full config `--print_config` resolves from a recipe and its base (parsing only: no model or data opens)."""
    with pytest.raises(SystemExit):
        cli_main(["fit", *recipe_configs(recipe), "--print_config"])
    return yaml.safe_load(capsys.readouterr().out)


@pytest.mark.parametrize("recipe", sorted(SEED))
def test_recipe_carries_the_seed_values(recipe, capsys):
    config = resolved_config(recipe, capsys)
    data = config["data"]
    model, batch, lr, resolution, optimizer, alpha, max_steps, validation_steps = SEED[recipe]
    assert config["model"]["pretrained"] == model
    assert data["batch_size"] == batch and data["resolution"] == resolution
    assert config["model"]["optimizer"]["class_path"] == optimizer
    assert config["model"]["optimizer"]["init_args"]["lr"] == lr
    assert (config["model"]["lora"] or {}).get("alpha") == alpha
    assert config["model"]["lr_schedule"]["name"] == "constant" and config["trainer"]["precision"] == "16-mixed"
    assert config["trainer"]["max_steps"] == max_steps and config["validation_steps"] == validation_steps
    assert config["checkpoint"]["every_n_train_steps"] == 500
    assert len(config["model"]["validation"]["prompts"]) == {256: 8, 512: 5}[resolution] or "styledrop" in recipe
    source = data["source"]["init_args"]
    if "minecraft" in recipe:
        assert source["prompt_prefix"] == "minecraft "
    if "styledrop" in recipe:
        assert data["source"] == {"class_path": "amused_lightning.data.SingleImage",
                                  "init_args": {"path": "A mushroom in [V] style.png"}}
    else:
        assert data["source"]["class_path"] == "amused_lightning.data.HFDataset"
        assert source["path"] == {"nouns": "m1guelpf/nouns", "minecraft": "monadical-labs/minecraft-preview"}[
            recipe.split("-")[2]]
        assert source["split"] == "train" and source["image_key"] == "image" and source["prompt_key"] == "text"


@pytest.mark.parametrize("recipe", sorted(SEED))
def test_recipe_runs_two_steps_on_tiny(recipe, tmp_path, monkeypatch, toy_dataset, capsys):
    monkeypatch.chdir(tmp_path)
    Image.effect_mandelbrot((80, 48), (-2, -1, 1, 1), 40).convert("RGB").save("A mushroom in [V] style.png")
    config = resolved_config(recipe, capsys)
    swaps = ["--model.pretrained", "tiny", "--data.resolution", "32", "--trainer.max_steps", "2",
             "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false"]
    if config["data"]["source"]["class_path"].endswith("HFDataset"):
        swaps += ["--data.source.path", str(toy_dataset)]
    cli = cli_main(["fit", *recipe_configs(recipe), *swaps])
    assert cli.trainer.global_step == 2
    trained = cli.model.model.trained_keys()
    assert all("lora_" in key for key in trained) == (config["model"]["lora"] is not None)
    module_name, class_name = config["model"]["optimizer"]["class_path"].rsplit(".", 1)
    assert type(cli.trainer.optimizers[0]) is getattr(importlib.import_module(module_name), class_name)
    run = tmp_path / "runs" / recipe
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "export" / "model_index.json").is_file()
    assert (run / "validation" / "step=000002.png").is_file()
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert set(checkpoint["state_dict"]) == trained
