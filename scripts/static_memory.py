"""The device memory every training step of a seed row holds whatever its batch, measured on CPU.

    python scripts/static_memory.py [--rows nouns-full-8x1 ...] [--offload-optimizer] [--pixels] [--output FILE]

Each row's model and optimizer are built as `benchmark.py gpu` builds them. The script then does what the trainer
does when a fit starts on one GPU under the row's precision (frozen Linear/Conv2d weights cast to the autocast dtype;
the frozen parts a pre-encoded step never runs moved off the device), gives every trained weight a zero gradient and
takes one optimizer step so that the optimizer's state exists, and counts the bytes of the tensors a GPU would hold:
weights, gradients, optimizer state. No GPU is needed. Activations, cuBLAS workspaces and the allocator's slack are
not counted, so a GPU's peak is higher: the last column is what half the seed figure leaves for them.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from amused_lightning.callbacks.placement import AUTOCAST_DTYPES, cast_frozen_weights, unused_frozen_parts
from amused_lightning.data.batch import IMAGE_TOKENS, INPUT_IDS, MICRO_CONDS, PIXEL_VALUES, PROMPT_HIDDEN, PROMPT_POOLED
from amused_lightning.training.module import AmusedModule
from amused_lightning.training.offload import OffloadedAdamW

from benchmark import GB, Row, build_module, publish, select_rows

PRE_ENCODED_KEYS = (IMAGE_TOKENS, PROMPT_HIDDEN, PROMPT_POOLED, MICRO_CONDS)
PIXEL_KEYS = (PIXEL_VALUES, INPUT_IDS, MICRO_CONDS)


@dataclass(frozen=True)
class StaticMemory:
    """Bytes held on the device through every step, and what the optimizer keeps in host memory."""

    weights: int
    gradients: int
    optimizer: int
    host_optimizer: int

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer


def storage_bytes(tensors: Iterable[torch.Tensor | None]) -> int:
    """Bytes of the distinct storages behind `tensors` (a storage shared by several tensors counts once)."""
    seen, total = set(), 0
    for tensor in tensors:
        if tensor is None or tensor.device.type == "meta":
            continue
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
    return total


def place_as_at_fit_start(module: AmusedModule, precision: str, batch_keys: Iterable[str]) -> list[torch.nn.Module]:
    """Cast frozen layers as FrozenPlacement does in `setup`; the frozen parts it offloads at the first batch."""
    dtype = AUTOCAST_DTYPES.get(precision)
    if dtype is not None:
        cast_frozen_weights(module, dtype)
    model = module.model
    return unused_frozen_parts(model.vqvae, model.text_encoder, model.text_encoder_trains, dict.fromkeys(batch_keys))


def optimizer_state_tensors(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """Every tensor of the optimizer's per-parameter state."""
    return [value for state in optimizer.state.values() for value in state.values() if torch.is_tensor(value)]


def optimizer_params(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """The parameters the optimizer updates."""
    return [param for group in optimizer.param_groups for param in group["params"]]


def measure(module: AmusedModule, precision: str, batch_keys: Iterable[str]) -> StaticMemory:
    """Weights, gradients and optimizer state of `module` after one optimizer step, as placed for training."""
    offloaded = {id(t) for part in place_as_at_fit_start(module, precision, batch_keys)
                 for t in [*part.parameters(), *part.buffers()]}
    resident = [t for t in [*module.parameters(), *module.buffers()] if id(t) not in offloaded]
    optimizer = module.build_optimizer()
    trained = optimizer_params(optimizer)
    for param in trained:
        param.grad = torch.zeros_like(param)
    optimizer.step()
    host = optimizer.host if isinstance(optimizer, OffloadedAdamW) else None
    return StaticMemory(
        weights=storage_bytes(resident),
        gradients=storage_bytes(p.grad for p in trained),
        optimizer=0 if host else storage_bytes(optimizer_state_tensors(optimizer)),
        host_optimizer=storage_bytes([*optimizer_state_tensors(host), *optimizer_params(host)]) if host else 0,
    )


def static_table(rows: list[Row], offload_optimizer: bool, pre_encoded: bool) -> str:
    """Markdown table of each row's static device memory against half its seed figure."""
    lines = ["| row | half the seed GB | weights GB | gradients GB | optimizer state GB | static total GB | "
             "left for activations GB | optimizer in host memory GB |", "|---|---|---|---|---|---|---|---|"]
    measured: dict[tuple, StaticMemory] = {}
    for row in rows:
        key = (row.preset, row.mode, row.precision)  # batch, accumulation and checkpointing change no static byte
        if key not in measured:
            module = build_module(row, offload_optimizer)
            measured[key] = measure(module, row.precision, PRE_ENCODED_KEYS if pre_encoded else PIXEL_KEYS)
            del module
        m = measured[key]
        half = f"{row.seed_gb / 2:.2f}" if row.seed_gb else "n/a"
        left = f"{row.seed_gb / 2 - m.total / GB:.2f}" if row.seed_gb else "n/a"
        lines.append(f"| {row.name} | {half} | {m.weights / GB:.2f} | {m.gradients / GB:.2f} | "
                     f"{m.optimizer / GB:.2f} | {m.total / GB:.2f} | {left} | {m.host_optimizer / GB:.2f} |")
        print(lines[-1], flush=True)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="*", help="names of rows to measure (default: all)")
    parser.add_argument("--offload-optimizer", action="store_true",
                        help="full-finetuning rows use OffloadedAdamW, 8-bit rows OffloadedAdamW8bit (optimizer state "
                             "and update in host memory)")
    parser.add_argument("--pixels", action="store_true", help="batches of pixels and prompts, not pre-encoded")
    parser.add_argument("--output", help="append the table, with its environment, to this markdown file")
    args = parser.parse_args()
    try:
        rows = select_rows(args.rows)
    except ValueError as error:
        parser.error(str(error))
    table = static_table(rows, args.offload_optimizer, not args.pixels)
    publish("Static device memory", table, args.output)


if __name__ == "__main__":
    main()
