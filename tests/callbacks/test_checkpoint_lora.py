import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

from amused_lightning.callbacks.checkpoint_lora import lora_path
from amused_lightning.commands.generate import main as generate_main
from amused_lightning.permissions import current_umask

from helpers import fit


def test_every_checkpoint_has_its_lora_file_removed_with_it(tmp_path, toy_dataset):
    root = tmp_path / "run"
    fit(root, toy_dataset, "--trainer.max_steps", "4", "--model.lora.r", "4", "--model.optimizer.init_args.lr", "0.05",
        "--checkpoint.every_n_train_steps", "1", "--checkpoint.save_top_k", "2", "--validation_steps", "100",
        "--ema.enabled", "true", "--ema.decay", "0.5", "--export.enabled", "false")
    checkpoints = root / "checkpoints"
    names = sorted(p.name for p in checkpoints.iterdir())
    # A checkpoint every step, two kept by the rotation: the LoRA files of the removed ones went with them.
    assert names == sorted(["step=2.ckpt", "step=2.lora.safetensors", "step=4.ckpt", "step=4.lora.safetensors",
                            "last.ckpt", "last.lora.safetensors"]), names
    assert lora_path(checkpoints / "last.ckpt").stat().st_mode & 0o777 == 0o666 & ~current_umask()
    step2, step4 = (load_file(checkpoints / f"step={step}.lora.safetensors") for step in (2, 4))
    assert step2.keys() == step4.keys() and any(not torch.equal(step2[k], step4[k]) for k in step2)
    # The file holds what an export of that checkpoint would: the EMA weights on the base, drawn alike.
    common = ["a pixel art character", "--steps", "2", "--resolution", "32"]
    from_lora = generate_main([*common, "-o", str(tmp_path / "a"), "--pretrained", "tiny", "--lora",
                               str(checkpoints / "step=2.lora.safetensors")])
    from_checkpoint = generate_main([*common, "-o", str(tmp_path / "b"), "--checkpoint",
                                     str(checkpoints / "step=2.ckpt")])
    difference = np.asarray(Image.open(from_lora[0])).astype(int) - np.asarray(Image.open(from_checkpoint[0]))
    assert np.abs(difference).max() <= 1


def test_generate_from_a_checkpoints_lora_file_uses_that_runs_validation_settings(tmp_path, toy_dataset, capsys):
    root = tmp_path / "run"
    fit(root, toy_dataset, "--trainer.max_steps", "1", "--model.lora.r", "4", "--validation_steps", "100",
        "--model.validation.generation.guidance_scale", "2.5", "--export.enabled", "false")
    lora = root / "checkpoints" / "last.lora.safetensors"
    capsys.readouterr()
    generate_main(["a cat", "-o", str(tmp_path / "a"), "--pretrained", "tiny", "--lora", str(lora), "--steps", "2"])
    line = capsys.readouterr().out.splitlines()[0]
    assert "guidance 2.5" in line and str(root / "checkpoints" / "last.ckpt") in line
