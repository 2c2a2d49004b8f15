"""SIGTERM and SIGINT save a checkpoint at the step reached, also mid-way through accumulation, and exit non-zero;
a run resumed from it ends with the weights of an unbroken run."""

import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch

from helpers import COMMON, STEPS, fit, start_fit, transformer_weights


@pytest.fixture(scope="module")
def unbroken(tmp_path_factory, toy_dataset):
    """The transformer weights after an unbroken run."""
    return transformer_weights(fit(tmp_path_factory.mktemp("unbroken"), toy_dataset, *COMMON))


def check_resumes_exactly(root: Path, dataset: Path, unbroken: dict) -> None:
    resumed = transformer_weights(fit(root, dataset, *COMMON, "--ckpt_path", "last"))
    assert max((unbroken[k] - resumed[k]).abs().max().item() for k in unbroken) <= 1e-6


def test_sigterm_mid_accumulation_finishes_the_step_saves_and_resumes_exactly(tmp_path, toy_dataset, unbroken):
    # Micro-batch 2 is the first half of optimizer step 2: the step is finished, then saved.
    at = json.dumps({"class_path": "helpers.SignalAt", "init_args": {"signum": int(signal.SIGTERM), "batch": 2}})
    out, err = start_fit(tmp_path, toy_dataset, f"--trainer.callbacks+={at}").communicate(timeout=300)
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert err.strip().splitlines()[-1] == (f"stopped: SIGTERM after optimizer step 2: saved {last}; continue with "
                                            "--ckpt_path last"), err
    assert torch.load(last, weights_only=True)["global_step"] == 2
    assert not (tmp_path / "export").exists()
    check_resumes_exactly(tmp_path, toy_dataset, unbroken)


def test_ctrl_c_saves_the_step_reached_and_resumes_exactly(tmp_path, toy_dataset, unbroken):
    # SIGINT to the whole process group, as a terminal sends it: the data loader's worker must survive it.
    process = start_fit(tmp_path, toy_dataset, "--data.num_workers", "1")
    while not (tmp_path / "checkpoints" / "step=1.ckpt").exists() and process.poll() is None:
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGINT)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 128 + signal.SIGINT, err
    step = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert 1 <= step < int(STEPS) and f"stopped: SIGINT after optimizer step {step}: saved" in err, err
    check_resumes_exactly(tmp_path, toy_dataset, unbroken)
