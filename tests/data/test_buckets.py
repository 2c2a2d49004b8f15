"""Aspect-ratio buckets: the grid shapes, the assignment of images, covering crops, the bucket sampler (one shape
per batch, resumable, dealt to processes), the DataModule with and without the cache, a resumed fit, `check-data`
and `generate --width/--height` against AmusedPipeline."""

import dataclasses
import math
import random

import numpy as np
import pytest
import torch
import yaml
from diffusers import AmusedPipeline
from PIL import Image

from amused_lightning.commands.check_data import main as check_data
from amused_lightning.commands.generate import main as generate_main
from amused_lightning.data import AmusedDataModule, ImageFolder
from amused_lightning.data.bucket_sampler import BucketSampler
from amused_lightning.data.buckets import AspectBucketSettings, RowLayout, bucket_grids, bucket_layout, nearest_grid
from amused_lightning.data.sources.base import DataSourceError
from amused_lightning.data.transforms import preprocess_image
from amused_lightning.model.components import load_components
from amused_lightning.model.encoding import encode_image_tokens

from helpers import connected, fails_with, fit, tiny_encoders

# (width, height) of the images the tests write: wide, 4:3, square, portrait and very tall ones.
SIZES = [(80, 40)] * 4 + [(64, 48)] * 2 + [(48, 48)] * 3 + [(40, 72)] * 2 + [(30, 90)]
TINY_GRIDS = [(8, 8), (7, 9), (9, 7), (6, 10), (10, 6)]  # tiny at 32 px: 8x8 tokens of 4 px, max ratio 2


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """12 noise images of the sizes above, named by their place."""
    root = tmp_path_factory.mktemp("rectangles")
    generator = np.random.default_rng(0)
    for index, (width, height) in enumerate(SIZES):
        cells = generator.integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8)
        Image.fromarray(cells).resize((width, height), Image.Resampling.NEAREST).save(root / f"image {index}.png")
    return root


def bucketed(folder, **settings):
    """A DataModule on `folder` at 32 px, batch 2, with buckets of max ratio 2."""
    return connected(ImageFolder(str(folder)), resolution=32, batch_size=2, val_samples=1,
                     aspect_buckets=AspectBucketSettings(), **settings)


@pytest.mark.parametrize("side, multiple, max_ratio", [(16, 1, 2.0), (32, 2, 2.0), (8, 1, 2.0), (16, 1, 1.5)])
def test_bucket_grids_keep_about_the_square_token_count_within_the_ratio(side, multiple, max_ratio):
    grids = bucket_grids(side, multiple, max_ratio)
    assert grids[0] == (side, side) and len(set(grids)) == len(grids) > 1
    for height, width in grids:
        assert side ** 2 - multiple * min(height, width) < height * width <= side ** 2
        assert max(height, width) / min(height, width) <= max_ratio
        assert height % multiple == 0 and width % multiple == 0 and (width, height) in grids


def test_amused_256_buckets_and_the_square_only():
    assert bucket_grids(16, 1, 2.0) == [(16, 16), (15, 17), (17, 15), (14, 18), (18, 14), (13, 19), (19, 13),
                                        (12, 21), (21, 12)]
    assert bucket_grids(16, 1, 1.0) == [(16, 16)]
    with pytest.raises(ValueError, match=r"data.aspect_buckets.max_ratio=0.5 must be at least 1"):
        AspectBucketSettings(max_ratio=0.5)


def test_images_go_to_the_bucket_nearest_their_aspect_ratio():
    assert [TINY_GRIDS[nearest_grid(*size, TINY_GRIDS)] for size in [(80, 40), (64, 48), (48, 48), (40, 72),
                                                                     (30, 90), (1000, 10)]] == \
        [(6, 10), (7, 9), (8, 8), (10, 6), (10, 6), (6, 10)]
    sizes = {row: size for row, size in enumerate(SIZES)} | {99: None}
    layout = bucket_layout([9, 0, 99, 4, 11, 1, 10], sizes, TINY_GRIDS, 4)
    assert layout.rows == [99, 4, 0, 1, 9, 11, 10], "by bucket in grid order, rows in their order within"
    assert layout.groups == [range(0, 1), range(1, 2), range(2, 4), range(4, 7)]
    assert layout.sizes == [(32, 32), (36, 28), (40, 24), (40, 24), (24, 40), (24, 40), (24, 40)]


def test_covering_crop_keeps_the_true_size_and_offsets_in_micro_conds():
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (50, 100, 3), dtype=np.uint8))
    sample = preprocess_image(image, (40, 24), random.Random(0))
    assert sample["pixel_values"].shape == (3, 24, 40)
    width, height, top, left, score = sample["micro_conds"].tolist()
    assert (width, height, top, score) == (100, 50, 0, 6.0) and 0 <= left <= 8, "covers 48x24, crops 40 of 48"
    centred = preprocess_image(image, (40, 24), random.Random(0), center_crop=True)
    assert centred["micro_conds"][3] == 4
    lefts = {preprocess_image(image, (40, 24), random.Random(seed))["micro_conds"][3].item() for seed in range(30)}
    assert lefts == set(range(9)), "every offset the covering image allows"


class LaidOut(list):
    """A stand-in dataset: indices only, with a layout."""

    def __init__(self, groups: list[range]):
        super().__init__(range(groups[-1].stop))
        self.layout = RowLayout(list(range(groups[-1].stop)), [(0, 0)] * groups[-1].stop, groups)


GROUPS = [range(0, 5), range(5, 6), range(6, 13), range(13, 16)]


def batches_of(draws, batch_size):
    return [draws[start:start + batch_size] for start in range(0, len(draws), batch_size)]


def test_the_sampler_draws_each_batch_from_one_bucket_and_every_row_each_epoch():
    dataset = LaidOut(GROUPS)
    sampler = BucketSampler(dataset, 1, 0, seed=3, batch_size=2)
    epochs = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        epochs.append(list(sampler))
        batches = batches_of([index for index, _, _ in epochs[-1]], 2)
        assert len(batches) == sum(math.ceil(len(group) / 2) for group in GROUPS) == len(sampler) // 2
        assert all(len({dataset.layout.group_of(index) for index in batch}) == 1 for batch in batches)
        assert {index for batch in batches for index in batch} == set(range(16))
    assert len({tuple(draws) for draws in epochs}) == 3, "another order each epoch"
    again = BucketSampler(dataset, 1, 0, seed=3, batch_size=2)
    again.set_epoch(2)
    assert list(again) == epochs[2], "the same order from (seed, epoch)"
    again.resume_at(2, 6)
    assert list(again) == epochs[2][6:] and list(again) == epochs[2], "resumed once, after 6 draws"


@pytest.mark.parametrize("groups", [GROUPS, [range(0, 3), range(3, 6), range(6, 7)]])
def test_two_processes_draw_with_buckets_what_one_accumulating_two_draws(groups):
    # Every batch is whole: step k of 2 processes holds micro-batches 2k and 2k+1 of one process, draw for draw
    # (seeds included), and a rank that resumes after 2 steps draws on as it would have.
    dataset = LaidOut(groups)
    one = batches_of(list(BucketSampler(dataset, 1, 0, seed=5, batch_size=2)), 2)
    ranks = [batches_of(list(BucketSampler(dataset, 2, rank, seed=5, batch_size=2)), 2) for rank in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == math.ceil(len(one) / 2)
    dealt = [[[draw[:2] for draw in ranks[rank][k]] for rank in range(2)] for k in range(len(ranks[0]))]
    expected = [[[draw[:2] for draw in batch] for batch in one[2 * k:2 * k + 2]] for k in range(len(ranks[0]))]
    whole = len(one) // 2
    assert dealt[:whole] == expected[:whole]
    resumed = BucketSampler(dataset, 2, 1, seed=5, batch_size=2)
    resumed.resume_at(0, 8)  # 2 steps of 2 processes x 2 draws
    assert batches_of(list(resumed), 2) == ranks[1][2:]


def test_datamodule_batches_are_one_shape_with_true_sizes_and_a_bad_row_keeps_its_bucket(folder, tmp_path):
    datamodule = bucketed(folder, cache="off")
    datamodule.setup("fit")
    source = datamodule.source
    assert len(datamodule.train_dataset.layout.groups) == 4
    shapes = set()
    for batch in datamodule.train_dataloader():
        assert batch["pixel_values"].shape[0] == 2
        shapes.add(tuple(batch["pixel_values"].shape[2:]))
        for micro_conds in batch["micro_conds"]:
            assert tuple(micro_conds[:2].int().tolist()) in SIZES
    assert shapes == {(24, 40), (28, 36), (32, 32), (40, 24)}
    val = next(iter(datamodule.val_dataloader()))
    assert val["pixel_values"].shape[2:] == (32, 32), "held-out samples stay squares"

    # A wide image gone after the scan: its draw takes the next wide one, so its batch stays one shape (or the
    # batch could not be stacked).
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in folder.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    broken = bucketed(copy, cache="off")
    broken.setup("fit")
    wide = next(row for row in broken.train_dataset.rows if Image.open(source.image_data(row)).size == (80, 40))
    broken.source.image_data(wide).unlink()
    assert sum(int(batch["replaced"].sum()) for batch in broken.train_dataloader()) >= 1


def test_cached_buckets_hold_the_tokens_of_the_live_crops(folder, tmp_path):
    live = bucketed(folder, cache="off", center_crop=True)
    cached = bucketed(folder, cache="auto", center_crop=True, cache_dir=str(tmp_path))
    for datamodule in (live, cached):
        datamodule.setup("fit")
    assert type(cached.train_dataset).__name__ == "CachedDataset"
    vqvae = tiny_encoders().vqvae
    for pixels, tokens in zip(live.train_dataloader(), cached.train_dataloader()):
        assert tokens["image_tokens"].shape[1:] == tuple(side // 4 for side in pixels["pixel_values"].shape[2:])
        assert torch.equal(tokens["image_tokens"], encode_image_tokens(vqvae, pixels["pixel_values"]))
        assert torch.equal(tokens["micro_conds"], pixels["micro_conds"])


def test_resolution_must_suit_a_transformer_that_halves_its_grid(folder):
    datamodule = AmusedDataModule(ImageFolder(str(folder)), resolution=36)
    with pytest.raises(DataSourceError, match="data.resolution=36 is not a multiple of 8 [(]the VQ downscale "
                                              "factor 4 times 2, the transformer's downsampling[)] of the model "
                                              "'tiny': try 32 or 40"):
        datamodule.connect(dataclasses.replace(tiny_encoders(), token_grid_multiple=2))


def test_a_bucketed_fit_trains_and_resumes_exactly(folder, tmp_path):
    # Resumed mid-epoch (7 batches an epoch) from the straight run's step 2, with random crops and flips drawn.
    common = ("--data.source", "ImageFolder", "--data.source.path", str(folder), "--data.batch_size", "2",
              "--data.aspect_buckets.max_ratio", "2", "--data.random_flip", "true", "--trainer.max_steps", "3",
              "--checkpoint.every_n_train_steps", "2", "--trainer.limit_val_batches", "0", "--export.enabled", "false")
    straight = fit(tmp_path / "straight", folder, *common)
    assert len(straight.datamodule.train_dataset.layout.groups) == 4
    step_2 = tmp_path / "straight" / "checkpoints" / "step=2.ckpt"
    resumed = fit(tmp_path / "resumed", folder, "--ckpt_path", str(step_2), *common)
    before = torch.load(step_2, weights_only=True)["state_dict"]
    for key, value in straight.model.model.transformer.state_dict().items():
        assert torch.allclose(value, resumed.model.model.transformer.state_dict()[key], atol=1e-6, rtol=0), key
    assert any(not torch.equal(value, before[f"transformer.{key}"])
               for key, value in straight.model.model.transformer.state_dict().items()), "step 3 trained"


def test_check_data_reports_the_bucket_histogram(folder, tmp_path, capsys):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"model": {"pretrained": "tiny"}, "data": {
        "resolution": 32, "val_samples": 1, "aspect_buckets": {"max_ratio": 2.0},
        "source": {"class_path": "ImageFolder", "init_args": {"path": str(folder)}}}}))
    check_data(["--config", str(config), "--samples", "0"])
    out = capsys.readouterr().out
    assert "training crops its aspect-ratio bucket, below" in out
    lines = out.split("aspect-ratio buckets (data.aspect_buckets.max_ratio 2;")[1].splitlines()[1:]
    counts = {line.split()[0]: int(line.split()[2]) for line in lines if " px " in line}
    assert set(counts) == {"40x24", "36x28", "32x32", "24x40"} and sum(counts.values()) == len(SIZES) - 1


def test_generate_width_and_height_equal_amused_pipeline(tmp_path, capsys):
    # The toy model halves its token grid inside (as amused-512 does): 96x64 px is 16x24 tokens, 8x12 inside.
    paths = generate_main(["a pixel art character", "-o", str(tmp_path), "--pretrained", "toy", "--width", "96",
                           "--height", "64", "--steps", "3", "--seed", "4"])
    toy = load_components("toy")
    pipe = AmusedPipeline(vqvae=toy.vqvae, tokenizer=toy.tokenizer, text_encoder=toy.text_encoder,
                          transformer=toy.transformer, scheduler=toy.scheduler)
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(["a pixel art character"], height=64, width=96, num_inference_steps=3,
                  generator=torch.Generator().manual_seed(4)).images[0]
    ours = Image.open(paths[0])
    assert ours.size == theirs.size == (96, 64)
    assert np.array_equal(np.asarray(ours), np.asarray(theirs))
    line = fails_with(capsys, "generate", "a cat", "-o", str(tmp_path / "x"), "--pretrained", "toy", "--height", "60")
    assert line == ("error: --height 60 is not a positive multiple of 8 px (4 px per token, times 2: the transformer "
                    "halves its token grid): try 56")
    line = fails_with(capsys, "generate", "a cat", "-o", str(tmp_path / "x"), "--pretrained", "tiny", "--width", "2")
    assert line == "error: --width 2 is not a positive multiple of 4 px (4 px per token): try 4"
