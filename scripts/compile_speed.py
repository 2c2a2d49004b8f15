"""What `torch.compile` (`model.memory.compile`) costs and gives on the transformer's training step: the first
compile, the recompile a new token grid (an aspect-ratio bucket) brings, and the steady forward+backward time eager
and compiled, on the same weights and inputs.

    python scripts/compile_speed.py [--pretrained tiny] [--batch 8] [--grids 16x16 12x16] [--steps 5] [--device cpu]
"""

from __future__ import annotations

import argparse
import time

import torch

from amused_lightning.model.components import load_components
from amused_lightning.model.device_peaks import dtype_key

AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_seconds(transformer, batch: int, grid: tuple[int, int], device: torch.device, precision: str) -> float:
    """Wall seconds of one forward and backward of `transformer` on random tokens of `grid`."""
    config = transformer.config
    tokens = torch.randint(0, config.codebook_size, (batch, *grid), device=device)
    hidden = torch.randn(batch, 77, config.encoder_hidden_size, device=device)
    pooled = torch.randn(batch, config.cond_embed_dim, device=device)
    micro_conds = torch.tensor([[grid[1] * 16, grid[0] * 16, 0, 0, 6.0]] * batch, device=device)
    dtype = AUTOCAST.get(dtype_key(precision, False))
    _synchronize(device)
    start = time.perf_counter()
    with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        logits = transformer(tokens, encoder_hidden_states=hidden, pooled_text_emb=pooled, micro_conds=micro_conds)
    logits.float().mean().backward()
    _synchronize(device)
    return time.perf_counter() - start


def steady(transformer, batch: int, grid: tuple[int, int], device: torch.device, precision: str, steps: int) -> float:
    """The fastest of `steps` forward+backward passes."""
    return min(step_seconds(transformer, batch, grid, device, precision) for _ in range(steps))


def compile_costs(pretrained: str, device: torch.device, batch: int, precision: str, steps: int = 3,
                  grids: tuple[tuple[int, int], ...] = ((16, 16), (12, 16))) -> str:
    """One line: first compile and new-grid recompile seconds, steady eager and compiled step seconds."""
    transformer = load_components(pretrained).transformer.to(device).train()
    first_grid, new_grid = grids
    step_seconds(transformer, batch, first_grid, device, precision)  # eager warm-up (allocator, kernels)
    eager = steady(transformer, batch, first_grid, device, precision, steps)
    transformer.compile()
    first = step_seconds(transformer, batch, first_grid, device, precision)
    compiled = steady(transformer, batch, first_grid, device, precision, steps)
    new_first = step_seconds(transformer, batch, new_grid, device, precision)
    new_steady = steady(transformer, batch, new_grid, device, precision, steps)
    return (f"batch {batch}, {precision}: first compile {first - compiled:.1f} s, a new grid "
            f"{new_grid[0]}x{new_grid[1]} {new_first - new_steady:.1f} s; steady forward+backward {eager:.3f} s eager, "
            f"{compiled:.3f} s compiled ({eager / compiled:.2f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pretrained", default="tiny", help="preset or pipeline folder")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--grids", nargs=2, default=["16x16", "12x16"], help="token grids: the first, then a new one")
    parser.add_argument("--steps", type=int, default=5, help="passes whose fastest is the steady time")
    parser.add_argument("--precision", default="32", help="32, bf16-mixed or 16-mixed")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    grids = tuple(tuple(int(side) for side in grid.split("x")) for grid in args.grids)
    print(compile_costs(args.pretrained, torch.device(args.device), args.batch, args.precision, args.steps, grids))


if __name__ == "__main__":
    main()
