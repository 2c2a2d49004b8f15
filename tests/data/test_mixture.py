"""Several row sources as one (`Mixture`): a YAML config names them, repeats set the epoch, a fit resumes exactly
mid-epoch, and `check-data` reports each source."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
import yaml
from PIL import Image

from amused_lightning.commands.check_data import main as check_data
from amused_lightning.commands.fit import cli_main
from amused_lightning.data import HFDataset, ImageFolder, Mixture
from amused_lightning.data.sources import DataSourceError

from helpers import connected, fit


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """`new`: 6 images captioned "new k" (two of them 48x32); `prior`: 4 images captioned "prior k"."""
    root = tmp_path_factory.mktemp("mixture")
    for name, count in (("new", 6), ("prior", 4)):
        for k in range(count):
            size = (48, 32) if name == "new" and k < 2 else (32, 32)
            (root / name).mkdir(exist_ok=True)
            Image.new("RGB", size, (40 * k, 100 if name == "new" else 0, 0)).save(root / name / f"{k}.png")
            (root / name / f"{k}.txt").write_text(f"{name} {k}\n")
    return root


def mixture_config(folders, tmp_path, repeats, **data) -> str:
    """A config file whose data.source is a Mixture of the two folders with `repeats`."""
    sources = [{"class_path": "ImageFolder", "init_args": {"path": str(folders / name)}} for name in ("new", "prior")]
    config = tmp_path / "mixture.yaml"
    config.write_text(yaml.safe_dump({"model": {"pretrained": "tiny"}, "data": {
        "source": {"class_path": "Mixture", "init_args": {"sources": sources, "repeats": repeats}},
        "resolution": 32, "batch_size": 2, "val_samples": 1, **data}}))
    return str(config)


def test_a_yaml_config_names_a_mixture_of_sources(folders, tmp_path):
    cli = cli_main(["--config", mixture_config(folders, tmp_path, [1, 3]),
                    "--trainer.default_root_dir", str(tmp_path)], run=False)
    source = cli.datamodule.source
    assert isinstance(source, Mixture) and source.repeats == [1, 3]
    assert [type(s) for s in source.sources] == [ImageFolder, ImageFolder] and len(source) == 10
    assert cli.datamodule.hparams["source"]["init_args"]["sources"][1]["init_args"]["path"] == str(folders / "prior")


def test_repeats_set_how_often_an_epoch_draws_each_source(folders):
    mixture = Mixture([ImageFolder(str(folders / "new")), ImageFolder(str(folders / "prior"))], repeats=[1, 3])
    datamodule = connected(mixture, resolution=32, batch_size=2, val_samples=1)
    datamodule.setup("fit")
    held_out = datamodule.pipeline._split.held_out_rows
    assert len(held_out) == 1
    # 10 rows, one held out: the epoch draws each of the others once (new) or three times (prior).
    expected = {row: 1 if row < 6 else 3 for row in range(10) if row not in held_out}
    assert len(datamodule.train_dataset) == sum(expected.values())
    drawn = Counter(datamodule.train_dataset.layout.rows[index] for index, *_ in datamodule.train_dataloader().sampler)
    assert drawn == Counter(expected)


def test_mixture_mistakes_name_the_setting(folders):
    new = ImageFolder(str(folders / "new"))
    with pytest.raises(DataSourceError, match=r"data.source.repeats=\[1\] needs one count per source \(2\)"):
        Mixture([new, new], repeats=[1])
    with pytest.raises(DataSourceError, match=r"data.source.repeats=\[1, 0\] must be whole numbers of 1 or more"):
        Mixture([new, new], repeats=[1, 0])
    assert Mixture([new, HFDataset("unused")]).repeats == [1, 1]


def test_a_fit_on_two_sources_with_buckets_and_the_cache_resumes_exactly(folders, tmp_path):
    # 10 rows, 1 held out, repeats [1, 2]: 12 or 13 draws an epoch in bucketed batches of 2; resumed from step 2.
    config = mixture_config(folders, tmp_path, [1, 2], aspect_buckets={"max_ratio": 2.0}, center_crop=True)
    common = ("--config", config, "--trainer.max_steps", "4", "--checkpoint.every_n_train_steps", "2",
              "--trainer.limit_val_batches", "0", "--export.enabled", "false",
              "--data.cache_dir", str(tmp_path / "cache"))
    straight = fit(tmp_path / "straight", folders, *common)
    assert any((tmp_path / "cache").iterdir()), "every crop is fixed (centre, no flip): the cache is on"
    step_2 = tmp_path / "straight" / "checkpoints" / "step=2.ckpt"
    resumed = fit(tmp_path / "resumed", folders, "--ckpt_path", str(step_2), *common)
    assert torch.load(step_2, weights_only=False)["AmusedDataModule"]["position"] == 4
    expected, actual = (run.model.model.transformer.state_dict() for run in (straight, resumed))
    for key, value in expected.items():
        assert torch.allclose(value, actual[key], atol=1e-6, rtol=0), key


def test_check_data_reports_each_source(folders, tmp_path, capsys):
    check_data(["--config", mixture_config(folders, tmp_path, [1, 3]), "--samples", "0"])
    out = capsys.readouterr().out
    assert f"data.source.sources[0] ImageFolder {str(folders / 'new')!r}: 6 rows, 6 usable, repeats 1" in out
    assert f"data.source.sources[1] ImageFolder {str(folders / 'prior')!r}: 4 rows, 4 usable, repeats 3" in out
