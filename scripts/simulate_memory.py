"""Peak CUDA memory of every seed row, ours beside the reference script's, simulated without a GPU.

    python scripts/simulate_memory.py [--rows nouns-lora-16x1 ...] [--steps 2] [--levers] [--offload full 8bit]
                                      [--pixels] [--sims ours reference] [--results results.jsonl] [--output BENCHMARKS.md]

Each row runs on fake CUDA tensors (shapes, dtypes and devices, no data) through the real code paths: our
AmusedModule's training step placed as a single-GPU fit places it, and a replica of diffusers' train_amused.py
(see amused_lightning/memsim/reference.py), each for `--steps` optimizer steps and one validation sampling of the
recipe's prompts. A dispatch-level tracker of live storages gives the peak `torch.cuda.max_memory_allocated` would
report and the phase that set it. Needs g++ (the fake CUDA runtime is compiled on first use).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


def _load_fake_cuda() -> None:
    """Register the fake CUDA runtime; it must come before torch is imported, so the module is loaded by path."""
    path = Path(__file__).resolve().parents[1] / "amused_lightning" / "memsim" / "shim.py"
    spec = importlib.util.spec_from_file_location("amused_memsim_shim", path)
    shim = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shim)
    shim.load_fake_cuda()


_load_fake_cuda()

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402

import torch  # noqa: E402

from amused_lightning.memsim.common import SimResult, SimRow  # noqa: E402
from amused_lightning.memsim.ours import ALL_LEVERS, Levers, simulate_ours  # noqa: E402
from amused_lightning.memsim.reference import simulate_reference  # noqa: E402

from benchmark import GB, Row, publish, select_rows  # noqa: E402


def validation_prompt_count(row: Row) -> int:
    """How many validation prompts the row's recipe samples (the seed's commands)."""
    return 4 if row.name.startswith("styledrop") else 8 if row.resolution == 256 else 5


def sim_row(row: Row) -> SimRow:
    """The benchmark row as a simulation row."""
    return SimRow(row.name, row.preset, row.resolution, row.mode, row.batch, row.accumulation, row.checkpointing,
                  row.lora_alpha, row.precision, validation_prompt_count(row), row.name.startswith("styledrop"))


def run(row: Row, args: argparse.Namespace) -> dict:
    """Both simulations of one row, with their times; a failure is recorded, not raised."""
    offload = row.mode in args.offload
    levers = dataclasses.replace(ALL_LEVERS if args.levers else Levers(), offload=offload)
    record: dict = {"row": row.name, "seed_gb": row.seed_gb, "levers": dataclasses.asdict(levers),
                    "pre_encoded": not args.pixels}
    jobs = {"ours": lambda: simulate_ours(sim_row(row), args.steps, not args.pixels, levers, args.inference_steps),
            "reference": lambda: simulate_reference(sim_row(row), args.steps, args.inference_steps)}
    for name, job in jobs.items():
        if name not in args.sims:
            continue
        start = time.perf_counter()
        try:
            result: SimResult = job()
            record[name] = {"peak": result.peak, "phase": result.phase, "phases": result.phase_peaks}
        except Exception:  # one row's failure must not lose the others' hours
            record[name] = {"error": traceback.format_exc(limit=3)}
        record[name]["seconds"] = round(time.perf_counter() - start, 1)
    return record


def gb(record: dict, name: str) -> str:
    """A simulation's peak in GB with its phase, or why there is none."""
    entry = record.get(name)
    if entry is None:
        return "not run"
    return f"{entry['peak'] / GB:.2f} ({entry['phase']})" if "peak" in entry else "failed"


def ratio(record: dict, name: str, denominator: float | None) -> str:
    """Our peak over `denominator` bytes."""
    if not denominator or "peak" not in record.get(name, {}):
        return "n/a"
    return f"{record[name]['peak'] / denominator:.2f}"


def table_line(record: dict) -> str:
    """One markdown row: seed, reference, ours and the two ratios."""
    reference = record.get("reference", {}).get("peak")
    seed = record["seed_gb"] * GB if record["seed_gb"] else None
    return (f"| {record['row']} | {record['seed_gb'] or 'n/a'} | {gb(record, 'reference')} | {gb(record, 'ours')} | "
            f"{ratio(record, 'ours', reference)} | {ratio(record, 'ours', seed)} |")


HEADER = ("| row | seed GB | reference simulated GB (phase of the peak) | ours simulated GB (phase of the peak) | "
          "ours / reference | ours / seed |\n|---|---|---|---|---|---|")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="*", help="names of rows to simulate (default: all)")
    parser.add_argument("--steps", type=int, default=2, help="optimizer steps per row (2: optimizer state exists)")
    parser.add_argument("--inference-steps", type=int, default=2,
                        help="validation decoding steps (each has the same shapes; the recipes sample 12)")
    parser.add_argument("--levers", action="store_true", help="ours: frozen weights cast before the move to the "
                        "device, gradients released after each step, lean validation sampling (memory.py)")
    parser.add_argument("--offload", nargs="*", default=[], choices=("full", "8bit"),
                        help="ours: these modes' rows use OffloadedAdamW / OffloadedAdamW8bit (host-memory optimizer)")
    parser.add_argument("--pixels", action="store_true", help="ours: VQ and CLIP encoding every step, no cache")
    parser.add_argument("--sims", nargs="+", default=["ours", "reference"], choices=("ours", "reference"),
                        help="which simulations to run for each row")
    parser.add_argument("--results", help="append each row's full record (all phases) to this JSON-lines file")
    parser.add_argument("--output", help="append the table, with its environment, to this markdown file")
    args = parser.parse_args()
    torch.set_num_threads(1)  # fake tensors compute nothing: more threads only contend
    try:
        rows = select_rows(args.rows)
    except ValueError as error:
        parser.error(str(error))
    lines = [HEADER]
    for row in rows:
        record = run(row, args)
        if args.results:
            with open(args.results, "a") as file:
                file.write(json.dumps(record) + "\n")
        lines.append(table_line(record))
        print(lines[-1], flush=True)
    publish("Simulated CUDA peak", "\n".join(lines), args.output)


if __name__ == "__main__":
    main()
