import pytest
import yaml

from amused_lightning.cli import cli_main
from amused_lightning.components import load_components
from amused_lightning.decoding import GenerationSettings, generate_images
from amused_lightning.image_metrics import ToyWorldScore

from helpers import scalars


@pytest.mark.slow
def test_a_short_quickstart_lowers_the_loss_and_raises_the_held_back_score(tmp_path, monkeypatch):
    from make_toy_dataset import build

    monkeypatch.chdir(tmp_path)
    build(tmp_path / "data" / "toy-teal-crown", num_images=72, size=64, seed=0, world="finetune", prior_images=72)
    config = __file__.rsplit("/tests/", 1)[0] + "/configs/quickstart.yaml"
    validation = yaml.safe_load(open(config))["model"]["validation"]
    prompts, generation = validation["prompts"][:4], GenerationSettings(**validation["generation"])
    toy = load_components("toy")
    images = generate_images(toy.transformer, toy.vqvae, toy.text_encoder, toy.tokenizer, prompts, generation, 0,
                             None, toy.transformer.config.vocab_size - 1)
    before = ToyWorldScore()(prompts, images)["toy_held_back"]
    cli_main(["fit", "--config", config, "--trainer.enable_progress_bar", "false", "--trainer.max_steps", "40",
              "--validation_steps", "40", "--export.enabled", "false"])
    losses = [value for _, value in scalars(tmp_path / "runs" / "quickstart", "train/loss")]
    assert len(losses) == 40 and sum(losses[-10:]) < sum(losses[:10]), losses
    after = scalars(tmp_path / "runs" / "quickstart", "val/toy_held_back")[-1][1]
    assert after >= before + 0.3, (before, after)
