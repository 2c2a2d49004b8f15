"""Broken files and rows, made for real, in a Hugging Face dataset and in an image folder: `data.on_bad_image` skip
and error; and settings Lightning would reject with a bare exception."""

import io
import logging
import random
import struct
import zlib
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from amused_lightning.__main__ import main
from amused_lightning.commands.fit import cli_main
from amused_lightning.data import ImageFolder
from amused_lightning.data.bad_data import BadImageError, UnusableImage, image_problem, load_image, prompt_problem

from helpers import connected, fails_with, scalars, transformer_weights

GOOD_ROWS = 8


def noise_image(seed: int, size: int = 40) -> Image.Image:
    """An image of random pixels (its PNG does not compress, so half of it cuts into the pixel data)."""
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def encoded(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def claiming_size(png: bytes, width: int, height: int) -> bytes:
    """`png` with its IHDR chunk (and checksum) patched to claim `width` x `height` pixels."""
    header = struct.pack(">II", width, height) + png[24:29]
    return png[:16] + header + struct.pack(">I", zlib.crc32(b"IHDR" + header)) + png[33:]


def broken_images() -> dict[str, bytes]:
    """Bad image files the scan before training finds, by the reason it gives."""
    png = encoded(noise_image(100))
    return {"not an image PIL can read (undecodable bytes)": random.Random(0).randbytes(300),
            "unreadable image (OSError: Truncated File Read)": png[:len(png) // 2],
            "empty file (0 bytes)": b"",
            "image too large to decode safely": claiming_size(png, 100_000, 100_000)}


def truncated_jpeg() -> bytes:
    """A JPEG cut in half: its header verifies, only a full decode fails."""
    jpeg = encoded(noise_image(101), "JPEG")
    return jpeg[:len(jpeg) // 2]


def hf_dataset(folder: Path, bad: bool = True) -> tuple[Path, dict[int, str]]:
    """A parquet dataset of GOOD_ROWS good rows, then a truncated JPEG (bad only when decoded), then (with `bad`)
    rows the scan finds bad; returns its folder and {row: reason} of the scanned-bad rows."""
    folder.mkdir()
    rows = [({"bytes": encoded(noise_image(seed)), "path": None}, f"noise {seed}") for seed in range(GOOD_ROWS)]
    rows.append(({"bytes": truncated_jpeg(), "path": None}, "cut jpeg"))
    expected = {}
    if bad:
        gone = folder / "gone.png"
        gone.write_bytes(encoded(noise_image(102)))
        kinds = [({"bytes": data, "path": None}, "broken", reason) for reason, data in broken_images().items()]
        kinds += [({"bytes": None, "path": str(gone)}, "gone", "missing image file"),
                  (None, "no image", "no image (None)"),
                  ({"bytes": encoded(noise_image(103)), "path": None}, None, "no prompt (None)"),
                  ({"bytes": encoded(noise_image(104)), "path": None}, 7, "the prompt is int 7, not text")]
        for image, prompt, reason in kinds:
            expected[len(rows)] = reason
            rows.append((image, prompt))
    features = datasets.Features({"image": datasets.Image(), "text": datasets.Json()})
    images, prompts = zip(*rows)
    dataset = datasets.Dataset.from_dict({"image": list(images), "text": list(prompts)}, features=features)
    dataset.to_parquet(str(folder / "data" / "train-00000-of-00001.parquet"))  # keeps path references as paths
    if bad:
        gone.unlink()
    return folder, expected


def image_folder(folder: Path) -> Path:
    """GOOD_ROWS good PNGs, a truncated JPEG, and one file of each broken kind."""
    folder.mkdir()
    for seed in range(GOOD_ROWS):
        noise_image(seed).save(folder / f"noise {seed}.png")
    (folder / "cut.jpg").write_bytes(truncated_jpeg())
    for index, data in enumerate(broken_images().values()):
        (folder / f"broken {index}.png").write_bytes(data)
    return folder


def fit_args(root: Path, source: str, path: Path, *extra: str) -> list[str]:
    """`fit` on the tiny preset at 32 px, batch 4, 3 steps, no validation."""
    return ["fit", "--trainer.default_root_dir", str(root), "--trainer.accelerator", "cpu", "--model.pretrained",
            "tiny", "--data.source", source, "--data.source.path", str(path), "--data.resolution", "32",
            "--data.batch_size", "4", "--trainer.max_steps", "3", "--trainer.limit_val_batches", "0",
            "--trainer.enable_model_summary", "false", "--trainer.enable_progress_bar", "false", *extra]


def test_what_makes_an_image_or_prompt_bad(monkeypatch):
    for reason, data in broken_images().items():
        assert reason in image_problem(data)
        with pytest.raises(UnusableImage):
            load_image(data)
    assert image_problem(truncated_jpeg()) is None, "a header check cannot see a cut JPEG"
    with pytest.raises(UnusableImage, match="image file is truncated"):
        load_image(truncated_jpeg())
    assert "missing image file" in image_problem("/nonexistent/x.png")
    # PIL only warns between MAX_IMAGE_PIXELS and twice that: still refused.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    assert "image too large to decode safely" in image_problem(encoded(noise_image(0, size=40)))
    assert prompt_problem(None) == "no prompt (None)" and "int" in prompt_problem(3) and prompt_problem("") is None


def test_a_worker_traceback_becomes_the_line_that_names_the_row():
    wrapped = ("Caught BadImageError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
               '  File "x.py", line 1, in f\namused_lightning.data.bad_data.BadImageError: image file \'a.png\': bad\n')
    assert str(BadImageError(wrapped)) == "image file 'a.png': bad"


@pytest.mark.parametrize("cache", ["off", "on"])
def test_dataset_skips_named_rows_and_trains_to_the_end(tmp_path, caplog, cache):
    dataset, expected = hf_dataset(tmp_path / "data")
    with caplog.at_level(logging.WARNING):
        main(fit_args(tmp_path / "run", "HFDataset", dataset, "--data.cache", cache, "--data.cache_crops", "1"))
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()
    for row, reason in expected.items():
        assert f"split 'train' row {row}: {reason}" in caplog.text
    assert f"row {GOOD_ROWS}: unreadable image (OSError: image file is truncated" in caplog.text
    assert f"{len(expected)} of {len(expected) + GOOD_ROWS + 1} rows left out before training" in caplog.text
    # The cut JPEG is drawn once in the 3 steps of one epoch, and passed over.
    assert scalars(tmp_path / "run", "train/skipped_samples")[-1][1] == len(expected) + 1


@pytest.mark.parametrize("bad_in_scan", [True, False])
def test_dataset_error_names_the_row(tmp_path, capsys, bad_in_scan):
    dataset, expected = hf_dataset(tmp_path / "data", bad=bad_in_scan)
    line = fails_with(capsys, *fit_args(tmp_path / "run", "HFDataset", dataset, "--data.on_bad_image", "error",
                                        "--data.cache", "off"))
    if bad_in_scan:
        assert f"{len(expected)} of {len(expected) + GOOD_ROWS + 1} rows cannot be used" in line
        assert f"row {GOOD_ROWS + 1}: not an image PIL can read (undecodable bytes)" in line
        assert not (tmp_path / "run" / "checkpoints").exists() and not scalars(tmp_path / "run", "train/loss")
    else:
        assert f"split 'train' row {GOOD_ROWS}: unreadable image (OSError: image file is truncated" in line


def test_error_under_a_cache_fails_while_encoding_before_training(tmp_path, capsys):
    dataset, _ = hf_dataset(tmp_path / "data", bad=False)
    line = fails_with(capsys, *fit_args(tmp_path / "run", "HFDataset", dataset, "--data.on_bad_image", "error",
                                        "--data.cache", "on", "--data.cache_crops", "1", "--data.cache_dir",
                                        str(tmp_path / "cache")))
    assert f"row {GOOD_ROWS}: unreadable image" in line
    assert not (tmp_path / "run" / "checkpoints").exists() and not scalars(tmp_path / "run", "train/loss")


def test_resume_over_a_bad_row_is_exact(tmp_path):
    dataset, _ = hf_dataset(tmp_path / "data", bad=False)
    common = ("--data.batch_size", "2", "--checkpoint.every_n_train_steps", "2", "--data.cache", "off")
    straight = cli_main(fit_args(tmp_path / "straight", "HFDataset", dataset, *common, "--trainer.max_steps", "4"))
    cli_main(fit_args(tmp_path / "resumed", "HFDataset", dataset, *common, "--trainer.max_steps", "2"))
    resumed = cli_main(fit_args(tmp_path / "resumed", "HFDataset", dataset, *common, "--trainer.max_steps", "4",
                                "--ckpt_path", "last"))
    expected, actual = transformer_weights(straight), transformer_weights(resumed)
    assert max((expected[k] - actual[k]).abs().max().item() for k in expected) <= 1e-6
    assert resumed.datamodule.skipped_samples == straight.datamodule.skipped_samples == 1


def test_folder_skips_named_files_and_trains_to_the_end(tmp_path, caplog):
    folder = image_folder(tmp_path / "images")
    with caplog.at_level(logging.WARNING):
        main(fit_args(tmp_path / "run", "ImageFolder", folder, "--data.cache", "off"))
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()
    for index, reason in enumerate(broken_images()):
        assert f"broken {index}.png': {reason}" in caplog.text
    assert "cut.jpg': unreadable image (OSError: image file is truncated" in caplog.text


def test_folder_error_names_the_file(tmp_path, capsys):
    folder = image_folder(tmp_path / "images")
    line = fails_with(capsys, *fit_args(tmp_path / "run", "ImageFolder", folder, "--data.on_bad_image", "error"))
    assert "4 of 13 rows cannot be used" in line and f"{folder / 'broken 0.png'}': not an image" in line


def test_a_file_deleted_after_listing_is_passed_over(tmp_path, caplog):
    folder = tmp_path / "images"
    folder.mkdir()
    for seed in range(6):
        noise_image(seed).save(folder / f"noise {seed}.png")
    datamodule = connected(ImageFolder(str(folder)), resolution=32, batch_size=3, cache="off", val_samples=1)
    datamodule.setup("fit")
    (folder / "noise 2.png").unlink()
    batches = list(datamodule.train_dataloader())
    assert sum(len(batch["position"]) for batch in batches) == 6
    assert sum(int(batch["replaced"].sum()) for batch in batches) == 1
    assert "noise 2.png': missing image file" in caplog.text


@pytest.mark.parametrize("setting, value, message", [
    ("trainer.accumulate_grad_batches", "0", "trainer.accumulate_grad_batches=0 must be at least 1"),
    ("trainer.accumulate_grad_batches", "-2", "trainer.accumulate_grad_batches=-2 must be at least 1"),
    ("trainer.max_steps", "0", "trainer.max_steps=0 must be a positive number of optimizer steps, or -1"),
    ("trainer.max_steps", "-3", "trainer.max_steps=-3 must be a positive number"),
    ("trainer.max_epochs", "0", "trainer.max_epochs=0 must be a positive number of epochs"),
    ("trainer.limit_train_batches", "0", "trainer.limit_train_batches=0 must be positive"),
    ("trainer.gradient_clip_val", "-1", "trainer.gradient_clip_val=-1 must be 0 or more"),
    ("data.batch_size", "0", "data.batch_size=0 must be positive"),
    ("data.num_workers", "-1", "data.num_workers=-1 must be 0"),
    ("data.on_bad_image", "ignore", "data.on_bad_image='ignore' is not one of ['skip', 'error']"),
])
def test_settings_that_cannot_work_are_one_line_errors(tmp_path, capsys, toy_dataset, setting, value, message):
    line = fails_with(capsys, *fit_args(tmp_path, "HFDataset", toy_dataset, f"--{setting}", value))
    assert line.startswith(f"error: {message}"), line


def test_a_bad_row_is_counted_once_per_draw(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for seed in range(3):
        noise_image(seed).save(folder / f"noise {seed}.jpg")
    (folder / "noise 1.jpg").write_bytes(truncated_jpeg())
    datamodule = connected(ImageFolder(str(folder)), resolution=32, batch_size=3, cache="off", val_samples=1)
    datamodule.setup("fit")
    dataset = datamodule.train_dataset
    samples = [dataset[(index, 0, index)] for index in range(3)]
    assert [sample["replaced"] for sample in samples] == [0, 1, 0]
    assert torch.equal(samples[1]["pixel_values"], dataset[(2, 0, 2)]["pixel_values"]), "the next row, same seed"
