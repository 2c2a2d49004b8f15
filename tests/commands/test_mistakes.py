"""Mistakes in what a user asks for end in one `error:` line naming the setting (and the nearest valid names), before
the model loads."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from amused_lightning.__main__ import main
from amused_lightning.commands.fit import cli_main
from amused_lightning.model.amused import AmusedModel

from helpers import CONFIGS, REPO

QUICKSTART = ["fit", "--config", str(CONFIGS / "quickstart.yaml")]


@pytest.fixture
def no_model_load(monkeypatch):
    """Fails the test if the model starts to load: the mistake must be found before."""
    monkeypatch.setattr(AmusedModel, "from_spec", lambda *a, **k: pytest.fail("the model loaded before the error"))


def error_line(capsys, *args: str) -> str:
    """The one line `python -m amused_lightning ARGS` writes to stderr for a mistake (exit code 2)."""
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    assert exit_info.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize("args, expected", [
    (["--model.optimizer.init_args.lr", "-1"], "model.optimizer.init_args.lr=-1.0 cannot be negative"),
    (["--model.optimizer.init_args.betas", "[0.9, 2]"], "AdamW refuses its settings (betas=(0.9, 2.0)): Invalid beta"),
    (["--model.lora.rank", "8"], "model.lora.rank is no setting of LoraSettings; did you mean r?"),
    (["--model.lora", "{rank: 8}"], "model.lora.rank is no setting of LoraSettings; did you mean r?"),
    (["--data.batchsize", "4"], "--data.batchsize is no setting; did you mean --data.batch_size"),
    (["--trainer.max_step", "4", "--trainer.maxsteps", "4"], "--trainer.maxsteps is no setting; did you mean "
                                                             "--trainer.max_steps"),
    (["--model.lr", "1e-4"], "--model.lr is no setting; did you mean --model.optimizer.init_args.lr?"),
    (["--model.optimizer.init_args.lrr", "1"], "model.optimizer.lrr is no setting of AdamW; did you mean lr?"),
    (["--data.source.prompt_keys", "text"], "data.source.prompt_keys is no setting of HFDataset; did you mean "
                                            "prompt_key or prompt_prefix? (its settings: path, split,"),
    (["--data.source", "HFDatset"], "data.source='HFDatset' is no class it takes; did you mean HFDataset"),
    (["--data.resolution", "60"], "data.resolution=60 is not a multiple of 8 (the VQ downscale factor 4 times 2, "
                                  "the transformer's downsampling) of the model model.pretrained='toy': try 56 or 64"),
    (["--data.source", "WebDataset"], "--data.source.shards is required but not set"),
])
def test_a_mistake_is_one_line_with_the_nearest_valid_names(args, expected, capsys, no_model_load, tmp_path):
    line = error_line(capsys, *QUICKSTART, "--trainer.default_root_dir", str(tmp_path), *args)
    assert expected in line
    assert "Traceback" not in line and "Given value" not in line


@pytest.mark.parametrize("settings, expected", [
    ({"data": {"batchsize": 4}}, "data.batchsize is no setting; did you mean data.batch_size"),
    ({"model": {"lr": 1e-4}}, "model.lr is no setting; did you mean model.optimizer.init_args.lr?"),
    ({"model": {"lora": {"rank": 8}}}, "model.lora.rank is no setting of LoraSettings; did you mean r?"),
])
def test_a_misspelled_key_in_a_config_file_gets_the_nearest_valid_names(settings, expected, capsys, tmp_path):
    config = tmp_path / "mine.yaml"
    config.write_text(yaml.safe_dump(settings))
    assert expected in error_line(capsys, *QUICKSTART, "--config", str(config))


def test_a_missing_base_model_is_refused_with_every_choice(capsys, tmp_path):
    line = error_line(capsys, "fit", "--data.source", "HFDataset", "--data.source.path", str(tmp_path))
    assert line.startswith("error: model.pretrained is not set")
    for choice in ("amused/amused-256", "local diffusers pipeline folder", "`toy`", "tiny", "amused-256-arch"):
        assert choice in line


def test_a_constructor_refusal_is_said_alone(capsys, tmp_path, no_model_load):
    line = error_line(capsys, *QUICKSTART, "--trainer.default_root_dir", str(tmp_path), "--data.source",
                      "ImageFolder", "--data.source.path", str(tmp_path), "--data.source.caption_extension", ".")
    assert line == "error: data.source.caption_extension='.' must be a file suffix such as '.txt' or '.caption'"


def test_a_source_class_switched_on_the_command_line_keeps_none_of_the_configs_settings(tmp_path, caplog):
    caplog.set_level("INFO", "amused_lightning")
    cli = cli_main([*QUICKSTART[1:], "--trainer.default_root_dir", str(tmp_path), "--data.source", "WebDataset",
                    "--data.source.shards", str(tmp_path / "a.tar"), "--data.source.prompt_key", "caption"],
                   run=False)
    source = cli.datamodule.source
    assert (source.image_key, source.prompt_key) == ("jpg;jpeg;png;webp", "caption")
    assert "the config's HFDataset settings image_key='image' are not carried over" in caplog.text


def test_help_read_in_part_ends_quietly():
    reader = subprocess.Popen([sys.executable, "-m", "amused_lightning", "--help"], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    reader.stdout.close()  # as `| head -2` does once it has its lines
    assert reader.wait(timeout=120) != 0
    assert b"Traceback" not in reader.stderr.read()
