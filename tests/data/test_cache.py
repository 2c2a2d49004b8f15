import logging

import pytest
import torch
from PIL import Image

from amused_lightning.data import HFDataset, ImageFolder, SingleImage
from amused_lightning.data.cache import CacheBuilder

from helpers import connected, fit, scalars, transformer_weights


def cache_folders(root):
    return sorted(p.name for p in root.iterdir() if p.is_dir())


@pytest.fixture
def counting_encoders(monkeypatch):
    """Counts how often the frozen encoders encode a cache (once per cache built)."""
    calls = []
    original = CacheBuilder.encode

    def counted(self, *args, **kwargs):
        calls.append(args)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(CacheBuilder, "encode", counted)
    return calls


def test_reusing_the_cache_is_said_once(tmp_path, toy_dataset, caplog):
    def said_reusing() -> list[str]:
        """The reuse messages of a run's data: prepared, set up for the fit, prepared again for its validation."""
        caplog.clear()
        datamodule = connected(HFDataset(str(toy_dataset)), resolution=32, cache_dir=str(tmp_path))
        with caplog.at_level(logging.INFO, logger="amused_lightning"):
            datamodule.prepare_data()
            datamodule.setup("fit")
            datamodule.prepare_data()
        return [message for message in caplog.messages if message.startswith("reusing the pre-encoded cache")]

    assert said_reusing() == [], "a cache just built is not announced as reused"
    (line,) = said_reusing()
    assert line.count(str(tmp_path)) == 2, "one line names the training and the held-out cache"


def test_cache_is_reused_and_rebuilt_when_settings_change(tmp_path, toy_dataset, counting_encoders):
    def setup(**kwargs):
        datamodule = connected(HFDataset(str(toy_dataset)), **{"resolution": 32, "cache_dir": str(tmp_path), **kwargs})
        datamodule.setup("fit")
        return datamodule

    first = setup()
    assert type(first.train_dataset).__name__ == "CachedDataset" and len(counting_encoders) == 2  # train + held-out
    assert len(cache_folders(tmp_path)) == 2
    setup()
    assert len(counting_encoders) == 2, "a second run reads the cache without encoding"
    setup(resolution=48)
    assert len(counting_encoders) == 4 and len(cache_folders(tmp_path)) == 4
    setup(seed=1)  # another preset seed: other encoder weights (and another held-out split)
    assert len(counting_encoders) == 6


def test_changed_image_file_invalidates_the_cache(tmp_path, counting_encoders):
    image = tmp_path / "A mushroom in [V] style.png"
    Image.new("RGB", (40, 40), (200, 30, 30)).save(image)
    connected(SingleImage(str(image)), resolution=32, cache_dir=str(tmp_path / "c")).setup("fit")
    Image.new("RGB", (40, 40), (30, 200, 30)).save(image)
    datamodule = connected(SingleImage(str(image)), resolution=32, cache_dir=str(tmp_path / "c"))
    datamodule.setup("fit")
    assert len(counting_encoders) == 4
    assert len(datamodule.train_dataset.cache) == 1, "a single image is encoded once per crop, not per repeat"


def test_auto_mode_refuses_varying_crops_and_on_mode_keeps_several(tmp_path, counting_encoders):
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        Image.effect_mandelbrot((64, 40), (-2, -1, 1, 1), 20 + i).convert("RGB").save(folder / f"shape {i}.png")
    auto = connected(ImageFolder(str(folder)), resolution=32, cache_dir=str(tmp_path / "c"))
    auto.setup("fit")
    assert type(auto.train_dataset).__name__ == "PixelDataset"
    again = connected(ImageFolder(str(folder)), resolution=32, cache_dir=str(tmp_path / "c"))
    again.setup("fit")
    assert len(counting_encoders) == 1, "the finding that crops vary is remembered"
    on = connected(ImageFolder(str(folder)), resolution=32, cache="on", cache_crops=3, cache_dir=str(tmp_path / "c"))
    on.setup("fit")
    cache = on.train_dataset.cache
    assert cache.num_crops.tolist() == [3, 3, 3]
    lefts = {on.train_dataset[(0, seed, 0)]["micro_conds"][3].item() for seed in range(40)}
    assert 1 < len(lefts) <= 3


def test_text_is_not_cached_while_the_text_encoder_trains(tmp_path, toy_dataset):
    datamodule = connected(HFDataset(str(toy_dataset)), text_encoder_trains=True, resolution=32,
                           cache_dir=str(tmp_path))
    datamodule.setup("fit")
    sample = datamodule.train_dataset[(0, 0, 0)]
    assert "image_tokens" in sample and "input_ids" in sample and "encoder_hidden_states" not in sample


def test_cached_samples_equal_live_encoding(tmp_path, toy_dataset, tiny):
    from amused_lightning.model.encoding import encode_image_tokens, encode_prompts

    cached = connected(HFDataset(str(toy_dataset)), resolution=32, cache_dir=str(tmp_path), center_crop=True)
    live = connected(HFDataset(str(toy_dataset)), resolution=32, cache="off", center_crop=True)
    for datamodule in (cached, live):
        datamodule.setup("fit")
    for index in range(3):
        from_cache, from_pixels = cached.train_dataset[(index, 5, index)], live.train_dataset[(index, 5, index)]
        tokens = encode_image_tokens(tiny.vqvae, from_pixels["pixel_values"][None])[0]
        assert torch.equal(from_cache["image_tokens"], tokens)
        assert torch.equal(from_cache["micro_conds"], from_pixels["micro_conds"])
        hidden, pooled = encode_prompts(tiny.text_encoder, from_pixels["input_ids"][None])
        assert torch.allclose(from_cache["encoder_hidden_states"], hidden[0], atol=1e-5)
        assert torch.allclose(from_cache["pooled_text_emb"], pooled[0], atol=1e-5)


def test_training_from_cache_matches_training_from_pixels(tmp_path, toy_dataset):
    common = ("--trainer.max_steps", "4", "--data.center_crop", "true", "--validation_steps", "2")
    from_cache = fit(tmp_path / "cache", toy_dataset, "--data.cache", "on", *common)
    from_pixels = fit(tmp_path / "pixels", toy_dataset, "--data.cache", "off", *common)
    assert type(from_cache.datamodule.train_dataset).__name__ == "CachedDataset"
    assert type(from_pixels.datamodule.train_dataset).__name__ == "PixelDataset"
    for tag in ("train/loss", "val/loss"):
        ours, theirs = scalars(tmp_path / "cache", tag), scalars(tmp_path / "pixels", tag)
        assert [s for s, _ in ours] == [s for s, _ in theirs]
        assert all(abs(a - b) < 1e-4 for (_, a), (_, b) in zip(ours, theirs)), tag
    a, b = transformer_weights(from_cache), transformer_weights(from_pixels)
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4


@pytest.mark.parametrize("cache", ["on", "off"])
def test_worker_processes_load_both_kinds_of_samples(tmp_path, toy_dataset, cache):
    import pickle

    datamodule = connected(HFDataset(str(toy_dataset)), resolution=32, batch_size=4, num_workers=2, cache=cache,
                           cache_dir=str(tmp_path))
    datamodule.setup("fit")
    if cache == "on":
        assert len(pickle.dumps(datamodule.train_dataset.cache)) < 1000, "workers get the folder, not the arrays"
    batches = list(datamodule.train_dataloader())
    assert sum(len(batch["micro_conds"]) for batch in batches) == len(datamodule.train_dataset)


def test_no_held_out_cache_is_encoded_when_validation_is_off(tmp_path, toy_dataset, counting_encoders):
    fit(tmp_path / "run", toy_dataset, "--trainer.max_steps", "1", "--trainer.limit_val_batches", "0",
        "--data.cache_dir", str(tmp_path / "cache"))
    assert len(counting_encoders) == 1 and len(cache_folders(tmp_path / "cache")) == 1, "the training rows only"
