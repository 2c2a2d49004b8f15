"""Helpers shared by the tests: an in-process `fit` on the tiny preset and TensorBoard readers."""

from __future__ import annotations

from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from amused_lightning.cli import AmusedCLI, cli_main


def fit(root: Path, dataset: Path, *extra: str) -> AmusedCLI:
    """Run `fit` on the tiny preset at 32 px, batch 4, in-process; returns the CLI object."""
    return cli_main([
        "fit", "--trainer.default_root_dir", str(root), "--trainer.accelerator", "cpu", "--trainer.devices", "1",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--model.pretrained", "tiny", "--data.dataset", str(dataset), "--data.resolution", "32",
        "--data.batch_size", "4", *extra,
    ])


def transformer_weights(cli: AmusedCLI) -> dict:
    return {k: v.clone() for k, v in cli.model.transformer.state_dict().items()}


def _accumulators(root: Path):
    for events in sorted(root.rglob("events.out.tfevents*")):
        accumulator = EventAccumulator(str(events), size_guidance={"images": 0})
        accumulator.Reload()
        yield accumulator


def scalars(root: Path, tag: str) -> list[tuple[int, float]]:
    """(step, value) of a scalar across every event file under `root`, in step order."""
    values = []
    for accumulator in _accumulators(root):
        if tag in accumulator.Tags()["scalars"]:
            values += [(e.step, e.value) for e in accumulator.Scalars(tag)]
    return sorted(values)


def image_steps(root: Path) -> dict[str, list[int]]:
    """Steps at which each image tag was written, across every event file under `root`."""
    steps: dict[str, list[int]] = {}
    for accumulator in _accumulators(root):
        for tag in accumulator.Tags()["images"]:
            steps.setdefault(tag, []).extend(e.step for e in accumulator.Images(tag))
    return {tag: sorted(values) for tag, values in steps.items()}
