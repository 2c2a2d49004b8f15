"""Memory and speed of every row of the seed recipes' memory tables, on the real architectures.

    python scripts/benchmark.py gpu [--rows nouns-full-8x1 ...] [--steps 4] [--output BENCHMARKS.md]
    python scripts/benchmark.py cpu [--presets tiny amused-256-arch] [--steps 3]

Models are the `amused-256-arch` / `amused-512-arch` presets (random weights, exact architectures); data are synthetic
batches in the form the trainer sees them: pre-encoded (the default when crops are fixed, as for square datasets)
or pixels and prompt ids (VQ and CLIP encoding every step, as the reference does). `gpu` runs each row for a few
optimizer steps with the recipe's settings and reports peak CUDA memory, samples per second and model FLOPs
utilisation; `cpu` times small presets with and without the pre-encoded cache.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import gc
import platform
import tempfile
import time
from dataclasses import dataclass

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import DataLoader, Dataset

from amused_lightning.callbacks.guard import NonFiniteGuard
from amused_lightning.callbacks.placement import FrozenPlacement
from amused_lightning.callbacks.throughput import Throughput
from amused_lightning.callbacks.validation_images import validation_pixels
from amused_lightning.data.batch import IMAGE_TOKENS, INPUT_IDS, MICRO_CONDS, PIXEL_VALUES, PROMPT_HIDDEN, PROMPT_POOLED
from amused_lightning.model.adapters import LoraSettings
from amused_lightning.model.device_peaks import TFLOPS, dtype_key, resolve_peak, tf32_enabled
from amused_lightning.model.encoding import pixels_per_token
from amused_lightning.model.flops import text_encode_flops, transformer_training_flops, vq_encode_flops
from amused_lightning.progress import StepProgress
from amused_lightning.training.module import AmusedModule
from amused_lightning.training.offload import OffloadedAdamW, OffloadedAdamW8bit
from amused_lightning.training.settings import LRScheduleSettings, MemorySettings, ValidationSettings

GB = 1e9  # the seed tables' unit; ours are reported in the same unit


@dataclass(frozen=True)
class Row:
    """One row of a seed memory table."""

    name: str
    preset: str
    resolution: int
    mode: str  # full, 8bit or lora
    batch: int
    accumulation: int
    seed_gb: float | None
    checkpointing: bool = True
    lora_alpha: float = 32.0
    precision: str = "16-mixed"
    compile: bool = False
    fused: bool = True
    """AdamW as one fused kernel (on CUDA) rather than foreach."""
    per_step_work: bool = False
    """Also the per-step work of our fit: the non-finite guard, throughput, progress and TensorBoard every step."""


def seed_rows() -> list[Row]:
    """The seed document's tables (nouns at 256, minecraft at 512, StyleDrop), plus the MFU target row."""
    rows = []
    tables = {
        ("nouns", "amused-256-arch", 256): {"full": [(8, 1, 19.7), (4, 2, 18.3), (1, 8, 17.9)],
                                       "8bit": [(16, 1, 20.1), (8, 2, 15.6), (1, 16, 10.7)],
                                       "lora": [(16, 1, 14.1), (8, 2, 10.1), (1, 16, 6.5)]},
        ("minecraft", "amused-512-arch", 512): {"full": [(8, 1, 24.2), (4, 2, 19.7), (1, 8, 16.99)],
                                           "8bit": [(8, 1, 21.2), (4, 2, 13.3), (1, 8, 9.9)],
                                           "lora": [(8, 1, 12.7), (4, 2, 9.0), (1, 8, 5.6)]},
    }
    for (data, preset, resolution), modes in tables.items():
        for mode, entries in modes.items():
            rows += [Row(f"{data}-{mode}-{b}x{a}", preset, resolution, mode, b, a, gb) for b, a, gb in entries]
    rows.append(Row("styledrop-256-1x1", "amused-256-arch", 256, "lora", 1, 1, 6.5, checkpointing=False))
    rows.append(Row("styledrop-512-1x1", "amused-512-arch", 512, "lora", 1, 1, 5.6, checkpointing=False,
                    lora_alpha=1.0))
    rows.append(Row("mfu-target-256-full-16x1-bf16", "amused-256-arch", 256, "full", 16, 1, None,
                    checkpointing=False, precision="bf16-mixed"))
    return rows


def select_rows(names: list[str] | None) -> list[Row]:
    """The seed rows named in `names` (all when none are), refusing a name that is no row."""
    rows = seed_rows()
    unknown = sorted(set(names or []) - {row.name for row in rows})
    if unknown:
        raise ValueError(f"--rows: no seed row is named {', '.join(unknown)}; rows: {', '.join(r.name for r in rows)}")
    return [row for row in rows if not names or row.name in names]


class SyntheticBatches(Dataset):
    """Random samples shaped like pre-encoded cache entries, or like pixels with prompt token ids."""

    def __init__(self, module: AmusedModule, resolution: int, length: int, pre_encoded: bool):
        self.length, self.pre_encoded, self.resolution = length, pre_encoded, resolution
        self.codes = module.model.vqvae.config.num_vq_embeddings
        self.grid = resolution // pixels_per_token(module.model.vqvae.config)
        self.width = module.model.text_encoder.config.hidden_size
        self.projection = module.model.text_encoder.config.projection_dim
        self.vocab = len(module.model.tokenizer)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(index)
        sample = {MICRO_CONDS: torch.tensor([self.resolution, self.resolution, 0.0, 0.0, 6.0])}
        if self.pre_encoded:
            sample[IMAGE_TOKENS] = torch.randint(0, self.codes, (self.grid, self.grid), generator=generator)
            sample[PROMPT_HIDDEN] = torch.randn(77, self.width, generator=generator)
            sample[PROMPT_POOLED] = torch.randn(self.projection, generator=generator)
        else:
            sample[PIXEL_VALUES] = torch.rand(3, self.resolution, self.resolution, generator=generator)
            sample[INPUT_IDS] = torch.randint(0, self.vocab, (77,), generator=generator)
        return sample


class StepTimer(L.Callback):
    """Wall time of the optimizer steps after `warmup` of them, the peak memory of all training steps, and the peak
    of sampling the validation images right after the last step (read before the fit's end moves the module to the
    host)."""

    def __init__(self, warmup: int):
        self.warmup, self.start, self.end, self.peak, self.validation_peak = warmup, None, None, None, None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup and self.start is None:
            _synchronize()
            self.start = time.perf_counter()
        if trainer.global_step == trainer.max_steps and self.end is None:
            _synchronize()
            self.end = time.perf_counter()
            if torch.cuda.is_available():
                self.peak = (torch.cuda.max_memory_allocated() / GB, torch.cuda.max_memory_reserved() / GB)
                self.validation_peak = validation_peak(pl_module, trainer)


def _synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def build_module(row: Row, offload_optimizer: bool = False) -> AmusedModule:
    """The row's model with our defaults (masked head, offloading, frozen weights in the compute dtype)."""
    lora = LoraSettings(r=16, alpha=row.lora_alpha) if row.mode == "lora" else None
    if row.mode == "8bit":
        import bitsandbytes

        optimizer_class = OffloadedAdamW8bit if offload_optimizer else bitsandbytes.optim.AdamW8bit
        optimizer = functools.partial(optimizer_class, lr=1e-5)
    elif row.mode == "full" and offload_optimizer:
        optimizer = functools.partial(OffloadedAdamW, lr=1e-5)
    else:
        optimizer = functools.partial(torch.optim.AdamW, lr=1e-5, fused=row.fused and torch.cuda.is_available())
    return AmusedModule(pretrained=row.preset, optimizer=optimizer, lora=lora,
                        memory=MemorySettings(gradient_checkpointing=row.checkpointing, compile=row.compile),
                        lr_schedule=LRScheduleSettings(warmup_steps=0),
                        validation=ValidationSettings(["a pixel art character"] * validation_prompt_count(row)))


def model_flops_per_sample(module: AmusedModule, row: Row, pre_encoded: bool) -> float:
    """Model FLOPs of one training sample (model/flops.py): the transformer's forward and backward, plus the frozen
    encoders' forward when batches are not pre-encoded."""
    model = module.model
    grid = row.resolution // model.pixels_per_token
    flops = transformer_training_flops(model.transformer, grid, grid)
    if not pre_encoded:
        flops += vq_encode_flops(model.vqvae, row.resolution, row.resolution) + text_encode_flops(model.text_encoder)
    return flops


def validation_prompt_count(row: Row) -> int:
    """How many validation prompts the row's recipe samples (the seed's commands)."""
    return 4 if row.name.startswith("styledrop") else 8 if row.resolution == 256 else 5


def validation_peak(module: AmusedModule, trainer: L.Trainer) -> float:
    """Peak reserved memory while the module samples its validation images as a fit's validation does."""
    torch.cuda.reset_peak_memory_stats()
    with trainer.precision_plugin.forward_context():
        validation_pixels(module)
    return torch.cuda.max_memory_reserved() / GB


def run_row(row: Row, steps: int, warmup: int, pre_encoded: bool, accelerator: str,
            offload_optimizer: bool = False) -> dict:
    """Train the row for warmup + steps optimizer steps; its peak memory, throughput and MFU."""
    module = build_module(row, offload_optimizer)
    samples = row.batch * row.accumulation * (warmup + steps)
    loader = DataLoader(SyntheticBatches(module, row.resolution, samples, pre_encoded), batch_size=row.batch,
                        pin_memory=accelerator == "gpu")  # synthetic batches are cheap: no worker forks
    timer = StepTimer(warmup)
    work = [NonFiniteGuard(), Throughput(), StepProgress()] if row.per_step_work else []
    logger = TensorBoardLogger(tempfile.mkdtemp()) if row.per_step_work else False
    trainer = L.Trainer(accelerator=accelerator, devices=1, precision=row.precision if accelerator == "gpu" else "32",
                        max_steps=warmup + steps, accumulate_grad_batches=row.accumulation, logger=logger,
                        enable_checkpointing=False, limit_val_batches=0, enable_progress_bar=row.per_step_work,
                        enable_model_summary=False, log_every_n_steps=1,
                        # the timer last: the clock starts after the others' first-step work
                        callbacks=[FrozenPlacement(), *work, timer])
    if accelerator == "gpu":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    trainer.fit(module, loader)
    result = {"samples_per_s": row.batch * row.accumulation * steps / (timer.end - timer.start)}
    if accelerator == "gpu":
        result["allocated_gb"], result["reserved_gb"] = timer.peak
        result["validation_gb"] = timer.validation_peak
        peak, _ = resolve_peak(None, dtype_key(row.precision, tf32_enabled()), torch.device("cuda"), "peak")
        flops = model_flops_per_sample(module, row, pre_encoded)
        result["mfu"] = flops * result["samples_per_s"] / (peak * TFLOPS) if peak else None
    del trainer, module, loader
    gc.collect()  # the trainer and module reference each other: free the model before the next row builds one
    return result


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.0f}%"


def gpu_table(rows: list[Row], steps: int, warmup: int, pre_encoded: bool, offload_optimizer: bool) -> str:
    """Markdown table of the GPU rows."""
    lines = ["| row | seed GB | training: peak allocated GB | peak reserved GB | reserved / seed | "
             "validation images: peak reserved GB | samples/s | MFU |", "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        r = run_row(row, steps, warmup, pre_encoded, "gpu", offload_optimizer)
        ratio = f"{r['reserved_gb'] / row.seed_gb:.2f}" if row.seed_gb else "n/a"
        lines.append(f"| {row.name} | {row.seed_gb or 'n/a'} | {r['allocated_gb']:.2f} | {r['reserved_gb']:.2f} | "
                     f"{ratio} | {r['validation_gb']:.2f} | {r['samples_per_s']:.1f} | {_percent(r['mfu'])} |")
        print(lines[-1], flush=True)
    return "\n".join(lines)


def cpu_table(presets: list[str], steps: int, warmup: int) -> str:
    """Markdown table of CPU throughput with and without pre-encoded batches."""
    lines = ["| preset | resolution | batch | pre-encoded samples/s | pixels samples/s | speed-up |",
             "|---|---|---|---|---|---|"]
    for preset in presets:
        batch, resolution = (8, 64) if preset == "tiny" else (1, 512 if "512" in preset else 256)
        row = Row(f"{preset}-cpu", preset, resolution, "full", batch, 1, None, checkpointing=False, precision="32")
        cached = run_row(row, steps, warmup, True, "cpu")["samples_per_s"]
        pixels = run_row(row, steps, warmup, False, "cpu")["samples_per_s"]
        lines.append(f"| {preset} | {resolution} | {batch} | {cached:.2f} | {pixels:.2f} | {cached / pixels:.2f}x |")
        print(lines[-1], flush=True)
    return "\n".join(lines)


def environment() -> str:
    """Where and with what the table was measured."""
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "CPU"
    import diffusers
    import lightning

    return (f"{datetime.date.today()}, {device}, torch {torch.__version__}, lightning {lightning.__version__}, "
            f"diffusers {diffusers.__version__}, {torch.get_num_threads()} CPU threads")


def publish(title: str, table: str, output: str | None) -> None:
    """Print the table under a heading naming its environment; append both to `output` if given."""
    text = f"\n### {title}: {environment()}\n\n{table}\n"
    print(text)
    if output:
        with open(output, "a") as file:
            file.write(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("gpu", "cpu"))
    parser.add_argument("--rows", nargs="*", help="gpu: names of rows to run (default: all)")
    parser.add_argument("--presets", nargs="*", default=["tiny"], help="cpu: presets to time")
    parser.add_argument("--steps", type=int, default=4, help="timed optimizer steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed optimizer steps first")
    parser.add_argument("--pixels", action="store_true", help="gpu: encode pixels and prompts every step")
    parser.add_argument("--offload-optimizer", action="store_true",
                        help="gpu: full-finetuning rows use OffloadedAdamW, 8-bit rows OffloadedAdamW8bit (optimizer "
                             "state and update in host memory)")
    parser.add_argument("--output", help="append the table, with its environment, to this markdown file")
    args = parser.parse_args()
    if args.mode == "gpu":
        try:
            rows = select_rows(args.rows)
        except ValueError as error:
            parser.error(str(error))
        if not torch.cuda.is_available():
            parser.error("gpu mode needs a CUDA device")
        table = gpu_table(rows, args.steps, args.warmup, not args.pixels, args.offload_optimizer)
    else:
        table = cpu_table(args.presets, args.steps, args.warmup)
    publish(args.mode.upper(), table, args.output)


if __name__ == "__main__":
    main()
