import datasets
import pytest
import torch
from PIL import Image

from amused_lightning.data import AmusedDataModule, HFDataset, ImageFolder, SingleImage
from amused_lightning.data.sampler import ResumableSampler
from amused_lightning.data.sources.base import DataSourceError

from helpers import connected, tiny_encoders


def first_batch(datamodule):
    datamodule.setup("fit")
    return datamodule.on_before_batch_transfer(next(iter(datamodule.train_dataloader())), 0)


def test_parquet_dataset_batches(toy_dataset):
    batch = first_batch(connected(HFDataset(str(toy_dataset), prompt_prefix="x "), resolution=64, batch_size=4,
                                  cache="off"))
    assert batch["pixel_values"].shape == (4, 3, 64, 64)
    assert batch["micro_conds"].shape == (4, 5) and (batch["micro_conds"][:, :2] == 80).all()
    assert batch["input_ids"].shape == (4, 77) and batch["position"].tolist() == [0, 1, 2, 3]


def test_prompt_prefix_is_prepended(toy_dataset):
    datamodule = connected(HFDataset(str(toy_dataset), prompt_prefix="minecraft "), resolution=64)
    datamodule.setup("fit")
    image, prompt = datamodule.train_dataset.source[0]
    assert prompt.startswith("minecraft a pixel art character")


def test_save_to_disk_folder_and_other_keys(tmp_path):
    rows = {"picture": [Image.new("RGB", (40, 40), (9, 9, 9))] * 3, "caption": ["a", "b", "c"]}
    datasets.Dataset.from_dict(rows).save_to_disk(str(tmp_path / "saved"))
    batch = first_batch(connected(HFDataset(str(tmp_path / "saved"), image_key="picture", prompt_key="caption"),
                                  resolution=32, batch_size=3, cache="off"))
    assert batch["pixel_values"].shape == (3, 3, 32, 32)


def test_missing_key_names_the_setting(toy_dataset):
    with pytest.raises(DataSourceError, match=r"data.source.prompt_key='caption' not among its columns"):
        connected(HFDataset(str(toy_dataset), prompt_key="caption")).setup("fit")


def test_image_dir_uses_stems_ignores_other_files_and_skips_unreadable(tmp_path, caplog):
    Image.new("RGB", (40, 30), (200, 0, 0)).save(tmp_path / "a red square.png")
    Image.new("L", (30, 40), 50).save(tmp_path / "a gray square.jpg")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    datamodule = connected(ImageFolder(str(tmp_path)), resolution=16, batch_size=2)
    datamodule.setup("fit")
    source = datamodule.train_dataset.source
    assert sorted(source[i][1] for i in source.usable_rows()) == ["a gray square", "a red square"]
    assert "broken.png': not an image PIL can read" in caplog.text


def test_single_image_repeats_with_fresh_crops(tmp_path):
    path = tmp_path / "A mushroom in [V] style.png"
    Image.effect_mandelbrot((96, 64), (-2, -1, 1, 1), 50).convert("RGB").save(path)
    datamodule = connected(SingleImage(str(path)), resolution=32, batch_size=4, cache="off")
    datamodule.setup("fit")
    assert datamodule.train_dataset.source[0][1] == "A mushroom in [V] style"
    loader = iter(datamodule.train_dataloader())
    lefts = torch.cat([next(loader)["micro_conds"][:, 3] for _ in range(5)])
    assert len(set(lefts.tolist())) > 5, "each draw of the single image gets its own crop"


@pytest.mark.parametrize("source, settings, message", [
    (SingleImage("missing.png"), {}, "data.source.path='missing.png' is not a file"),
    (ImageFolder("nowhere"), {}, "data.source.path='nowhere' is not a folder"),
    (HFDataset("nowhere"), {}, "data.source.path='nowhere' split 'train': could not open it"),
    (SingleImage("i.png"), {"batch_size": 0}, "data.batch_size=0 must be positive"),
])
def test_bad_sources_are_rejected(source, settings, message):
    with pytest.raises(DataSourceError, match=message.replace("[", r"\[")):
        connected(source, **settings).setup("fit")


def test_resolution_must_be_a_multiple_of_the_vq_factor(toy_dataset):
    with pytest.raises(DataSourceError, match="data.resolution=30 is not a multiple of 4 .* try 28 or 32"):
        connected(HFDataset(str(toy_dataset)), resolution=30).setup("fit")


def test_setup_before_connect_says_what_to_call(toy_dataset):
    datamodule = AmusedDataModule(HFDataset(str(toy_dataset)))
    for hook in (datamodule.prepare_data, lambda: datamodule.setup("fit")):
        with pytest.raises(RuntimeError, match=r"connect\(model.frozen_encoders\(\)\) must be called"):
            hook()
    datamodule.connect(tiny_encoders())
    datamodule.setup("fit")
    assert datamodule.hparams.source == {
        "class_path": "amused_lightning.data.sources.hf_dataset.HFDataset", "init_args": dict(
            path=str(toy_dataset), split="train", image_key="image", prompt_key="text", prompt_prefix=None,
            val_split=None, name=None, data_files=None, revision=None)}


def test_empty_folder_and_unreadable_single_image(tmp_path):
    with pytest.raises(DataSourceError, match="holds no readable image"):
        connected(ImageFolder(str(tmp_path))).setup("fit")
    (tmp_path / "bad.png").write_bytes(b"nope")
    with pytest.raises(DataSourceError, match="not a readable image"):
        connected(SingleImage(str(tmp_path / "bad.png"))).setup("fit")


def test_sampler_resumes_mid_epoch_with_the_same_draws():
    data = list(range(10))
    full = ResumableSampler(data, num_replicas=1, rank=0, seed=3)
    full.set_epoch(2)
    draws = list(full)
    resumed = ResumableSampler(data, num_replicas=1, rank=0, seed=3)
    resumed.resume_at(2, 6)
    resumed.set_epoch(2)
    assert list(resumed) == draws[6:]
    assert len(list(resumed)) == 10, "the skip applies to one pass only"
    other_epoch = ResumableSampler(data, num_replicas=1, rank=0, seed=3)
    assert [d[0] for d in other_epoch] != [d[0] for d in draws]


def test_sampler_shards_across_ranks():
    shards = [[index for index, _, _ in ResumableSampler(list(range(9)), 3, rank, seed=0)] for rank in range(3)]
    assert sorted(sum(shards, [])) == list(range(9))


@pytest.mark.parametrize("rows", [16, 13])
def test_two_processes_draw_what_one_accumulating_two_draws(rows):
    # Batch 2: optimizer step k of 2 processes trains on micro-batches 2k, 2k+1 of one process, draw for draw
    # (crop seeds included), over every whole step; 13 rows leave a last, shorter step dealt out one by one.
    one = list(ResumableSampler(list(range(rows)), 1, 0, seed=3, batch_size=2))
    shards = [list(ResumableSampler(list(range(rows)), 2, rank, seed=3, batch_size=2)) for rank in range(2)]
    steps = [[draw for shard in shards for draw in shard[2 * k:2 * k + 2]] for k in range(len(shards[0]) // 2)]
    whole = rows // 4
    assert [draw[:2] for step in steps[:whole] for draw in step] == [draw[:2] for draw in one[:4 * whole]]
    drawn = [index for shard in shards for index, _, _ in shard]
    assert set(drawn) == set(range(rows)) and len(drawn) == rows + rows % 2, "every row, padded to an even count"
    assert [position for _, _, position in shards[1]] == list(range(len(shards[1])))
    resumed = ResumableSampler(list(range(rows)), 2, 1, seed=3, batch_size=2)
    resumed.resume_at(0, 4)  # after 4 draws of both processes together: 2 of each
    assert list(resumed) == shards[1][2:]
