import pytest
import yaml

from amused_lightning.commands.fit import cli_main
from amused_lightning.model.amused import AmusedModel
from amused_lightning.model.decoding import GenerationSettings
from amused_lightning.toy.image_metrics import ToyWorldScore
from amused_lightning.toy.world import evaluation_characters

from helpers import scalars


@pytest.mark.slow
def test_a_short_quickstart_lowers_the_loss_and_draws_the_held_back_concept_more_cleanly(tmp_path, monkeypatch):
    from make_toy_dataset import build

    monkeypatch.chdir(tmp_path)
    # Only the new concept, without the quickstart's prior images: the concept shows within a few dozen steps.
    build(tmp_path / "data" / "toy-teal-crown", num_images=72, size=64, seed=0, world="finetune")
    config = __file__.rsplit("/tests/", 1)[0] + "/configs/quickstart.yaml"
    generation = GenerationSettings(**yaml.safe_load(open(config))["model"]["validation"]["generation"])
    # The 32 held-out prompts of the held-back concept: finer-grained than the config's four validation prompts.
    prompts = [c.caption() for c in evaluation_characters("finetune")]
    before = ToyWorldScore()(prompts, AmusedModel.from_pretrained("toy").generate(prompts, generation))
    cli = cli_main(["fit", "--config", config, "--trainer.enable_progress_bar", "false", "--trainer.max_steps", "60",
                    "--trainer.limit_val_batches", "0", "--export.enabled", "false"])
    losses = [value for _, value in scalars(tmp_path / "runs" / "quickstart", "train/loss")]
    assert len(losses) == 60 and sum(losses[-10:]) < sum(losses[:10]), losses
    after = ToyWorldScore()(prompts, cli.model.model.generate(prompts, generation))
    # Measured: cells 0.889 -> 0.965, clean images 0 -> 0.22, held-back attributes drawn 0 -> 0.88 after 60 steps.
    assert after["toy_cells"] >= before["toy_cells"] + 0.04, (before, after)
    assert after["toy_clean"] >= before["toy_clean"] + 0.1, (before, after)
    assert after["toy_held_back"] >= before["toy_held_back"] + 0.5, (before, after)
