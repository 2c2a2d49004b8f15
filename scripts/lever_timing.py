"""CPU time of the levers that cost or save any: VQ decoding one image at a time, and AdamW's step on the host.

    python scripts/lever_timing.py [--images 2] [--resolution 256] [--params 50000000] [--repeats 2]

Decoding uses the real VQ architecture (`amused-256-arch`, random weights). The optimizer timing is AdamW's update
on the CPU for `--params` fp32 weights, per step and extrapolated to the 603 M-parameter transformer, run three ways:
torch's loop over the weights (its default on a CPU, and the reference's), foreach (what OffloadedAdamW runs on the
host, besides its two copies over PCIe), and fused (what `fit` takes unless told otherwise).
"""

from __future__ import annotations

import argparse
import time

import torch

from amused_lightning.model.components import load_components
from amused_lightning.model.decoding import decode_image_tokens

TRANSFORMER_PARAMS = 603_537_664


def best_seconds(run, repeats: int) -> float:
    """The fastest of `repeats` timed calls of `run` (after one untimed warm-up call)."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def decode_timing(images: int, resolution: int, repeats: int) -> tuple[float, float]:
    """Seconds to decode `images` token grids batched, and one at a time."""
    vqvae = load_components("amused-256-arch").vqvae
    tokens = torch.randint(0, 8192, (images, resolution // 16, resolution // 16))
    return (best_seconds(lambda: decode_image_tokens(vqvae, tokens), repeats),
            best_seconds(lambda: decode_image_tokens(vqvae, tokens, 1), repeats))


STEP_KINDS = {"loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def adamw_step_seconds(params: int, repeats: int, kind: str) -> float:
    """Seconds of one AdamW step on the CPU over `params` fp32 weights in 1 M-element tensors, run as `kind`."""
    weights = [torch.zeros(1_000_000, requires_grad=True) for _ in range(params // 1_000_000)]
    for weight in weights:
        weight.grad = torch.zeros_like(weight)
    optimizer = torch.optim.AdamW(weights, **STEP_KINDS[kind])
    return best_seconds(optimizer.step, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--params", type=int, default=50_000_000)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    batched, single = decode_timing(args.images, args.resolution, args.repeats)
    print(f"VQ decode of {args.images} images at {args.resolution} px: batched {batched:.2f} s, one at a time "
          f"{single:.2f} s ({single / batched:.2f}x)")
    for kind in STEP_KINDS:
        step = adamw_step_seconds(args.params, args.repeats, kind)
        print(f"AdamW step ({kind}), {args.params / 1e6:.0f} M params: {step:.3f} s; scaled to the transformer's "
              f"{TRANSFORMER_PARAMS / 1e6:.0f} M: {step * TRANSFORMER_PARAMS / args.params:.2f} s per optimizer step "
              f"({torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
