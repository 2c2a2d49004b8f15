import datasets
import pytest
import torch
from PIL import Image

from amused_lightning.data import AmusedDataModule
from amused_lightning.data.sampling import ResumableSampler
from amused_lightning.data.sources import DataSourceError


def first_batch(datamodule):
    datamodule.setup("fit")
    return datamodule.on_before_batch_transfer(next(iter(datamodule.train_dataloader())), 0)


def test_parquet_dataset_batches(toy_dataset):
    batch = first_batch(AmusedDataModule(dataset=str(toy_dataset), resolution=64, batch_size=4, prompt_prefix="x ",
                                         cache="off"))
    assert batch["pixel_values"].shape == (4, 3, 64, 64)
    assert batch["micro_conds"].shape == (4, 5) and (batch["micro_conds"][:, :2] == 80).all()
    assert batch["input_ids"].shape == (4, 77) and batch["position"].tolist() == [0, 1, 2, 3]


def test_prompt_prefix_is_prepended(toy_dataset):
    samples = AmusedDataModule(dataset=str(toy_dataset), resolution=64, prompt_prefix="minecraft ")
    samples.setup("fit")
    image, prompt = samples.train_samples.source[0]
    assert prompt.startswith("minecraft a pixel art character")


def test_save_to_disk_folder_and_other_keys(tmp_path):
    rows = {"picture": [Image.new("RGB", (40, 40), (9, 9, 9))] * 3, "caption": ["a", "b", "c"]}
    datasets.Dataset.from_dict(rows).save_to_disk(str(tmp_path / "saved"))
    batch = first_batch(AmusedDataModule(dataset=str(tmp_path / "saved"), image_key="picture",
                                         prompt_key="caption", resolution=32, batch_size=3, cache="off"))
    assert batch["pixel_values"].shape == (3, 3, 32, 32)


def test_missing_key_names_the_setting(toy_dataset):
    with pytest.raises(DataSourceError, match=r"data.prompt_key='caption' not among its columns"):
        AmusedDataModule(dataset=str(toy_dataset), prompt_key="caption").setup("fit")


def test_image_dir_uses_stems_ignores_other_files_and_skips_unreadable(tmp_path, caplog):
    Image.new("RGB", (40, 30), (200, 0, 0)).save(tmp_path / "a red square.png")
    Image.new("L", (30, 40), 50).save(tmp_path / "a gray square.jpg")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    datamodule = AmusedDataModule(image_dir=str(tmp_path), resolution=16, batch_size=2)
    datamodule.setup("fit")
    source = datamodule.train_samples.source
    assert sorted(source[i][1] for i in range(len(source))) == ["a gray square", "a red square"]
    assert "broken.png" in caplog.text


def test_single_image_repeats_with_fresh_crops(tmp_path):
    path = tmp_path / "A mushroom in [V] style.png"
    Image.effect_mandelbrot((96, 64), (-2, -1, 1, 1), 50).convert("RGB").save(path)
    datamodule = AmusedDataModule(image=str(path), resolution=32, batch_size=4, cache="off")
    datamodule.setup("fit")
    assert datamodule.train_samples.source[0][1] == "A mushroom in [V] style"
    loader = iter(datamodule.train_dataloader())
    lefts = torch.cat([next(loader)["micro_conds"][:, 3] for _ in range(5)])
    assert len(set(lefts.tolist())) > 5, "each draw of the single image gets its own crop"


@pytest.mark.parametrize("kwargs, message", [
    ({}, "exactly one of"),
    ({"dataset": "x", "image": "y"}, "exactly one of"),
    ({"image": "missing.png"}, "data.image='missing.png' is not a file"),
    ({"image_dir": "nowhere"}, "data.image_dir='nowhere' is not a folder"),
    ({"image": "i.png", "batch_size": 0}, "data.batch_size=0 must be positive"),
])
def test_bad_sources_are_rejected(kwargs, message):
    with pytest.raises(DataSourceError, match=message.replace("[", r"\[")):
        AmusedDataModule(**kwargs).setup("fit")


def test_resolution_must_be_a_multiple_of_the_vq_factor(toy_dataset):
    with pytest.raises(DataSourceError, match="data.resolution=30 is not a multiple of the VQ downscale factor 4"):
        AmusedDataModule(dataset=str(toy_dataset), resolution=30).setup("fit")


def test_empty_folder_and_unreadable_single_image(tmp_path):
    with pytest.raises(DataSourceError, match="holds no readable image"):
        AmusedDataModule(image_dir=str(tmp_path)).setup("fit")
    (tmp_path / "bad.png").write_bytes(b"nope")
    with pytest.raises(DataSourceError, match="not a readable image"):
        AmusedDataModule(image=str(tmp_path / "bad.png")).setup("fit")


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
