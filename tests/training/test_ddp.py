"""Two CPU processes (DDP over gloo, launched as users launch them): each optimizer step equals one process's step on
the same global batch, a signal to one process stops both at the same step, the resumed run goes on exactly, and one
set of checkpoints, one export and one TensorBoard run are written."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import REPO, fit, scalars, tiny_fit

STEPS = 4
# Batch 2 per process; flips, conditioning dropout and masks are all drawn, so every random draw is compared.
COMMON = ("--data.batch_size", "2", "--trainer.max_steps", str(STEPS), "--checkpoint.every_n_train_steps", "1",
          "--validation_steps", "2", "--data.val_samples", "2", "--data.random_flip", "true",
          "--model.objective.cond_dropout_prob", "0.3", "--seed_everything", "7")
TWO_PROCESSES = ("--trainer.devices", "2", "--trainer.strategy", "ddp")
# Float sums in another order (gloo's all-reduce against accumulation), through 4 AdamW steps.
TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """8 images: under ten, so none is held out, and the 8 training rows fill 2 whole steps of 2 processes x 2."""
    from make_toy_dataset import build

    folder = tmp_path_factory.mktemp("toy-8")
    build(folder, num_images=8, size=80, seed=1)
    return folder


def ddp_fit(root: Path, dataset: Path, *extra: str) -> subprocess.CompletedProcess:
    """`python -m amused_lightning fit` on 2 CPU processes, in a session of its own; every process of it has ended
    when this returns."""
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}", "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "amused_lightning", *tiny_fit(root, dataset, *COMMON, *TWO_PROCESSES, *extra)]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                               start_new_session=True)
    out, err = process.communicate(timeout=300)
    deadline = time.monotonic() + 30
    while live_members(process.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not live_members(process.pid), "process 1 outlived process 0"
    return subprocess.CompletedProcess(argv, process.returncode, out, err)


def live_members(group: int) -> list[int]:
    """The pids of the processes of a process group that are still running (zombies left out)."""
    live = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (name)": state, ppid, pgrp, ...
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[2]) == group and fields[0] != "Z":
            live.append(int(stat.parent.name))
    return live


def trained(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The trained weights a checkpoint holds."""
    return torch.load(checkpoint, weights_only=True)["state_dict"]


def max_difference(expected: dict[str, torch.Tensor], actual: dict[str, torch.Tensor]) -> float:
    assert expected.keys() == actual.keys()
    return max((expected[k] - actual[k]).abs().max().item() for k in expected)


@pytest.mark.slow
def test_two_processes_step_as_one_accumulating_two_stop_together_and_resume_exactly(tmp_path, dataset):
    # DDP averages the gradients of the processes' losses, each averaged over its own masked tokens: that is
    # accumulation over 2 micro-batches, micro-batch r holding what process r holds (same samples, same draws).
    fit(tmp_path / "one", dataset, *COMMON, "--trainer.accumulate_grad_batches", "2")
    reference = [trained(tmp_path / "one" / "checkpoints" / f"step={n}.ckpt") for n in range(1, STEPS + 1)]
    assert max_difference(reference[0], reference[-1]) > 1e-3, "training moves the weights"

    # SIGTERM to process 1 alone, after optimizer step 1 (mid-epoch: 2 steps an epoch): both stop and save there.
    ddp, checkpoints = tmp_path / "ddp", tmp_path / "ddp" / "checkpoints"
    at = json.dumps({"class_path": "helpers.SignalAt", "init_args": {"signum": int(signal.SIGTERM), "rank": 1}})
    stopped = ddp_fit(ddp, dataset, f"--trainer.callbacks+={at}")
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr
    line = f"stopped: SIGTERM after optimizer step 1: saved {checkpoints / 'last.ckpt'}; continue with --ckpt_path last"
    assert line in stopped.stderr.splitlines() and stopped.stderr.count("stopped:") == 1, stopped.stderr
    assert sorted(p.name for p in checkpoints.iterdir()) == ["last.ckpt", "step=1.ckpt"]
    assert max_difference(reference[0], trained(checkpoints / "step=1.ckpt")) <= TOLERANCE

    resumed = ddp_fit(ddp, dataset, "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr
    for step, expected in enumerate(reference, start=1):
        assert max_difference(expected, trained(checkpoints / f"step={step}.ckpt")) <= TOLERANCE, step
    final = trained(checkpoints / "last.ckpt")
    assert max_difference(reference[-1], final) <= TOLERANCE

    # One of everything: no second version, event file, export or -v1 checkpoint from process 1.
    assert sorted(p.name for p in ddp.iterdir()) == ["checkpoints", "export", "lightning_logs", "run.lock"]
    names = ["last.ckpt", *(f"step={n}.ckpt" for n in range(1, STEPS + 1))]
    assert sorted(p.name for p in checkpoints.iterdir()) == names
    assert [p.name for p in (ddp / "lightning_logs").iterdir()] == ["version_0"]
    assert len(list(ddp.rglob("events.out.tfevents*"))) == 2, "one event file per start, both from process 0"
    assert [step for step, _ in scalars(ddp, "train/loss")] == list(range(STEPS))
    exported = load_file(ddp / "export" / "transformer" / "diffusion_pytorch_model.safetensors")
    assert max_difference({f"transformer.{k}": v for k, v in exported.items()}, final) == 0
    assert resumed.stderr.count("exported trained weights") == 1, resumed.stderr
