"""Time a newcomer's first hour as whole processes: `--help`, `fit --help`, the README's quickstart (after its data
command), any --command and, with --tests, the README's test command; on the machine as found and, with
--load N, again while N processes of its own keep N cores busy ("loaded"). Prints a markdown table (median, min, max
over --runs) with the one-minute load average as each command started and ended.

    python scripts/first_hour.py [--runs 3] [--tests] [--quickstart-runs 1] [--load 4] [--repo /other/checkout]

The commands are read from README.md's fenced `sh` blocks (the one naming configs/quickstart.yaml, the one running
pytest), leaving out `pip install` steps; --setup / --quickstart / --test-command replace them. --repo runs the
package of another checkout (the code before a change, say) with this one's commands. OMP_NUM_THREADS is removed
from the commands' environment unless --keep-threads: the package's own thread choice is what is timed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

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


class Timing(NamedTuple):
    """Seconds a command took, and the one-minute load average as it started and as it ended."""

    seconds: float
    load_before: float
    load_after: float


def timed(command: str, cwd: Path, env: dict[str, str]) -> Timing:
    """How long `command` took as a whole process (its output discarded); fails loudly if it fails."""
    load_before, start = os.getloadavg()[0], time.perf_counter()
    result = subprocess.run(command, shell=True, cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"`{command}` failed ({result.returncode}):\n{result.stderr[-2000:]}")
    return Timing(elapsed, load_before, os.getloadavg()[0])


@contextlib.contextmanager
def busy_processes(count: int):
    """`count` processes that each keep a core busy, for as long as the block runs (a reproducible loaded machine)."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        time.sleep(5 if count else 0)  # let the load average start to show them
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


def workspace() -> Path:
    """A fresh folder where the README's relative paths (scripts/, configs/) resolve as in a clone."""
    folder = Path(tempfile.mkdtemp(prefix="first-hour-"))
    for name in ("scripts", "configs"):
        (folder / name).symlink_to(REPO / name)
    return folder


def row(name: str, machine: str, times: list[Timing]) -> str:
    """One markdown table row of timings."""
    seconds = [t.seconds for t in times]
    loads = f"{min(t.load_before for t in times):.1f}-{max(t.load_after for t in times):.1f}"
    return (f"| `{name}` | {machine} | {len(times)} | {statistics.median(seconds):.1f} | {min(seconds):.1f} | "
            f"{max(seconds):.1f} | {loads} |")


def time_all(args: argparse.Namespace, commands: tuple[list[str], str, str | None], env: dict[str, str],
             machine: str) -> list[str]:
    """The table rows of every command, timed on the machine as it now is (`machine` names it)."""
    setup, quickstart, tests = commands
    cli = f"{sys.executable} -m amused_lightning"
    rows = [row(f"python -m amused_lightning{suffix}", machine,
                [timed(cli + suffix, REPO, env) for _ in range(args.runs)]) for suffix in (" --help", " fit --help")]
    after = args.command or []
    setup_times: list[list[Timing]] = [[] for _ in setup]
    quick_times: list[Timing] = []
    after_times: list[list[Timing]] = [[] for _ in after]
    for _ in range(args.quickstart_runs):
        folder = workspace()
        for times, command in zip(setup_times, setup):
            times.append(timed(command, folder, env))
        quick_times.append(timed(quickstart, folder, env))
        for times, command in zip(after_times, after):
            times.append(timed(command, folder, env))
    rows += [row(command, machine, times) for command, times in zip(setup, setup_times)]
    rows += [row(quickstart, machine, quick_times)]
    rows += [row(command, machine, times) for command, times in zip(after, after_times)]
    if args.tests and tests:
        rows.append(row(tests, machine, [timed(tests, REPO, env)]))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="runs of each --help command")
    parser.add_argument("--quickstart-runs", type=int, default=1, help="runs of the set-up + quickstart")
    parser.add_argument("--tests", action="store_true", help="also time the README's test command (long)")
    parser.add_argument("--setup", action="append", help="replaces the README's set-up command(s)")
    parser.add_argument("--quickstart", help="replaces the README's quickstart command")
    parser.add_argument("--command", action="append", help="a command to time after the quickstart, in its folder")
    parser.add_argument("--test-command", help="replaces the README's test command")
    parser.add_argument("--load", type=int, default=0, help="also time everything while this many busy processes run")
    parser.add_argument("--idle", action=argparse.BooleanOptionalAction, default=True,
                        help="time on the machine as found, other users' load included (--no-idle: only loaded)")
    parser.add_argument("--repo", type=Path, default=REPO, help="the checkout whose package runs")
    parser.add_argument("--keep-threads", action="store_true", help="pass OMP_NUM_THREADS on to the commands")
    args = parser.parse_args(argv)
    setup, quickstart, tests = readme_commands((REPO / "README.md").read_text())
    commands = (args.setup or setup, args.quickstart or quickstart, args.test_command or tests)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(args.repo), os.environ.get("PYTHONPATH")]))}
    if not args.keep_threads:
        env.pop("OMP_NUM_THREADS", None)
    rows = time_all(args, commands, env, "as found") if args.idle else []
    if args.load:
        with busy_processes(args.load):
            rows += time_all(args, commands, env, f"loaded (+{args.load} busy)")
    threads = f"OMP_NUM_THREADS={env['OMP_NUM_THREADS']}" if "OMP_NUM_THREADS" in env else "OMP_NUM_THREADS unset"
    print(f"{len(os.sched_getaffinity(0))} CPU cores, python {sys.version.split()[0]}, package from {args.repo}, "
          f"{threads}\n")
    print("| command | machine | runs | median s | min s | max s | load avg |\n|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
