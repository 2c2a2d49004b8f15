"""Peak CUDA memory of every seed row, ours beside the reference script's, simulated without a GPU.

    python scripts/simulate_memory.py [--rows nouns-lora-16x1 ...] [--steps 2] [--offload full 8bit]
                                      [--pixels] [--sims ours reference] [--results results.jsonl] [--output FILE]
    python scripts/simulate_memory.py --merge results.jsonl more-results.jsonl [--output BENCHMARKS.md]

Each row runs on fake CUDA tensors (shapes, dtypes and devices, no data) through the real code paths: our
AmusedModule's training step at its defaults, placed by FrozenPlacement's hooks as a single-GPU fit places it
(`--offload`: with the host-memory optimizer), and a replica of diffusers' train_amused.py
(see scripts/memsim/reference.py), each for `--steps` optimizer steps and one validation sampling of the
recipe's prompts. A dispatch-level tracker of live storages gives the peak `torch.cuda.max_memory_allocated` would
report and the phase that set it. Needs g++ (the fake CUDA runtime is compiled on first use).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path


def _load_fake_cuda() -> None:
    """Register the fake CUDA runtime; it must come before torch is imported, so the module is loaded by path."""
    path = Path(__file__).resolve().parent / "memsim" / "shim.py"
    spec = importlib.util.spec_from_file_location("amused_memsim_shim", path)
    shim = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shim)
    shim.load_fake_cuda()


_load_fake_cuda()

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402

import torch  # noqa: E402

from benchmark import GB, Row, publish, select_rows, validation_prompt_count  # noqa: E402
from memsim.common import SimResult, SimRow  # noqa: E402
from memsim.ours import simulate_ours  # noqa: E402
from memsim.reference import simulate_reference  # noqa: E402


def sim_row(row: Row) -> SimRow:
    """The benchmark row as a simulation row."""
    return SimRow(row.name, row.preset, row.resolution, row.mode, row.batch, row.accumulation, row.checkpointing,
                  row.lora_alpha, row.precision, validation_prompt_count(row), row.name.startswith("styledrop"))


def run(row: Row, args: argparse.Namespace) -> dict:
    """Both simulations of one row, with their times; a failure is recorded, not raised."""
    offload = row.mode in args.offload
    record: dict = {"row": row.name, "seed_gb": row.seed_gb, "offload": offload, "pre_encoded": not args.pixels}
    jobs = {"ours": lambda: simulate_ours(sim_row(row), args.steps, not args.pixels, offload, args.inference_steps),
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


def gb(entry: dict | None) -> str:
    """A simulation's peak in GB with its phase, or why there is none."""
    if entry is None:
        return "not run"
    return f"{entry['peak'] / GB:.2f} ({entry['phase']})" if "peak" in entry else "failed"


def ratio(entry: dict | None, denominator: float | None) -> str:
    """A simulated peak over `denominator` bytes."""
    if not denominator or entry is None or "peak" not in entry:
        return "n/a"
    return f"{entry['peak'] / denominator:.2f}"


def merged(records: list[dict]) -> dict[str, dict]:
    """Per row: the reference and ours at its defaults, from the records of any runs (the latest of each wins)."""
    rows: dict[str, dict] = {}
    for record in records:
        row = rows.setdefault(record["row"], {"seed_gb": record["seed_gb"]})
        for name in ("reference", "ours"):
            if name in record:
                row[name] = record[name]
        if "ours" in record:
            row["offload"] = record.get("offload", False)
    return rows


HEADER = ("| row | seed GB | reference GB (phase of the peak) | ours (defaults) GB (phase) | ours / reference | "
          "ours / seed |\n|---|---|---|---|---|---|")


def table(records: list[dict]) -> str:
    """Markdown table: seed, reference, ours at its defaults, and ours over each of the other two."""
    lines = [HEADER]
    for name, row in merged(records).items():
        reference = row.get("reference", {}).get("peak")
        seed = row["seed_gb"] * GB if row["seed_gb"] else None
        offload = " [host optimizer]" if row.get("offload") else ""
        lines.append(f"| {name} | {row['seed_gb'] or 'n/a'} | {gb(row.get('reference'))} | {gb(row.get('ours'))}"
                     f"{offload} | {ratio(row.get('ours'), reference)} | {ratio(row.get('ours'), seed)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="*", help="names of rows to simulate (default: all)")
    parser.add_argument("--steps", type=int, default=2, help="optimizer steps per row (2: optimizer state exists)")
    parser.add_argument("--inference-steps", type=int, default=2,
                        help="validation decoding steps (each has the same shapes; the recipes sample 12)")
    parser.add_argument("--offload", nargs="*", default=[], choices=("full", "8bit"),
                        help="ours: these modes' rows use OffloadedAdamW / OffloadedAdamW8bit (host-memory optimizer)")
    parser.add_argument("--pixels", action="store_true", help="ours: VQ and CLIP encoding every step, no cache")
    parser.add_argument("--sims", nargs="+", default=["ours", "reference"], choices=("ours", "reference"),
                        help="which simulations to run for each row")
    parser.add_argument("--results", help="append each row's full record (all phases) to this JSON-lines file")
    parser.add_argument("--merge", nargs="+", metavar="RESULTS",
                        help="no simulation: the table of earlier runs' --results files (reference and ours side by "
                             "side)")
    parser.add_argument("--output", help="append the table, with its environment, to this markdown file")
    args = parser.parse_args()
    torch.set_num_threads(1)  # fake tensors compute nothing: more threads only contend
    if args.merge:
        records = [json.loads(line) for path in args.merge for line in Path(path).read_text().splitlines()]
        publish("Simulated CUDA peak", table(records), args.output)
        return
    try:
        rows = select_rows(args.rows)
    except ValueError as error:
        parser.error(str(error))
    records = []
    for row in rows:
        records.append(run(row, args))
        if args.results:
            with open(args.results, "a") as file:
                file.write(json.dumps(records[-1]) + "\n")
        print(table(records[-1:]).splitlines()[-1], flush=True)
    publish("Simulated CUDA peak", table(records), args.output)


if __name__ == "__main__":
    main()
