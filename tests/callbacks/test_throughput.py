"""The throughput metrics of a short fit, the progress line that shows them, and the peak setting's checks (no timing
is asserted)."""

import re
from collections import deque

import pytest

from amused_lightning.__main__ import main
from amused_lightning.callbacks.throughput import (
    MFU,
    SAMPLES_PER_SEC,
    TFLOPS_KEY,
    Throughput,
    ThroughputSettings,
    speed_text,
    window_rates,
)
from amused_lightning.errors import SettingError

from helpers import fails_with, fit, scalars, tiny_fit


def test_window_rates():
    points = deque([(10.0, 8, 8e12), (12.0, 24, 24e12)])
    assert window_rates(points, world_size=2, peak=16.0) == {SAMPLES_PER_SEC: 16.0, TFLOPS_KEY: 8.0, MFU: 0.5}
    assert MFU not in window_rates(points, world_size=1, peak=None)
    assert window_rates(deque([(1.0, 0, 0), (1.0, 4, 4)]), 1, None) == {}, "no time passed: no rate"


def test_speed_text():
    assert speed_text({SAMPLES_PER_SEC: 123.4, TFLOPS_KEY: 2.0}) == "123 samples/s  2 TFLOP/s"
    assert speed_text({SAMPLES_PER_SEC: 1.234, TFLOPS_KEY: 2.0, MFU: 0.314}) == "1.23 samples/s  31% MFU"
    assert speed_text({}) == ""


def test_settings_are_checked():
    with pytest.raises(SettingError, match="throughput.window=0 must be at least 1 optimizer step"):
        ThroughputSettings(window=0)
    assert ThroughputSettings("a100").peak_tflops == "a100"


def test_a_fit_logs_speed_per_optimizer_step_and_counts_every_sample(tmp_path, toy_dataset):
    cli = fit(tmp_path, toy_dataset, "--trainer.max_steps", "4", "--trainer.limit_val_batches", "0",
              "--trainer.accumulate_grad_batches", "2", "--throughput.window", "2")
    speed = next(c for c in cli.trainer.callbacks if isinstance(c, Throughput))
    # Batches come from the pre-encoded cache: only the transformer's FLOPs are spent (and counted).
    (key, transformer), = speed._counts.items()
    assert key == ("transformer", (8, 8)) and transformer > 0
    # 11 training images in batches of 4, 4, 3: an epoch is two optimizer steps (the last one of a single batch), so
    # 4 steps see 22 samples.
    assert speed._samples == 22 and speed._flops == 22 * transformer
    loss_steps = [step for step, _ in scalars(tmp_path, "train/loss")]
    for tag in (SAMPLES_PER_SEC, TFLOPS_KEY, MFU):  # from the second step on, at the steps of the loss
        assert [step for step, value in scalars(tmp_path, tag) if value > 0] == loss_steps[1:]
    (_, mfu), (_, tflops) = scalars(tmp_path, MFU)[-1], scalars(tmp_path, TFLOPS_KEY)[-1]
    assert mfu == pytest.approx(tflops / speed.peak, rel=1e-5)


def test_pixel_batches_count_the_encoders_too(tmp_path, toy_dataset):
    cli = fit(tmp_path, toy_dataset, "--trainer.max_steps", "1", "--trainer.limit_val_batches", "0",
              "--data.cache", "off")
    speed = next(c for c in cli.trainer.callbacks if isinstance(c, Throughput))
    assert sorted(speed._counts) == [("text",), ("transformer", (8, 8)), ("vq", (8, 8))]
    assert speed._flops == 4 * sum(speed._counts.values())


def test_the_progress_line_shows_samples_per_second_and_mfu(tmp_path, toy_dataset, capsys):
    main(tiny_fit(tmp_path, toy_dataset, "--trainer.max_steps", "3", "--trainer.limit_val_batches", "0"))
    last = next(line for line in capsys.readouterr().err.splitlines() if line.startswith("step 3/3"))
    pattern = r"step 3/3  loss \d+\.\d{4} \(3-step mean\)  [\d.]+ samples/s  [\d.e+-]+% MFU  [\d.]+ steps/s"
    assert re.fullmatch(pattern, last), last


@pytest.mark.parametrize("value, message", [("-5", "throughput.peak_tflops=-5.0 must be a positive number"),
                                            ("h1000", "throughput.peak_tflops='h1000' is neither a number")])
def test_a_bad_peak_is_one_line_before_training(tmp_path, toy_dataset, capsys, value, message):
    assert message in fails_with(capsys, *tiny_fit(tmp_path, toy_dataset, "--throughput.peak_tflops", value))
    assert not (tmp_path / "checkpoints").exists()
