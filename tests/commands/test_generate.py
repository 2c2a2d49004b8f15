import argparse

import numpy as np
import pytest
import yaml
from PIL import Image

from amused_lightning.commands.export import main as export_main
from amused_lightning.commands.generate import main as generate_main

from helpers import fails_with, fit


@pytest.fixture(scope="module")
def run(tmp_path_factory, toy_dataset):
    """A short LoRA (transformer and text encoder) + EMA run and its export."""
    root = tmp_path_factory.mktemp("gen-run")
    fit(root, toy_dataset, "--trainer.max_steps", "2", "--model.lora.r", "4", "--ema.enabled", "true",
        "--ema.decay", "0.5", "--model.text_encoder.train", "true", "--model.text_encoder.lora.r", "2",
        "--model.optimizer.init_args.lr", "0.05", "--validation_steps", "100")
    return root


def pixels(path):
    return np.asarray(Image.open(path))


def test_generate_from_checkpoint_pipeline_and_lora_agree(run, tmp_path):
    common = ["a pixel art character", "-o"]
    from_checkpoint = generate_main([*common, str(tmp_path / "a"), "--checkpoint",
                                     str(run / "checkpoints" / "last.ckpt"), "--steps", "3"])
    from_pipeline = generate_main([*common, str(tmp_path / "b"), "--pipeline", str(run / "export"), "--steps", "3"])
    from_lora = generate_main([*common, str(tmp_path / "c"), "--pretrained", "tiny", "--lora", str(run / "export"),
                               "--steps", "3"])
    assert [p.name for p in from_checkpoint] == ["000-00-a-pixel-art-character.png"]
    # The export holds the EMA weights, which the checkpoint source also picks by default.
    assert np.array_equal(pixels(from_checkpoint[0]), pixels(from_pipeline[0]))
    assert np.abs(pixels(from_checkpoint[0]).astype(int) - pixels(from_lora[0]).astype(int)).max() <= 1
    raw = generate_main([*common, str(tmp_path / "d"), "--checkpoint", str(run / "checkpoints" / "last.ckpt"),
                         "--steps", "3", "--weights", "trained"])
    assert not np.array_equal(pixels(raw[0]), pixels(from_checkpoint[0]))


def test_generate_options_and_no_overwrite(run, tmp_path):
    args = ["a cat", "a dog", "-o", str(tmp_path), "--pretrained", "tiny", "--num-images", "3", "--batch-size", "2",
            "--resolution", "32", "--steps", "2", "--seed", "5"]
    paths = generate_main(args)
    assert len(paths) == 6 and all(Image.open(p).size == (32, 32) for p in paths)
    before = [pixels(p) for p in paths]
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        generate_main(args)
    again = generate_main([*args, "--overwrite"])
    assert all(np.array_equal(a, pixels(b)) for a, b in zip(before, again)), "same seed, same images"


def test_generate_rejects_bad_arguments(tmp_path):
    with pytest.raises(argparse.ArgumentError, match="--lora goes with --pretrained"):
        generate_main(["a cat", "-o", str(tmp_path), "--pipeline", "x", "--lora", "y"])
    with pytest.raises(argparse.ArgumentError, match="--num-images 0 must be at least 1"):
        generate_main(["a cat", "-o", str(tmp_path), "--pretrained", "tiny", "--num-images", "0"])
    with pytest.raises(ValueError, match="num_inference_steps=0"):
        generate_main(["a cat", "-o", str(tmp_path), "--pretrained", "tiny", "--steps", "0"])


def test_export_of_text_encoder_lora_round_trips(run, tmp_path):
    export_main([str(run / "checkpoints" / "last.ckpt"), str(tmp_path), "--weights", "trained", "--merge-lora"])
    merged = generate_main(["a pixel art character", "-o", str(tmp_path / "m"), "--pipeline", str(tmp_path),
                            "--steps", "3"])
    raw = generate_main(["a pixel art character", "-o", str(tmp_path / "r"), "--checkpoint",
                         str(run / "checkpoints" / "last.ckpt"), "--steps", "3", "--weights", "trained"])
    assert np.abs(pixels(merged[0]).astype(int) - pixels(raw[0]).astype(int)).max() <= 1


def test_generate_and_export_read_a_config_file_that_the_command_line_overrides(run, tmp_path, capsys):
    config = tmp_path / "generate.yaml"
    config.write_text(yaml.safe_dump({"prompts": ["a cat", "a dog"], "pretrained": "tiny", "guidance-scale": 3.0,
                                      "output": str(tmp_path / "a"), "steps": 2, "resolution": 32, "overwrite": True}))
    from_file = generate_main(["--config", str(config)])
    same = generate_main(["a cat", "a dog", "-o", str(tmp_path / "b"), "--pretrained", "tiny", "--guidance-scale",
                          "3", "--steps", "2", "--resolution", "32"])
    assert [pixels(p).tolist() for p in from_file] == [pixels(p).tolist() for p in same]
    overridden = generate_main(["--config", str(config), "a bird", "--seed", "3", "-o", str(tmp_path / "c")])
    assert [p.name for p in overridden] == ["000-00-a-bird.png"]
    # One prompt as a scalar; the file's model source replaced by another of its group on the command line.
    config.write_text(yaml.safe_dump({"prompts": "a cat", "pipeline": "no-such-folder", "output": str(tmp_path / "d"),
                                      "steps": 2, "resolution": 32, "lora": None}))
    assert [p.name for p in generate_main(["--config", str(config), "--pretrained", "tiny"])] == ["000-00-a-cat.png"]
    for text, error in (("guidance: 3\n", "'guidance' is no setting of this command"),
                        ("output: [a, b]\n", "output=['a', 'b'] takes one value, not a list"),
                        ("overwrite: 'no'\n", "overwrite='no' must be true or false")):
        (tmp_path / "bad.yaml").write_text(text)
        assert error in fails_with(capsys, "generate", "--config", str(tmp_path / "bad.yaml"))
    (tmp_path / "export.yaml").write_text(yaml.safe_dump({"checkpoint": str(run / "checkpoints" / "last.ckpt"),
                                                         "output": str(tmp_path / "export"), "weights": "trained"}))
    written = export_main(["--config", str(tmp_path / "export.yaml")])
    assert written and all(str(path).startswith(str(tmp_path / "export")) for path in written)
