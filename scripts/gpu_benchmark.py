"""One GPU call that measures what this project claims on a CUDA device, written as one markdown table.

    bash scripts/gpu_benchmark.sh OUT_DIR                 # on the GPU machine (installs the wheels of .whl/ first)
    python scripts/gpu_benchmark.py --output table.md [--reference PATH] [--budget 450]
    python scripts/gpu_benchmark.py --dry-run             # every stage, tiny, on the CPU: checks the script

Stages, in order; once `--budget` seconds are spent the rest are listed as not run:
1. `pytest -m gpu` (the CUDA-only tests).
2. Every row of the seed's memory tables with our defaults (pre-encoded batches, the recipes' optimizers and
   checkpointing): peak allocated and reserved memory against the seed's figure, samples/s, TFLOP/s and MFU.
3. Full finetuning at 256 px in bf16 without checkpointing: the largest batch that fits, eager and compiled
   (`model.memory.compile`), with the first compile's cost and a new token grid's.
4. The seed's nouns LoRA row (batch 16, fp16, LoRA r 16) through our `fit` and through `train_amused.py` (when
   `--reference` names a copy): steady samples/s of each from the times its optimizer steps end, and their ratio.
5. The levers one at a time (full finetuning, 256 px, batch 32): our per-step work with and without a fused
   optimizer, math attention instead of flash, TF32 off and on in fp32.
6. The training loader alone, by worker count.
Models are the real architectures with random weights, saved once as pipelines; FLOPs come from `model/flops.py`.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import replace
from pathlib import Path

import torch
from compile_speed import compile_costs
from diffusers import UVit2DModel
from loader_speed import loader_rate, make_images
from peft import LoraConfig
from reference_speed import (
    Case,
    our_command,
    reference_command,
    run_side,
    save_pipeline,
    step_seconds,
    write_images,
)
from torch.nn.attention import SDPBackend, sdpa_kernel

from amused_lightning.model.device_peaks import TFLOPS, dtype_key, resolve_peak, tf32_enabled
from amused_lightning.model.flops import transformer_training_flops
from amused_lightning.model.presets import PRESETS

from benchmark import Row, run_row, seed_rows

REPO = Path(__file__).resolve().parents[1]
STAGES = {"tests": "tests", "seeds": "seed_memory_rows", "full": "full_finetuning_at_best_batch",
          "reference": "reference_nouns_lora", "levers": "levers", "loader": "loader"}
# Keyword of each column, as `table_row` takes them.
COLUMNS = {"stage": "stage", "row": "row", "batch": "batch x accumulation", "precision": "precision",
           "allocated": "peak allocated GB", "reserved": "peak reserved GB", "seed": "seed GB",
           "ratio": "reserved / seed", "samples": "samples/s", "tflops": "TFLOP/s", "mfu": "MFU", "note": "note"}


def table_row(**cells) -> str:
    """A markdown row with `cells` (keywords of COLUMNS) under their columns, blanks elsewhere."""
    return "| " + " | ".join(str(cells.get(key, "")) for key in COLUMNS) + " |"


class Budget:
    """Seconds left of the call, for stages to check before they start."""

    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    @property
    def left(self) -> float:
        return self.end - time.monotonic()


def transformer_flops(preset: str, lora: bool, grid: int) -> int:
    """Per-sample FLOPs of a preset's transformer (on the meta device: no weights needed)."""
    with torch.device("meta"):
        transformer = UVit2DModel.from_config(PRESETS[preset]["transformer"])
        if lora:
            transformer.add_adapter(LoraConfig(r=16, lora_alpha=32, target_modules=["to_q", "to_k", "to_v"]))
    return transformer_training_flops(transformer, grid, grid)


def speed_cells(samples_per_s: float, flops: int, precision: str, device: torch.device) -> dict[str, str]:
    """samples/s, TFLOP/s and MFU cells."""
    peak, _ = resolve_peak(None, dtype_key(precision, tf32_enabled()), device, "peak")
    tflops = samples_per_s * flops / TFLOPS
    return {"samples": f"{samples_per_s:.3g}", "tflops": f"{tflops:.3g}",
            "mfu": f"{100 * tflops / peak:.1f}%" if peak else "n/a"}


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class Stages:
    """The stages, sharing the saved pipelines, the device and the budget."""

    def __init__(self, workdir: Path, dry_run: bool, budget: Budget, reference: Path | None):
        self.workdir, self.dry_run, self.budget, self.reference = workdir, dry_run, budget, reference
        self.accelerator = "cpu" if dry_run else "gpu"
        self.device = torch.device("cpu" if dry_run else "cuda")
        self.steps = 1 if dry_run else 3

    def pipeline(self, preset: str) -> str:
        return str(save_pipeline("tiny" if self.dry_run else preset, self.workdir / preset))

    def tests(self) -> list[str]:
        command = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "tests"]
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=max(self.budget.left, 1))
        summary = (done.stdout.strip().splitlines() or ["no output"])[-1]
        return [table_row(stage="pytest -m gpu", row="tests", note=summary)]

    def _measure(self, stage: str, row: Row, grid: int, lora: bool, preset: str, note: str = "") -> str:
        warmup = 2 if row.compile else 1  # a compiled step's second call may still recompile (dynamic shapes)
        result = run_row(replace(row, preset=self.pipeline(preset)), self.steps, warmup, True, self.accelerator)
        memory = {}
        if "allocated_gb" in result:
            memory = {"allocated": f"{result['allocated_gb']:.2f}", "reserved": f"{result['reserved_gb']:.2f}",
                      "ratio": f"{result['reserved_gb'] / row.seed_gb:.2f}" if row.seed_gb else ""}
        flops = transformer_flops("tiny" if self.dry_run else preset, lora, grid)
        return table_row(stage=stage, row=row.name, batch=f"{row.batch} x {row.accumulation}",
                         precision=row.precision, seed=row.seed_gb or "", **memory,
                         **speed_cells(result["samples_per_s"], flops, row.precision, self.device), note=note)

    def seed_memory_rows(self) -> list[str]:
        rows = [row for row in seed_rows() if row.seed_gb is not None]
        if self.dry_run:  # one row per mode, on tiny at 64 px (its 16x16 grid)
            rows = [replace(row, resolution=64, precision="32") for row in rows if row.accumulation == 1][::2]
        lines = []
        for row in rows:
            if self.budget.left < 30:
                lines.append(table_row(stage="seed rows", row=row.name, note="not run: time budget spent"))
                continue
            preset = "amused-256-arch" if row.resolution == 256 else "amused-512-arch"
            lines.append(self._measure("seed rows", row, 16, row.mode == "lora", preset))
            free_memory()
        return lines

    def full_finetuning_at_best_batch(self) -> list[str]:
        batches = [4, 2] if self.dry_run else [192, 128, 96, 64, 48, 32, 16]
        precision = "32" if self.dry_run else "bf16-mixed"
        row = Row("full-256", "amused-256-arch", 64 if self.dry_run else 256, "full", 1, 1, None,
                  checkpointing=False, precision=precision)
        for batch in batches:  # from the largest: the first that fits is the one to measure
            if self.budget.left < 60:
                return [table_row(stage="full 256, best batch", note="not run: time budget spent")]
            try:
                eager = self._measure("full 256, best batch", replace(row, name=f"full-256-{batch}x1", batch=batch),
                                      16, False, "amused-256-arch", "eager, fused AdamW, flash attention")
                break
            except torch.OutOfMemoryError:
                free_memory()
        else:
            return [table_row(stage="full 256, best batch", note=f"no batch of {batches} fits")]
        free_memory()
        lines = [eager]
        if self.budget.left > 150:
            compiled_row = replace(row, name=f"full-256-{batch}x1-compiled", batch=batch, compile=True)
            lines.append(self._measure("full 256, best batch", compiled_row, 16, False, "amused-256-arch",
                                       "torch.compile (model.memory.compile), compiled in the warm-up step"))
            costs = compile_costs(self.pipeline("amused-256-arch"), self.device, batch, precision)
            lines.append(table_row(stage="compile cost", row="transformer fwd+bwd", note=costs))
        else:
            lines.append(table_row(stage="full 256, best batch", note="compiled: not run, time budget spent"))
        free_memory()
        return lines

    def levers(self) -> list[str]:
        """Each speed lever alone, on full finetuning at 256 px, batch 32, eager."""
        base = Row("lever", "amused-256-arch", 64 if self.dry_run else 256, "full", 4 if self.dry_run else 32, 1, None,
                   checkpointing=False, precision="32" if self.dry_run else "bf16-mixed")
        variants = [("bare loop: fused AdamW, default attention (flash)", base, None),
                    ("+ our per-step work: guard (no wait with fused AdamW), throughput, progress, TensorBoard "
                     "every step", replace(base, per_step_work=True), None),
                    ("+ the same with foreach AdamW: the guard waits for the device every step",
                     replace(base, per_step_work=True, fused=False), None),
                    ("math attention instead of flash", base, "math-attention"),
                    ("fp32, TF32 off", replace(base, precision="32"), "tf32-off"),
                    ("fp32, TF32 on", replace(base, precision="32"), "tf32-on")]
        lines = []
        for i, (note, row, setting) in enumerate(variants):
            if self.budget.left < 40:
                lines.append(table_row(stage="levers", note=f"{note}: not run, time budget spent"))
                continue
            with lever(setting):
                lines.append(self._measure("levers", replace(row, name=f"lever-{i}"), 16, False, "amused-256-arch",
                                           note))
            free_memory()
        return lines

    def loader(self) -> list[str]:
        """The training loader alone on images it must decode, resize, crop and tokenize, by worker count."""
        workers, count = ([0, 1], 8) if self.dry_run else ([0, 2, 4, 8], 128)
        folder = make_images(self.workdir / f"loader-images-{count}", count, 256)
        lines = []
        for n in workers:
            rate = loader_rate(folder, 256, 16, n, 2 if self.dry_run else 20, self.workdir / "loader-cache")
            lines.append(table_row(stage="loader only", row=f"num_workers {n}", batch="16 x 1", samples=f"{rate:.0f}",
                                   note="decode, resize, random crop, tokenize; pinned memory"))
        return lines

    def reference_nouns_lora(self) -> list[str]:
        if self.reference is None:
            return [table_row(stage="ours vs reference", note="not run: no --reference copy of train_amused.py")]
        batch, size = (2, 64) if self.dry_run else (16, 256)
        steps, warmup = (4, 1) if self.dry_run else (20, 5)
        images = write_images(self.workdir / f"images-{size}-{batch}", batch, size)
        pipeline = Path(self.pipeline("amused-256-arch"))
        precision = "32" if self.dry_run else "16-mixed"
        recipe = ("--model.memory.gradient_checkpointing", "true", "--model.optimizer.init_args.fused",
                  str(not self.dry_run).lower(), "--model.optimizer.init_args.lr", "8e-4")
        rates = {}
        for side in ("ours", "reference"):
            if self.budget.left < 60:
                return [table_row(stage="ours vs reference", note="not run: time budget spent")]
            case = Case("nouns-lora-16x1", "amused-256-arch", size, True, batch, batch, steps, precision,
                        self.accelerator, recipe if side == "ours" else ())
            command_for = ((lambda out: our_command(case, pipeline, images, out)) if side == "ours" else
                           (lambda out: reference_command(self.reference, case, pipeline, images, out)))
            tag = f"gpu-{side}"
            run_side(command_for, self.workdir, _env(), tag)
            rates[side] = batch / step_seconds(self.workdir / f"{tag}.log", skip=warmup)
        flops = transformer_flops("tiny" if self.dry_run else "amused-256-arch", True, 16)
        notes = {"ours": f"median optimizer step of {steps} after {warmup}; ours with the recipe's gradient "
                         "checkpointing, the reference without (it crashes)",
                 "reference": f"ours / reference: {rates['ours'] / rates['reference']:.2f}x"}
        return [table_row(stage="ours vs reference", row=f"nouns-lora-16x1 {side}", batch=f"{batch} x 1",
                          precision=precision, **speed_cells(rate, flops, precision, self.device), note=notes[side])
                for side, rate in rates.items()]


@contextmanager
def lever(setting: str | None) -> Iterator[None]:
    """A process-wide switch for one measurement: math attention, or TF32 off or on."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        if setting in ("tf32-off", "tf32-on"):
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = setting == "tf32-on"
        with sdpa_kernel(SDPBackend.MATH) if setting == "math-attention" else nullcontext():
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "PYTHONPATH": os.pathsep.join(
        filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


def environment(dry_run: bool) -> str:
    device = "CPU (dry run)" if dry_run else torch.cuda.get_device_name()
    return f"{device}, torch {torch.__version__}, python {platform.python_version()}, {time.strftime('%Y-%m-%d')}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, help="write the table here too")
    parser.add_argument("--reference", type=Path, help="a copy of train_amused.py for stage 4")
    parser.add_argument("--budget", type=float, default=450.0, help="seconds for all stages")
    parser.add_argument("--dry-run", action="store_true", help="every stage tiny on the CPU")
    parser.add_argument("--stages", nargs="*", choices=list(STAGES), default=list(STAGES), help="stages to run")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "amused-gpu-benchmark")
    args = parser.parse_args()
    if not args.dry_run and not torch.cuda.is_available():
        parser.error("no CUDA device: run with --dry-run to check the stages on the CPU")
    if args.reference is not None and not args.reference.is_file():
        parser.error(f"--reference {args.reference}: no such file")
    args.workdir.mkdir(parents=True, exist_ok=True)
    stages = Stages(args.workdir, args.dry_run, Budget(args.budget), args.reference)
    lines = [f"GPU benchmark: {environment(args.dry_run)}", "", "| " + " | ".join(COLUMNS.values()) + " |",
             "|" + "---|" * len(COLUMNS)]
    for stage in (getattr(stages, STAGES[name]) for name in args.stages):
        try:
            new = stage()
        except Exception as error:  # one stage's failure is a row of the table; the others still run
            new = [table_row(stage=stage.__name__, note=f"failed: {type(error).__name__}: {str(error)[:200]}")]
        lines += new
        print("\n".join(new), flush=True)
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    if args.output:
        args.output.write_text(text)


if __name__ == "__main__":
    main()
