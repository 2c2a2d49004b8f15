import argparse
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from amused_lightning.commands.export import main as export_main
from amused_lightning.commands.generate import main as generate_main

from helpers import fails_with, fit


@pytest.fixture(scope="module")
def run(tmp_path_factory, toy_dataset):
    """A short LoRA (transformer and text encoder) + EMA run and its export, validating with 3 steps at guidance 3."""
    root = tmp_path_factory.mktemp("gen-run")
    fit(root, toy_dataset, "--trainer.max_steps", "2", "--model.lora.r", "4", "--ema.enabled", "true",
        "--ema.decay", "0.5", "--model.text_encoder.train", "true", "--model.text_encoder.lora.r", "2",
        "--model.optimizer.init_args.lr", "0.05", "--validation_steps", "100",
        "--model.validation.generation.num_inference_steps", "3", "--model.validation.generation.guidance_scale", "3")
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
    assert [p.name for p in from_checkpoint] == ["00000-0-a-pixel-art-character.png"]
    # The export holds the EMA weights, which the checkpoint source also picks by default.
    assert np.array_equal(pixels(from_checkpoint[0]), pixels(from_pipeline[0]))
    assert np.abs(pixels(from_checkpoint[0]).astype(int) - pixels(from_lora[0]).astype(int)).max() <= 1
    raw = generate_main([*common, str(tmp_path / "d"), "--checkpoint", str(run / "checkpoints" / "last.ckpt"),
                         "--steps", "3", "--weights", "trained"])
    assert not np.array_equal(pixels(raw[0]), pixels(from_checkpoint[0]))


def test_generate_never_replaces_a_file_and_redraws_the_same_images(tmp_path):
    args = ["a cat", "a dog", "-o", str(tmp_path), "--pretrained", "tiny", "--num-images", "3", "--batch-size", "2",
            "--resolution", "32", "--steps", "2", "--seed", "5"]
    paths = generate_main(args)
    assert len(paths) == 6 and all(Image.open(p).size == (32, 32) for p in paths)
    assert [p.name for p in paths[:4]] == ["00000-5-a-cat.png", "00001-6-a-cat.png", "00002-7-a-cat.png",
                                           "00003-5-a-dog.png"]
    before = {p: pixels(p) for p in paths}
    again = generate_main(args)
    assert [p.name for p in again][:2] == ["00006-5-a-cat.png", "00007-6-a-cat.png"]
    assert all(np.array_equal(before[p], pixels(p)) for p in paths), "the first run's files are untouched"
    assert all(np.array_equal(before[a], pixels(b)) for a, b in zip(paths, again)), "same seed, same images"
    (tmp_path / "00012-5-a-cat.png").write_bytes(b"mine")  # a name the next run would take: it takes the next one
    assert generate_main([*args[:1], *args[2:], "--num-images", "1"])[0].name == "00013-5-a-cat.png"
    assert (tmp_path / "00012-5-a-cat.png").read_bytes() == b"mine"


def test_image_k_of_a_batch_redrawn_alone_equals_it(tmp_path):
    common = ["--pretrained", "tiny", "--resolution", "32", "--steps", "3", "--guidance-scale", "3"]
    batch = generate_main(["a cat", "a dog", "-o", str(tmp_path / "batch"), "--num-images", "3", "--batch-size", "4",
                           "--seed", "5", *common])
    alone = generate_main(["a dog", "-o", str(tmp_path / "alone"), "--num-images", "1", "--seed", "6", *common])
    assert batch[4].name.endswith("-6-a-dog.png")
    assert np.array_equal(pixels(batch[4]), pixels(alone[0]))
    assert not np.array_equal(pixels(batch[3]), pixels(batch[4])), "each image of a prompt has its own seed"


def test_each_png_holds_its_prompt_seed_and_settings(tmp_path):
    paths = generate_main(["a cat", "-o", str(tmp_path), "--pretrained", "tiny", "--resolution", "32", "--steps", "2",
                           "--seed", "9", "--num-images", "2", "--negative-prompt", "a red body"])
    text = Image.open(paths[1]).text
    assert text["prompt"] == "a cat" and text["negative_prompt"] == "a red body" and text["seed"] == "10"
    assert (text["steps"], text["guidance_scale"], text["width"], text["height"]) == ("2", "10.0", "32", "32")
    assert text["model"] == "tiny"


def test_negative_prompt_steers_the_guidance(tmp_path):
    common = ["a cat", "--pretrained", "tiny", "--resolution", "32", "--steps", "3"]
    plain = generate_main([*common, "-o", str(tmp_path / "a")])
    empty = generate_main([*common, "-o", str(tmp_path / "b"), "--negative-prompt", ""])
    negative = generate_main([*common, "-o", str(tmp_path / "c"), "--negative-prompt", "a red body"])
    assert np.array_equal(pixels(plain[0]), pixels(empty[0]))
    assert not np.array_equal(pixels(plain[0]), pixels(negative[0]))


def test_default_output_folder_is_todays(tmp_path, monkeypatch):
    from datetime import date

    monkeypatch.chdir(tmp_path)
    paths = generate_main(["a cat", "--pretrained", "tiny", "--resolution", "32", "--steps", "2"])
    assert paths[0].parent == Path("outputs") / date.today().isoformat() and paths[0].is_file()


def test_generate_draws_with_the_runs_validation_settings_unless_told(run, tmp_path, capsys):
    default = generate_main(["a cat", "-o", str(tmp_path / "a"), "--pipeline", str(run / "export")])
    line = capsys.readouterr().out.splitlines()[0]
    assert line.startswith("sampling: 3 steps, guidance 3, ") and str(run / "export") in line
    explicit = generate_main(["a cat", "-o", str(tmp_path / "b"), "--pipeline", str(run / "export"), "--steps", "3",
                              "--guidance-scale", "3", "--seed", "0"])
    assert np.array_equal(pixels(default[0]), pixels(explicit[0]))
    capsys.readouterr()
    told = generate_main(["a cat", "-o", str(tmp_path / "c"), "--pipeline", str(run / "export"),
                          "--guidance-scale", "10"])
    line = capsys.readouterr().out.splitlines()[0]
    assert "guidance 10" in line and line.endswith("--guidance-scale from the command line")
    assert not np.array_equal(pixels(default[0]), pixels(told[0]))
    from_checkpoint = generate_main(["a cat", "-o", str(tmp_path / "d"), "--checkpoint",
                                     str(run / "checkpoints" / "last.ckpt")])
    assert np.array_equal(pixels(default[0]), pixels(from_checkpoint[0]))


def test_generate_help_shows_every_default(capsys):
    with pytest.raises(SystemExit):
        generate_main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for default in ("the model's validation settings, else 12)", "the model's validation settings, else 10)",
                    "the model's validation settings, else 0)", "default: outputs/<today's date>",
                    "default: the empty prompt", "(default: 1)", "(default: 4)"):
        assert default in text, default


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
                                      "output": str(tmp_path / "a"), "steps": 2, "resolution": 32}))
    from_file = generate_main(["--config", str(config)])
    same = generate_main(["a cat", "a dog", "-o", str(tmp_path / "b"), "--pretrained", "tiny", "--guidance-scale",
                          "3", "--steps", "2", "--resolution", "32"])
    assert [pixels(p).tolist() for p in from_file] == [pixels(p).tolist() for p in same]
    overridden = generate_main(["--config", str(config), "a bird", "--seed", "3", "-o", str(tmp_path / "c")])
    assert [p.name for p in overridden] == ["00000-3-a-bird.png"]
    # One prompt as a scalar; the file's model source replaced by another of its group on the command line.
    config.write_text(yaml.safe_dump({"prompts": "a cat", "pipeline": "no-such-folder", "output": str(tmp_path / "d"),
                                      "steps": 2, "resolution": 32, "lora": None}))
    assert [p.name for p in generate_main(["--config", str(config), "--pretrained", "tiny"])] == ["00000-0-a-cat.png"]
    for text, error in (("guidance: 3\n", "'guidance' is no setting of this command"),
                        ("output: [a, b]\n", "output=['a', 'b'] takes one value, not a list"),
                        ("batch-size: [1, 2]\n", "batch-size=[1, 2] takes one value, not a list")):
        (tmp_path / "bad.yaml").write_text(text)
        assert error in fails_with(capsys, "generate", "--config", str(tmp_path / "bad.yaml"))
    (tmp_path / "export.yaml").write_text(yaml.safe_dump({"checkpoint": str(run / "checkpoints" / "last.ckpt"),
                                                         "output": str(tmp_path / "export"), "weights": "trained"}))
    written = export_main(["--config", str(tmp_path / "export.yaml")])
    assert written and all(str(path).startswith(str(tmp_path / "export")) for path in written)
