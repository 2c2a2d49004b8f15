import pytest

from amused_lightning.cli import cli_main

from helpers import scalars


@pytest.mark.slow
def test_quickstart_config_trains_with_clearly_falling_loss(tmp_path, monkeypatch):
    from make_toy_dataset import build

    monkeypatch.chdir(tmp_path)
    build(tmp_path / "data" / "toy-nouns", num_images=64, size=128, seed=0)
    config = __file__.rsplit("/tests/", 1)[0] + "/configs/quickstart.yaml"
    cli_main(["fit", "--config", config, "--trainer.enable_progress_bar", "false"])
    losses = [value for _, value in scalars(tmp_path / "runs" / "quickstart", "train/loss")]
    assert len(losses) == 300
    first, last = sum(losses[:20]) / 20, sum(losses[-20:]) / 20
    assert last < 0.6 * first, (first, last)
