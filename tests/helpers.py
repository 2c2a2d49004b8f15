"""Helpers shared by the tests: an in-process `fit` on the tiny preset, a connected DataModule, TensorBoard readers."""

from __future__ import annotations

import os
import subprocess
import sys
from functools import cache
from pathlib import Path

import lightning as L
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from amused_lightning.__main__ import main
from amused_lightning.commands.fit import AmusedCLI, cli_main
from amused_lightning.data import AmusedDataModule
from amused_lightning.data.sources.base import DataSource
from amused_lightning.model.components import components_identity, load_components
from amused_lightning.model.encoding import FrozenEncoders
from amused_lightning.training.optim import parameter_groups


def fit(root: Path, dataset: Path, *extra: str) -> AmusedCLI:
    """Run `fit` on the tiny preset at 32 px, batch 4, in-process; returns the CLI object."""
    return cli_main([
        "fit", "--trainer.default_root_dir", str(root), "--trainer.accelerator", "cpu", "--trainer.devices", "1",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--model.pretrained", "tiny", "--data.source", "HFDataset", "--data.source.path", str(dataset),
        "--data.resolution", "32", "--data.batch_size", "4", *extra,
    ])


@cache
def tiny_encoders(seed: int = 0, text_encoder_trains: bool = False) -> FrozenEncoders:
    """The `tiny` preset's tokenizer and frozen encoders drawn from `seed`, as `AmusedModule.frozen_encoders` gives."""
    parts = load_components("tiny", seed=seed)
    return FrozenEncoders(parts.tokenizer, parts.vqvae, parts.text_encoder,
                          components_identity("tiny", None, None, seed), text_encoder_trains)


def connected(source: DataSource, text_encoder_trains: bool = False, **settings) -> AmusedDataModule:
    """A DataModule on `source` with `settings`, connected to the `tiny` encoders of its seed."""
    datamodule = AmusedDataModule(source, **settings)
    datamodule.connect(tiny_encoders(settings.get("seed", 0), text_encoder_trains))
    return datamodule


REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


def recipe_configs(recipe: str) -> list[str]:
    """The `--config` arguments of the command a recipe's header gives (its base, then itself), as absolute paths."""
    header = (CONFIGS / f"{recipe}.yaml").read_text().split("\n")
    command = next(line for line in header if "python -m amused_lightning fit --config" in line).split()
    paths = [command[i + 1] for i, word in enumerate(command) if word == "--config"]
    assert paths[-1] == f"configs/{recipe}.yaml", f"{recipe}'s header command does not end with the recipe itself"
    return [arg for path in paths for arg in ("--config", str(CONFIGS.parent / path))]


def two_layer_net(width: int = 8, device: str = "cpu") -> torch.nn.Sequential:
    """Linear, LayerNorm, Linear; the same weights on every call. Width 1500 gives one tensor bitsandbytes keeps in
    8 bits (over its 4096-element threshold)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, width), torch.nn.LayerNorm(width), torch.nn.Linear(width, 3))
    return net.to(device)


def train_two_layer_net(optimizer_class, steps: int = 4, width: int = 8, device: str = "cpu", **kwargs):
    """`steps` optimizer steps on random inputs with decay groups and a decaying LR; returns (net, optimizer)."""
    net = two_layer_net(width, device)
    optimizer = optimizer_class(parameter_groups([net]), lr=0.05, weight_decay=0.1, **kwargs)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step))
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        optimizer.zero_grad()
        net(torch.randn(5, 6, generator=generator).to(device)).square().mean().backward()
        optimizer.step()
        schedule.step()
    return net, optimizer


def transformer_weights(cli: AmusedCLI) -> dict:
    return {k: v.clone() for k, v in cli.model.model.transformer.state_dict().items()}


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


class SignalAt(L.Callback):
    """Sends `signum` to its own process at the end of training micro-batch `batch` (counted from 0): a signal at a
    chosen point, for subprocess runs; with `rank`, only in the process of that global rank."""

    def __init__(self, signum: int = 15, batch: int = 0, rank: int | None = None):
        self.signum, self.batch, self.rank, self.seen = signum, batch, rank, 0

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        if self.seen == self.batch and self.rank in (None, trainer.global_rank):
            os.kill(os.getpid(), self.signum)
        self.seen += 1


def fails_with(capsys, *argv: str) -> str:
    """Runs the command in-process, checks it ends as a user mistake (exit 2, one line), returns that line."""
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and err and err[-1].startswith("error: ")
    assert not any("Traceback" in line for line in err)
    return err[-1]


def tiny_fit(root: Path, dataset: Path, *extra: str) -> list[str]:
    """`fit` arguments for the tiny preset at 32 px."""
    return ["fit", "--trainer.default_root_dir", str(root), "--trainer.accelerator", "cpu", "--model.pretrained",
            "tiny", "--data.source", "HFDataset", "--data.source.path", str(dataset), "--data.resolution", "32",
            "--data.batch_size", "4", "--trainer.enable_model_summary", "false", *extra]


def transformer_inputs(seed=0):
    generator = torch.Generator().manual_seed(seed)
    return dict(input_ids=torch.randint(0, 65, (2, 16, 16), generator=generator),
                encoder_hidden_states=torch.randn(2, 77, 32, generator=generator),
                pooled_text_emb=torch.randn(2, 32, generator=generator),
                micro_conds=torch.tensor([[64.0, 64, 0, 0, 6]] * 2))


STEPS = "8"
# Batch 2, accumulation 2: 6 micro-batches an epoch, 3 optimizer steps; no validation, to keep it quick.
COMMON = ("--trainer.max_steps", STEPS, "--data.batch_size", "2", "--trainer.accumulate_grad_batches", "2",
          "--trainer.limit_val_batches", "0", "--model.objective.cond_dropout_prob", "0.3",
          "--checkpoint.every_n_train_steps", "1")


def start_fit(root: Path, dataset: Path, *extra: str) -> subprocess.Popen:
    """`python -m amused_lightning fit` on the tiny preset in its own session (as a terminal's job is)."""
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}", "HF_HUB_OFFLINE": "1"}
    argv = [sys.executable, "-m", "amused_lightning", *tiny_fit(root, dataset, *COMMON, *extra)]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
