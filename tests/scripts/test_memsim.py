"""The memory simulation: its tracker against a hand count, and a simulated row on `tiny`.

The fake CUDA runtime must be loaded before torch, so everything on fake CUDA runs in a fresh interpreter. Without
g++ those tests fail with the compiler error: they are the only check that the simulated tables can be rebuilt.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch
from torch import nn

from helpers import REPO
from memsim.tracker import MemoryTracker, rounded


def mlp_hand_count(width: int, hidden: int, batch: int, counters_on_device: bool) -> int:
    """Peak bytes of an AdamW (foreach) step of a width-hidden-width MLP: weights, gradients, both moments and the
    one weight-sized temporary foreach AdamW makes (the square root of the second moment), plus the input batch,
    plus one fp32 step counter per tensor where they live on the tracked device (on the host for CUDA)."""
    tensors = [hidden * width, hidden, width * hidden, width]
    counters = len(tensors) * rounded(4) if counters_on_device else 0
    return 5 * sum(rounded(4 * n) for n in tensors) + rounded(4 * batch * width) + counters



def train_mlp(device: str, width: int, hidden: int, batch: int) -> MemoryTracker:
    """Two AdamW steps of an MLP, everything created under a tracker of `device`."""
    with MemoryTracker(device) as tracker:
        model = nn.Sequential(nn.Linear(width, hidden, device=device), nn.ReLU(),
                              nn.Linear(hidden, width, device=device))
        optimizer = torch.optim.AdamW(model.parameters(), foreach=True)
        x = torch.randn(batch, width, device=device)
        for _ in range(2):
            model(x).pow(2).mean().backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    return tracker


def test_tracker_peak_equals_the_hand_count_to_the_byte():
    tracker = train_mlp("cpu", 256, 1024, 8)
    assert tracker.peak == mlp_hand_count(256, 1024, 8, counters_on_device=True)


def test_tracker_frees_what_is_released():
    with MemoryTracker("cpu") as tracker:
        kept = torch.empty(1000)
        freed = torch.empty(3000)
        del freed
        view = kept[:10]
    assert tracker.current == rounded(4000) and tracker.peak == rounded(4000) + rounded(12000)
    assert view.untyped_storage().nbytes() == 4000


FAKE_CUDA_RUN = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("shim", sys.argv[1])
shim = importlib.util.module_from_spec(spec); spec.loader.exec_module(shim); shim.load_fake_cuda()
import torch
from torch import nn
from memsim.common import SimRow
from memsim.fake import built_on_meta, fake_cuda
from memsim.ours import simulate_ours
from memsim.reference import simulate_reference
torch.set_num_threads(1)
with fake_cuda() as tracker:
    model = built_on_meta(lambda: nn.Sequential(nn.Linear(256, 1024), nn.ReLU(), nn.Linear(1024, 256)))
    model.to_empty(device="cuda")
    optimizer = torch.optim.AdamW(model.parameters(), foreach=True)
    x = torch.randn(8, 256, device="cuda")
    for _ in range(2):
        model(x).pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    mlp = tracker.peak
row = SimRow("tiny-lora-2x2", "tiny", 64, "lora", 2, 2, checkpointing=True, validation_prompts=2)
ours, reference = simulate_ours(row), simulate_reference(row)
print(json.dumps({"mlp": mlp, "ours": [ours.peak, ours.phase], "reference": [reference.peak, reference.phase],
                  "phases": sorted(ours.phase_peaks)}))
"""


def run_on_fake_cuda() -> dict:
    """The fake-CUDA checks in a fresh interpreter (the runtime has to load before torch)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "scripts"),
                                                   os.environ.get("PYTHONPATH", "")])}
    shim = REPO / "scripts" / "memsim" / "shim.py"
    result = subprocess.run([sys.executable, "-c", FAKE_CUDA_RUN, str(shim)], capture_output=True, text=True,
                            env=env, timeout=600)
    assert result.returncode == 0, f"simulation on fake CUDA failed (is g++ installed?):\n{result.stderr[-3000:]}"
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_fake_cuda_mlp_and_a_tiny_row():
    results = run_on_fake_cuda()
    assert results["mlp"] == mlp_hand_count(256, 1024, 8, counters_on_device=False)
    for name in ("ours", "reference"):
        peak, phase = results[name]
        assert peak > 0 and phase in {"fit start", "placement", "batch to device", "forward", "backward",
                                      "optimizer step", "validation sampling", "VQ and CLIP encoding"}
    assert {"forward", "backward", "optimizer step", "validation sampling"} <= set(results["phases"])
