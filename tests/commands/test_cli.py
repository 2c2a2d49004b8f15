from pathlib import Path

import pytest
import torch
import yaml

from amused_lightning.__main__ import COMMANDS, main
from amused_lightning.commands.fit import cli_main

from helpers import CONFIGS, REPO, fit, recipe_configs, scalars, transformer_weights

RECIPES = sorted(path.stem for path in CONFIGS.glob("*.yaml") if path.stem != "quickstart")


@pytest.mark.parametrize("configs", [["--config", str(CONFIGS / "quickstart.yaml")], *map(recipe_configs, RECIPES)],
                         ids=["quickstart", *RECIPES])
def test_every_shipped_config_parses_and_names_its_base_model(configs, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", *configs, "--print_config"])
    assert exit_info.value.code == 0
    assert yaml.safe_load(capsys.readouterr().out)["model"]["pretrained"], "model.pretrained is required"


def test_every_base_config_is_used_by_a_recipe():
    used = {Path(arg).name for recipe in RECIPES for arg in recipe_configs(recipe) if "/base/" in arg}
    assert used == {path.name for path in (CONFIGS / "base").glob("*.yaml")}


def test_fit_logs_and_checkpoints(tmp_path, toy_dataset):
    cli = fit(tmp_path, toy_dataset, "--trainer.max_steps", "4", "--checkpoint.every_n_train_steps", "2",
              "--checkpoint.save_top_k", "1")
    assert cli.trainer.global_step == 4
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["last.ckpt", "step=4.ckpt"], "save_top_k keeps only the newest step checkpoint, plus last"
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert all(key.startswith("transformer.") for key in checkpoint["state_dict"])
    for tag in ("train/loss", "train/lr", "train/masking_rate"):
        assert [step for step, _ in scalars(tmp_path, tag)] == [0, 1, 2, 3], tag


def test_resumed_run_ends_with_the_same_weights(tmp_path, toy_dataset):
    # 12 images, batch 2, accumulation 2: 3 optimizer steps an epoch, so the checkpoint at step 2 is mid-epoch.
    common = ("--data.batch_size", "2", "--trainer.accumulate_grad_batches", "2",
              "--checkpoint.every_n_train_steps", "2",
              "--model.objective.cond_dropout_prob", "0.3", "--data.random_flip", "true", "--seed_everything", "7")
    straight = fit(tmp_path / "straight", toy_dataset, "--trainer.max_steps", "4", *common)
    fit(tmp_path / "resumed", toy_dataset, "--trainer.max_steps", "2", *common)
    resumed = fit(tmp_path / "resumed", toy_dataset, "--trainer.max_steps", "4", "--ckpt_path", "last", *common)
    assert resumed.trainer.global_step == 4
    checkpoint = torch.load(tmp_path / "resumed" / "checkpoints" / "step=2.ckpt", weights_only=False)
    assert checkpoint["AmusedDataModule"] == {"epoch": 0, "position": 8, "replaced": 0}
    expected, actual = transformer_weights(straight), transformer_weights(resumed)
    assert max((expected[k] - actual[k]).abs().max().item() for k in expected) <= 1e-6
    # One step at learning rate 0 keeps the initial weights (max_steps 0 is refused as training nothing).
    initial = transformer_weights(fit(tmp_path / "none", toy_dataset, "--trainer.max_steps", "1",
                                      "--model.optimizer", "torch.optim.AdamW", "--model.optimizer.init_args.lr", "0"))
    assert max((expected[k] - initial[k]).abs().max().item() for k in expected) > 1e-3, "training moved weights"


def test_fresh_run_refuses_a_folder_with_checkpoints(tmp_path, toy_dataset):
    fit(tmp_path, toy_dataset, "--trainer.max_steps", "1", "--checkpoint.every_n_train_steps", "1")
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "checkpoints").iterdir()}
    with pytest.raises(FileExistsError, match="resume with --ckpt_path last"):
        fit(tmp_path, toy_dataset, "--trainer.max_steps", "1")
    assert before == {p.name: p.stat().st_mtime_ns for p in (tmp_path / "checkpoints").iterdir()}


def test_quickstart_config_values():
    config = yaml.safe_load((REPO / "configs" / "quickstart.yaml").read_text())
    assert config["model"]["pretrained"] == "toy" and config["model"]["lora"]["r"] == 32
    # Finetuned as `toy` was trained: guidance 10 stays clean only with the dropped prompts' smoothing.
    assert config["model"]["objective"]["unconditional_label_smoothing"] > 0


def test_one_command_table_lists_every_command_and_only_those(capsys):
    main(["--help"])
    listing = capsys.readouterr().out
    names = ("fit", "validate", "export", "generate", "check-data")
    assert all(f"  {name} " in listing for name in names) and len(COMMANDS) == len(names)
    for unknown in ("test", "predict", "fitt"):
        with pytest.raises(SystemExit) as exit_info:
            main([unknown])
        assert exit_info.value.code == 2 and f"unknown command {unknown!r}" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["fit", "validate", "export", "generate", "check-data"])
def test_every_command_has_its_own_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0 and "usage:" in capsys.readouterr().out
