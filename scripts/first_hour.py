"""Time a newcomer's first hour as whole processes: `--help`, `fit --help`, the README's quickstart (after its data
command) and, with --tests, the README's test command. Prints a markdown table (median, min, max over --runs).

    python scripts/first_hour.py [--runs 3] [--tests] [--quickstart-runs 1]

The commands are read from README.md's fenced `sh` blocks (the one naming configs/quickstart.yaml, the one running
pytest), leaving out `pip install` steps; --setup / --quickstart / --test-command replace them. Run it on an idle
machine: timings on a loaded one say little.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def sh_blocks(readme: str) -> list[str]:
    """The contents of the README's ```sh blocks, in order."""
    return re.findall(r"```sh\n(.*?)```", readme, flags=re.S)


def commands_of(block: str) -> list[str]:
    """The block's `&&`-joined commands, one per line joined, without `pip install` steps."""
    joined = " ".join(line.strip() for line in block.splitlines() if line.strip() and not line.startswith("#"))
    return [c.strip() for c in joined.split("&&") if c.strip() and not c.strip().startswith("pip ")]


def readme_commands(readme: str) -> tuple[list[str], str, str | None]:
    """(set-up commands, quickstart command, test command) as the README gives them."""
    quick = next(b for b in sh_blocks(readme) if "quickstart.yaml" in b)
    steps = commands_of(quick)
    fit = next(c for c in steps if " fit " in f" {c} ")
    tests = next((c for b in sh_blocks(readme) for c in commands_of(b) if "pytest" in c), None)
    return [c for c in steps if c != fit], fit, tests


def timed(command: str, cwd: Path, env: dict[str, str]) -> float:
    """Seconds `command` took as a whole process (its output discarded); fails loudly if it fails."""
    start = time.perf_counter()
    result = subprocess.run(command, shell=True, cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"`{command}` failed ({result.returncode}):\n{result.stderr[-2000:]}")
    return elapsed


def workspace() -> Path:
    """A fresh folder where the README's relative paths (scripts/, configs/) resolve as in a clone."""
    folder = Path(tempfile.mkdtemp(prefix="first-hour-"))
    for name in ("scripts", "configs"):
        (folder / name).symlink_to(REPO / name)
    return folder


def row(name: str, times: list[float]) -> str:
    """One markdown table row of timings."""
    return (f"| `{name}` | {len(times)} | {statistics.median(times):.1f} | {min(times):.1f} | "
            f"{max(times):.1f} |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="runs of each --help command")
    parser.add_argument("--quickstart-runs", type=int, default=1, help="runs of the set-up + quickstart")
    parser.add_argument("--tests", action="store_true", help="also time the README's test command (long)")
    parser.add_argument("--setup", action="append", help="replaces the README's set-up command(s)")
    parser.add_argument("--quickstart", help="replaces the README's quickstart command")
    parser.add_argument("--test-command", help="replaces the README's test command")
    args = parser.parse_args(argv)
    setup, quickstart, tests = readme_commands((REPO / "README.md").read_text())
    setup, quickstart, tests = args.setup or setup, args.quickstart or quickstart, args.test_command or tests
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    cli = f"{sys.executable} -m amused_lightning"
    rows = [row(f"python -m amused_lightning{suffix}", [timed(cli + suffix, REPO, env) for _ in range(args.runs)])
            for suffix in (" --help", " fit --help")]
    setup_times: list[list[float]] = [[] for _ in setup]
    quick_times = []
    for _ in range(args.quickstart_runs):
        folder = workspace()
        for times, command in zip(setup_times, setup):
            times.append(timed(command, folder, env))
        quick_times.append(timed(quickstart, folder, env))
    rows += [row(command, times) for command, times in zip(setup, setup_times)] + [row(quickstart, quick_times)]
    if args.tests and tests:
        rows.append(row(tests, [timed(tests, REPO, env)]))
    print(f"{os.cpu_count()} CPU cores, python {sys.version.split()[0]}\n")
    print("| command | runs | median s | min s | max s |\n|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
