import json
import logging
import re
import struct
from contextlib import nullcontext
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import wandb
from lightning.pytorch.loggers import CometLogger, MLFlowLogger, TensorBoardLogger
from PIL import Image
from wandb.proto import wandb_internal_pb2

from amused_lightning.callbacks.validation_images import ValidationImages, mlflow_key, send_images
from amused_lightning.run.folder import ValidationGrid

from helpers import fit, image_steps

PROMPTS = ["a pixel art character with square red glasses", "a pixel art character, blue: 2"]


def wandb_history(save_dir: Path) -> list[dict]:
    """The history rows of the one offline run under `save_dir`, read from its .wandb file (LevelDB log records of
    wandb's protobuf `Record`s)."""
    (path,) = save_dir.glob("wandb/offline-run-*/run-*.wandb")
    data, block, position, pending, rows = path.read_bytes(), 32768, 7, b"", []
    assert data[:4] == b":W&B"
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's tail too short for a record header is padding
            position += block - position % block
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        pending, position = pending + data[position + 7:position + 7 + length], position + 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            if record.WhichOneof("record_type") == "history":
                rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                             for item in record.history.item})
    return rows


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch):
    """wandb offline, quiet, its settings and caches in tmp_path, no system probes."""
    for name, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_CONSOLE": "off",
                        "WANDB_DISABLE_GIT": "true", "WANDB_DISABLE_CODE": "true", "WANDB_X_DISABLE_STATS": "true",
                        "WANDB_X_DISABLE_META": "true", "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"),
                        "WANDB_CACHE_DIR": str(tmp_path / "wandb-cache"),
                        "WANDB_DATA_DIR": str(tmp_path / "wandb-data")}.items():
        monkeypatch.setenv(name, value)


def logger_config(class_name: str, **init_args) -> dict:
    return {"class_path": f"lightning.pytorch.loggers.{class_name}", "init_args": init_args}


def test_every_given_logger_gets_the_images_or_one_warning(tmp_path, toy_dataset, offline_wandb, caplog):
    logs, run = tmp_path / "logs", tmp_path / "run"
    loggers = [logger_config("CSVLogger", save_dir=str(logs)),
               logger_config("TensorBoardLogger", save_dir=str(logs), name="mine"),
               logger_config("WandbLogger", save_dir=str(logs), offline=True)]
    with caplog.at_level(logging.WARNING, logger="amused_lightning"):
        cli = fit(run, toy_dataset, "--trainer.max_steps", "2", "--validation_steps", "1",
                  "--trainer.logger", json.dumps(loggers), "--model.validation.prompts", json.dumps(PROMPTS),
                  "--model.validation.generation.num_inference_steps", "2")
    cli.trainer.loggers[2].experiment.finish()  # the .wandb file is complete once the run ends
    wandb.teardown()  # and its service process leaves with it, not at the end of the test session

    assert [type(logger).__name__ for logger in cli.trainer.loggers] == ["CSVLogger", "TensorBoardLogger",
                                                                         "WandbLogger"]
    assert not (run / "lightning_logs").exists(), "the given loggers replace ours"
    grids = {step: Image.open(run / "validation" / f"step={step:06d}.png").convert("RGB") for step in (1, 2)}
    warnings = [r.getMessage() for r in caplog.records if "validation images" in r.getMessage()]
    assert len(warnings) == 1 and "CSVLogger" in warnings[0] and str(run / "validation") in warnings[0]
    assert image_steps(logs / "mine") == {f"val_images/{i:02d} {prompt}": [1, 2] for i, prompt in enumerate(PROMPTS)}

    rows = [row for row in wandb_history(logs) if "val_images/captions" in row]
    assert [row["trainer/global_step"] for row in rows] == [1, 2]
    run_files = next((logs / "wandb").glob("offline-run-*/files"))
    for row in rows:
        assert row["val_images/captions"] == PROMPTS
        grid = grids[row["trainer/global_step"]]
        for i, name in enumerate(row["val_images/filenames"]):
            image = Image.open(run_files / name).convert("RGB")
            width, height = image.size
            assert image.tobytes() == grid.crop((i * width, 0, (i + 1) * width, height)).tobytes()


IMAGES = [Image.new("RGB", (4, 4), colour) for colour in ("red", "blue")]


def drawn(tmp_path: Path) -> ValidationGrid:
    return ValidationGrid(7, PROMPTS, tmp_path / "validation" / "step=000007.png")


def validation_end(callback: ValidationImages, loggers: list, tmp_path: Path) -> None:
    """The callback at the end of a validation at step 7, whose module draws IMAGES for PROMPTS."""
    precision = SimpleNamespace(forward_context=nullcontext)
    trainer = SimpleNamespace(loggers=loggers, is_global_zero=True, sanity_checking=False, global_step=7,
                              default_root_dir=str(tmp_path), precision_plugin=precision)
    pixels = torch.stack([torch.from_numpy(np.asarray(image)).permute(2, 0, 1) / 255 for image in IMAGES])
    model = SimpleNamespace(generate_pixels=lambda *args, **kwargs: pixels, spec=SimpleNamespace(seed=0))
    validation = SimpleNamespace(prompts=PROMPTS, generation=None, start_images=lambda: None)
    module = SimpleNamespace(model=model, validation=validation, memory=SimpleNamespace(decode_chunk_size=1),
                             image_metrics=[], weights_step=7)
    callback.on_validation_epoch_end(trainer, module)


class Recorder:
    """Stands in for a tracking package's client: records each call of its image method."""

    def __init__(self):
        self.calls = []

    def log_image(self, *args, **kwargs):
        self.calls.append((args, kwargs))


class RecordingMLflow(MLFlowLogger):
    """MLFlowLogger's dispatch without mlflow: its client replaced by a recorder."""

    def __init__(self):  # mlflow is not installed: MLFlowLogger's own __init__ would refuse
        self.recorder = Recorder()

    experiment = property(lambda self: self.recorder)
    run_id = "run-1"


class RecordingComet(CometLogger):
    """CometLogger's dispatch without comet_ml: its experiment replaced by a recorder."""

    def __init__(self):  # comet_ml is not installed: CometLogger's own __init__ would refuse
        self.recorder = Recorder()

    experiment = property(lambda self: self.recorder)


def test_mlflow_and_comet_get_one_image_per_prompt_with_the_step(tmp_path):
    grid = drawn(tmp_path)
    mlflow, comet = RecordingMLflow(), RecordingComet()
    assert send_images(mlflow, grid, IMAGES) and send_images(comet, grid, IMAGES)
    assert [(args[0], args[1], kwargs) for args, kwargs in mlflow.recorder.calls] == [
        ("run-1", IMAGES[0], {"key": "val_images/00 a pixel art character with square red glasses", "step": 7}),
        ("run-1", IMAGES[1], {"key": "val_images/01 a pixel art character_ blue_ 2", "step": 7})]
    assert comet.recorder.calls == [((IMAGES[0],), {"name": f"val_images/00 {PROMPTS[0]}", "step": 7}),
                                    ((IMAGES[1],), {"name": f"val_images/01 {PROMPTS[1]}", "step": 7})]


def test_image_logging_off_saves_the_grid_and_sends_nothing(tmp_path):
    logger = TensorBoardLogger(save_dir=str(tmp_path), name="tb")
    validation_end(ValidationImages(enabled=False), [logger], tmp_path)
    assert not (tmp_path / "tb").exists()
    assert Image.open(drawn(tmp_path).path).size == (8, 4)
    prompts = (tmp_path / "validation" / "prompts.txt").read_text()
    assert prompts == "".join(f"{i}: {prompt}\n" for i, prompt in enumerate(PROMPTS))
    validation_end(ValidationImages(), [logger], tmp_path)
    logger.experiment.flush()
    assert image_steps(tmp_path / "tb") == {f"val_images/{i:02d} {prompt}": [7] for i, prompt in enumerate(PROMPTS)}


def test_mlflow_keys_keep_to_what_mlflow_accepts():
    key = mlflow_key(f"val_images/00 un café à 東京, {'very ' * 80}long")
    assert re.fullmatch(r"[a-zA-Z0-9_\-./ ]+", key) and key.startswith("val_images/00 un caf_ _ ___ very") \
        and len(key) == 200


class RefusingLogger(RecordingComet):
    """A logger whose service refuses images."""

    experiment = property(lambda self: (_ for _ in ()).throw(ConnectionError("service down")))


def test_a_logger_that_refuses_images_does_not_stop_the_run(tmp_path, caplog):
    tensorboard = TensorBoardLogger(save_dir=str(tmp_path), name="tb")
    validation_end(ValidationImages(), [RefusingLogger(), tensorboard], tmp_path)
    tensorboard.experiment.flush()
    assert "RefusingLogger refused them (ConnectionError: service down)" in caplog.text
    assert len(image_steps(tmp_path / "tb")) == len(PROMPTS), "the next logger still gets them"
