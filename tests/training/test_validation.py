
import pytest
import torch

from amused_lightning.callbacks.ema import find_ema
from amused_lightning.commands.fit import cli_main
from amused_lightning.training.validation import held_out_mask

from helpers import REPO, fit, image_steps, scalars

QUICKSTART = REPO / "configs" / "quickstart.yaml"
PROMPTS = '["a pixel art character with square red glasses", "a pixel art character"]'


def test_held_out_masks_are_fixed_and_exact():
    positions = torch.tensor([0, 5, 9])
    first = held_out_mask(positions, 64, 0.5, 1, seed=3)
    assert torch.equal(first, held_out_mask(positions, 64, 0.5, 1, seed=3))
    assert first.sum(dim=1).tolist() == [32, 32, 32]
    assert not torch.equal(first[0], first[1])
    assert not torch.equal(first, held_out_mask(positions, 64, 0.5, 2, seed=3))


def test_fit_writes_validation_images_and_scores(tmp_path, toy_dataset):
    fit(tmp_path, toy_dataset, "--trainer.max_steps", "3", "--validation_steps", "2",
        "--model.validation.prompts", PROMPTS, "--model.validation.generation.num_inference_steps", "2")
    assert sorted(p.name for p in (tmp_path / "validation").glob("*.png")) == ["step=000002.png", "step=000003.png"]
    assert "1: a pixel art character\n" in (tmp_path / "validation" / "prompts.txt").read_text()
    assert image_steps(tmp_path) == {"val_images/00 a pixel art character with square red glasses": [2, 3],
                                     "val_images/01 a pixel art character": [2, 3]}
    for ratio in (25, 50, 75, 100):
        assert [step for step, _ in scalars(tmp_path, f"val/loss_mask{ratio}")] == [2, 3]
    overall = scalars(tmp_path, "val/loss")
    per_ratio = [scalars(tmp_path, f"val/loss_mask{r}")[0][1] for r in (25, 50, 75, 100)]
    assert overall[0][1] == pytest.approx(sum(per_ratio) / 4, rel=1e-5)


def test_held_out_loss_is_deterministic_and_uses_ema(tmp_path, toy_dataset):
    cli = fit(tmp_path, toy_dataset, "--trainer.max_steps", "2", "--validation_steps", "100",
              "--ema.enabled", "true", "--ema.decay", "0.5")
    def validate():
        cli.trainer.validate(cli.model, datamodule=cli.datamodule, verbose=False)
        return {key: value.item() for key, value in cli.trainer.callback_metrics.items() if key.startswith("val/")}

    first, second = validate(), validate()
    assert len(first) == 11 and first == second and "val/context_gain" in first
    weights = {k: v.clone() for k, v in cli.model.state_dict().items()}
    cli.trainer.callbacks.remove(find_ema(cli.trainer))  # the same weights without the average
    raw = validate()
    assert raw["val/loss"] != first["val/loss"], "validation must have used the EMA weights"
    assert all(torch.equal(v, cli.model.state_dict()[k]) for k, v in weights.items()), "weights restored"


@pytest.mark.slow
def test_held_out_loss_falls_on_quickstart_data(tmp_path):
    from make_toy_dataset import build

    build(tmp_path / "toy", num_images=40, size=64, seed=0)
    # The quickstart's settings on the random-weight `tiny` preset, fully trained: a loss with far to fall.
    cli = cli_main(["--config", str(QUICKSTART), "--data.source.path", str(tmp_path / "toy"),
                    "--model.pretrained", "tiny", "--model.lora", "null", "--export.merge_lora", "false",
                    "--model.image_metrics", "[]", "--data.val_samples", "32",
                    "--trainer.default_root_dir", str(tmp_path / "run"), "--trainer.max_steps", "200",
                    "--trainer.enable_progress_bar", "false", "--validation_steps", "100"], run=False)
    cli.datamodule.connect(cli.model.model.frozen_encoders())  # what `fit` does before training
    cli.trainer.validate(cli.model, datamodule=cli.datamodule, verbose=False)
    before = cli.trainer.callback_metrics["val/loss"].item()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    losses = [value for _, value in scalars(tmp_path / "run", "val/loss")]
    assert len(losses) == 3 and losses[-1] < losses[1] < before - 1.0, (before, losses)


def test_context_gain_is_the_accuracy_with_fewest_masked_minus_with_most():
    from torchmetrics import MeanMetric

    from amused_lightning.training.validation import context_warning, held_out_scores

    ratios, accuracies = [0.25, 0.5, 1.0], [0.9, 0.7, 0.4]
    losses, hits = [MeanMetric() for _ in ratios], [MeanMetric() for _ in ratios]
    for loss, hit, accuracy in zip(losses, hits, accuracies):
        loss.update(torch.tensor([1.0]))
        hit.update(torch.tensor([accuracy]))
    scores = held_out_scores(ratios, losses, hits)
    assert scores["val/context_gain"].item() == pytest.approx(0.5)
    assert context_warning(0.5, 100) is None and context_warning(-0.01, 0) is None
    assert "no better when shown more of the image" in context_warning(-0.01, 100)
    one = MeanMetric()
    one.update(torch.tensor([1.0]))
    assert "val/context_gain" not in held_out_scores([1.0], [one], [one.clone()])
