"""Streamed data: HFStream (load_dataset(streaming=True)) and WebDataset tar shards, read in bounded memory, each reader
its own share, resumed exactly."""

from __future__ import annotations

import io
import itertools
import random
import tarfile
import tracemalloc
from pathlib import Path

import datasets
import huggingface_hub
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from amused_lightning.commands.check_data import main as check_data
from amused_lightning.commands.fit import cli_main
from amused_lightning.data import HFDataset, HFStream, WebDataset
from amused_lightning.data.bad_data import BadImageError
from amused_lightning.data.sources.base import DataSourceError
from amused_lightning.data.sources.stream import held_out_records
from amused_lightning.data.sources.webdataset import expand_braces
from amused_lightning.data.stream_dataset import Readers, buffer_shuffled, reader_pass, reader_records, shuffled_pass

from helpers import connected, fails_with, scalars, transformer_weights
from make_toy_dataset import build, write_tar

load = datasets.load_dataset


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """The same 40 toy images at 48 px as 4 tar shards (folder `wds`) and as 4 parquet files (folder `parquet`)."""
    root = tmp_path_factory.mktemp("streams")
    build(root / "wds", num_images=40, size=48, seed=3, shards=4, file_format="webdataset")
    build(root / "parquet", num_images=40, size=48, seed=3, shards=4)
    return root


@pytest.mark.parametrize("world_size, workers", [(2, 2), (1, 3), (4, 2)])
def test_readers_share_a_pass_without_overlap(shards, world_size, workers):
    # 4 shards of 10 records: 4 readers take one shard each, 3 readers shards {0, 3}, {1}, {2}; 8 readers (more
    # readers than shards) each keep every 8th record of all shards.
    source = WebDataset(str(shards / "wds" / "shard-*.tar"))
    readers = [Readers(rank, world_size, worker, workers) for rank in range(world_size) for worker in range(workers)]
    for pass_number in (0, 1):
        passes = [[r.id for r in reader_pass(source, reader, 0, pass_number, frozenset({(1, 5)}))]
                  for reader in readers]
        read = [record for records in passes for record in records]
        assert len(read) == len(set(read)), "no record read twice, by one reader or by two"
        assert set(read) == {(shard, i) for shard in range(4) for i in range(10)} - {(1, 5)}
    assert shuffled_pass(list(range(10)), 0, 0, 0) != shuffled_pass(list(range(10)), 0, 0, 1), "a new order a pass"
    assert sorted(shuffled_pass(list(range(10)), 0, 0, 1)) == list(range(10))


def test_the_shuffle_buffer_holds_at_most_its_size_and_yields_everything():
    held = []

    def counted():
        for i in range(500):
            held.append(i)
            yield i

    out = list(buffer_shuffled(counted(), 32, random.Random(0)))
    assert sorted(out) == list(range(500)) and out != list(range(500))
    assert all(out.index(i) >= i - 32 for i in range(500)), "no record leaves before the buffer is full behind it"


def test_hf_stream_and_webdataset_of_the_same_images_give_the_same_batches(shards):
    batches = []
    for source in (HFStream(str(shards / "parquet")), WebDataset(str(shards / "wds" / "shard-*.tar"))):
        datamodule = connected(source, resolution=32, batch_size=4, val_samples=2, random_flip=True)
        datamodule.setup("fit")
        assert len(datamodule.val_dataset) == 2 and datamodule.train_dataset.excluded == {(0, 0), (0, 1)}
        loader = iter(datamodule.train_dataloader())
        batches.append([next(loader) for _ in range(12)])  # more than a pass: 38 training records
    for ours, theirs in zip(*batches):
        assert ours["position"].tolist() == theirs["position"].tolist()
        assert torch.equal(ours["pixel_values"], theirs["pixel_values"])
        assert torch.equal(ours["input_ids"], theirs["input_ids"])


def test_hf_dataset_and_stream_take_name_data_files_and_revision(shards, tmp_path, monkeypatch):
    files = sorted(str(p) for p in (shards / "parquet" / "data").glob("*.parquet"))
    assert len(HFDataset("parquet", data_files=files[:2])) == 20
    assert sum(1 for _ in HFStream("parquet", data_files={"train": files[1]}).records(0)) == 10
    # Two configurations of one local dataset, named in its README as on the Hub.
    (tmp_path / "README.md").write_text("---\nconfigs:\n- config_name: first\n  data_files: [{split: train, path: "
                                        f"{files[0]}}}]\n- config_name: rest\n  data_files: [{{split: train, path: "
                                        f"[{', '.join(files[1:])}]}}]\n---\n")
    assert len(HFDataset(str(tmp_path), name="rest")) == 30
    assert HFStream(str(tmp_path), name="first").shard_count == 1
    # A revision only means something on the Hub: it reaches load_dataset.
    seen = []
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kwargs: seen.append(kwargs) or load(*args, **kwargs))
    len(HFDataset(str(tmp_path), name="first", revision="v2"))
    assert seen[0]["revision"] == "v2" and seen[0]["name"] == "first"


def noise_tar(path: Path, count: int, seed: int) -> None:
    """A shard of `count` 64 px noise images (incompressible: 12 kB each)."""
    rng = np.random.default_rng(seed)
    images = [Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)) for _ in range(count)]
    write_tar(path, [(f"{i:06d}", image, f"noise {i}") for i, image in enumerate(images)])


def test_memory_stays_bounded_whatever_the_stream_size(tmp_path):
    # Reading a ten times larger stream through the shuffle buffer holds about as much memory.
    peaks = {}
    for count in (200, 2000):
        noise_tar(tmp_path / str(count) / "shard-0.tar", count, seed=count)
        source = WebDataset(str(tmp_path / str(count) / "shard-0.tar"))
        records = reader_records(source, Readers(0, 1, 0, 1), seed=0, excluded=frozenset())
        shuffled = buffer_shuffled(records, 64, random.Random(0))
        tracemalloc.start()
        for _ in range(count):
            next(shuffled)
        peaks[count] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peaks[2000] < 1.5 * peaks[200] and peaks[2000] < 64 * 12_288 * 3, peaks


def stream_fit(root: Path, data: Path, *extra: str):
    return cli_main([
        "fit", "--trainer.default_root_dir", str(root), "--trainer.accelerator", "cpu", "--trainer.devices", "1",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--model.pretrained", "tiny", "--data.source", "WebDataset", "--data.source.shards", str(data),
        "--data.resolution", "32", "--data.batch_size", "4", "--data.val_samples", "2", "--data.shuffle_buffer", "8",
        "--data.random_flip", "true", "--trainer.limit_val_batches", "0", "--export.enabled", "false", *extra])


@pytest.mark.slow
def test_a_streamed_fit_with_loader_workers_resumes_exactly(shards, tmp_path, capsys):
    # 2 workers, resumed at step 3 (an odd number of batches: the next one is worker 1's turn), past the first pass.
    data = shards / "wds" / "shard-*.tar"
    common = ("--data.num_workers", "2", "--trainer.max_steps", "11", "--checkpoint.every_n_train_steps", "3")
    straight = stream_fit(tmp_path / "straight", data, *common)
    step_3 = tmp_path / "straight" / "checkpoints" / "step=3.ckpt"
    resumed = stream_fit(tmp_path / "resumed", data, "--ckpt_path", str(step_3), *common)
    for key, value in transformer_weights(straight).items():
        assert torch.allclose(value, resumed.model.model.transformer.state_dict()[key], atol=1e-6, rtol=0), key
    assert [s for s, _ in scalars(tmp_path / "resumed", "train/loss")] == list(range(3, 11))
    line = fails_with(capsys, "fit", *stream_fit_args(tmp_path / "other", data), "--ckpt_path", str(step_3),
                      "--data.num_workers", "3", "--trainer.max_steps", "11")
    assert "read by 1 processes x 2 workers in batches of 4, this run reads it by 1 x 3" in line, line


def stream_fit_args(root: Path, data: Path) -> list[str]:
    return ["--trainer.default_root_dir", str(root), "--model.pretrained", "tiny", "--data.source", "WebDataset",
            "--data.source.shards", str(data), "--data.resolution", "32", "--data.batch_size", "4",
            "--trainer.enable_progress_bar", "false", "--export.enabled", "false"]


def test_stream_settings_that_cannot_work_are_refused_before_training(shards, tmp_path, capsys, monkeypatch):
    data = shards / "wds" / "shard-*.tar"
    line = fails_with(capsys, "fit", *stream_fit_args(tmp_path / "a", data), "--data.cache", "on")
    assert "data.cache='on'" in line and "WebDataset" in line
    line = fails_with(capsys, "fit", *stream_fit_args(tmp_path / "b", data), "--trainer.max_steps", "-1")
    assert "set trainer.max_steps" in line
    line = fails_with(capsys, "fit", *stream_fit_args(tmp_path / "c", tmp_path / "none-*.tar"),
                      "--trainer.max_steps", "2")
    assert "none-*.tar' matches no file" in line
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    line = fails_with(capsys, "fit", *stream_fit_args(tmp_path / "d", Path("someone/shards")), "--trainer.max_steps",
                      "2")
    assert line.startswith("error: data.source.shards='someone/shards': could not list") and "offline" in line


def broken_shard(path: Path) -> None:
    """Six samples: two good, then no caption, an empty image, a truncated PNG, good."""
    good = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8))
    png = io.BytesIO()
    good.save(png, format="PNG")
    members = {"a.png": png.getvalue(), "a.txt": b"red", "b.png": png.getvalue(), "b.txt": b"red too",
               "c.png": png.getvalue(), "d.png": b"", "d.txt": b"empty", "e.png": png.getvalue()[:2000],
               "e.txt": b"truncated", "f.png": png.getvalue(), "f.txt": b"last"}
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_bad_records_are_skipped_and_counted_or_stop_the_run(tmp_path, caplog):
    broken_shard(tmp_path / "bad" / "shard.tar")
    source = WebDataset(str(tmp_path / "bad" / "shard.tar"))
    held, excluded = held_out_records(source, 1)
    assert [r.captions.lines for r in held] == [("red",)] and not excluded  # under ten records: scored, not held out
    datamodule = connected(source, resolution=32, batch_size=2, val_samples=1, shuffle_buffer=1)
    datamodule.setup("fit")
    batches = [b for _, b in zip(range(3), datamodule.train_dataloader())]
    # Two passed over (no caption, empty image) before they take a place; one replaced at decoding (truncated).
    assert sum(int(b["replaced"].sum()) for b in batches) == 3
    warned = caplog.text
    assert "key 'c'" in warned and "key 'd'" in warned and "key 'e'" in warned
    strict = connected(source, resolution=32, batch_size=2, val_samples=1, shuffle_buffer=1, on_bad_image="error")
    strict.setup("fit")
    with pytest.raises(BadImageError, match=r"shard 0 .*record 2 \(key 'c'\): no .txt file"):
        list(zip(range(2), strict.train_dataloader()))  # the first batch is whole; the second meets the bad ones


def test_a_stream_fills_aspect_ratio_buckets(tmp_path):
    sizes = [(64, 32), (32, 64), (48, 48)] * 6
    rng = np.random.default_rng(0)
    samples = [(f"{i:03d}", Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)), f"image {i}")
               for i, (w, h) in enumerate(sizes)]
    write_tar(tmp_path / "shard.tar", samples)
    datamodule = connected(WebDataset(str(tmp_path / "shard.tar")), resolution=32, batch_size=3, val_samples=1,
                           aspect_buckets={"max_ratio": 2.0})
    datamodule.setup("fit")
    shapes = {tuple(b["pixel_values"].shape[2:]) for _, b in zip(range(12), datamodule.train_dataloader())}
    assert {(16, 64), (64, 16)} <= shapes or {(24, 40), (40, 24)} <= shapes, shapes
    assert (32, 32) in shapes


def test_check_data_reports_the_start_of_a_stream(shards, tmp_path, capsys):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"model": {"pretrained": "tiny"}, "data": {"resolution": 32, "source": {
        "class_path": "WebDataset", "init_args": {"shards": str(shards / "wds" / "shard-*.tar")}}}}))
    report = check_data(["--config", str(config), "--records", "25", "--preview", str(tmp_path / "p.png")])
    out = capsys.readouterr().out
    assert "is a stream of 4 shards: this report covers its first 25 records" in out
    assert report.total == 25 and not report.skipped and (tmp_path / "p.png").exists()


def test_shard_lists_take_globs_brace_ranges_and_lists(shards):
    assert expand_braces("a/{008..011}.tar") == ["a/008.tar", "a/009.tar", "a/010.tar", "a/011.tar"]
    assert expand_braces("{x,y}-{1..2}") == ["x-1", "x-2", "y-1", "y-2"]
    folder = shards / "wds"
    by_range = WebDataset(str(folder / "shard-{00001..00003}.tar")).files
    by_list = WebDataset([str(folder / "shard-00001.tar"), str(folder / "shard-0000[23].tar")]).files
    assert by_range == by_list == [str(folder / f"shard-0000{k}.tar") for k in (1, 2, 3)]


def test_unreadable_shards_are_passed_over_and_a_pass_with_nothing_usable_stops(tmp_path, caplog):
    noise_tar(tmp_path / "good.tar", 3, seed=0)
    (tmp_path / "junk.tar").write_bytes(b"version https://git-lfs.github.com/spec/v1\n")  # an LFS pointer, not a tar
    source = WebDataset([str(tmp_path / "good.tar"), str(tmp_path / "junk.tar")])
    assert [len(list(source.records(shard))) for shard in (0, 1)] == [3, 0]
    assert "junk.tar cannot be read on" in caplog.text
    with pytest.raises(DataSourceError, match="'data/missing.tar' matches no file"):
        WebDataset("data/missing.tar").files  # a missing file, not a hub id
    write_tar(tmp_path / "uncaptioned.tar", [])
    with tarfile.open(tmp_path / "uncaptioned.tar", "a") as tar:  # images without their .txt
        for key in ("a", "b"):
            info = tarfile.TarInfo(f"{key}.png")
            info.size = 3
            tar.addfile(info, io.BytesIO(b"png"))
    records = reader_records(WebDataset(str(tmp_path / "uncaptioned.tar")), Readers(0, 1, 0, 1), 0, frozenset())
    with pytest.raises(BadImageError, match="found no training record"):
        list(itertools.islice(records, 100))
