"""CPU threads that a busy machine does not make collapse: as many torch threads as there are cores the other work
leaves free (at least one), threads that sleep rather than spin while they wait for each other where other work
runs, and one line saying what was chosen. OMP_NUM_THREADS (and OMP_WAIT_POLICY), when set, win."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from functools import cache

log = logging.getLogger(__name__)

THREADS_ENV = "OMP_NUM_THREADS"
# Read by the OpenMP runtime when torch loads (GNU's, and Intel's KMP_BLOCKTIME): waiting threads sleep at once
# instead of spinning, so they do not take the cores the thread they wait for needs. On an idle machine the runtime's
# own policy (spin briefly, then sleep) stays: sleeping at each of the thousands of parallel regions in a small
# model's step made two threads 2.5x slower than one there (BENCHMARKS.md, "CPU threads on a busy machine").
PASSIVE_WAITING = {"OMP_WAIT_POLICY": "PASSIVE", "KMP_BLOCKTIME": "0"}


@dataclass(frozen=True)
class ThreadChoice:
    """The torch threads of a CPU run, or None where OMP_NUM_THREADS decides, and why."""

    threads: int | None
    line: str


def choose_threads(cores: int, load: float | None, env: Mapping[str, str]) -> ThreadChoice:
    """One torch thread per core that the load average (the other work, as a process starts) leaves free, at least
    one, at most `cores`; the user's OMP_NUM_THREADS as it is."""
    given = env.get(THREADS_ENV, "").strip()
    if given:
        return ThreadChoice(None, f"CPU: torch threads as {THREADS_ENV}={given} sets them")
    free = cores if load is None else cores - other_tasks(load)
    threads = max(1, min(cores, free))
    measured = "load not known" if load is None else f"load {load:.1f}"
    waits = "; sleeping waits" if env.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE" and threads > 1 else ""
    return ThreadChoice(threads, f"CPU: {threads} torch thread{'s' * (threads > 1)} ({cores} cores, {measured}"
                                 f"{waits}); set {THREADS_ENV} to override")


def other_tasks(load: float) -> int:
    """The load as a number of busy cores (rounded)."""
    return int(load + 0.5)


def choose_waiting(load: float | None, env: MutableMapping[str, str]) -> None:
    """Ask the OpenMP runtime for sleeping waits where other work runs (or the load is not known), unless the user chose
    a policy; only has effect before torch loads."""
    if load is not None and other_tasks(load) == 0:
        return
    for name, value in PASSIVE_WAITING.items():
        env.setdefault(name, value)


def usable_cores() -> int:
    """The cores this process may run on (its affinity, which containers and job schedulers set)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on every platform
        return os.cpu_count() or 1


@cache
def load_average() -> float | None:
    """The other work running as this process starts (measured once: the waiting policy and the thread count are
    chosen from the same figure): the one-minute load average, or, where fewer, the other tasks runnable right now
    (the average lags a minute behind work that has just ended, such as the previous run)."""
    try:
        average = os.getloadavg()[0]
    except (AttributeError, OSError):
        return None
    try:
        samples = []
        for _ in range(5):
            with open("/proc/loadavg") as status:
                samples.append(runnable_others(status.read()))
            time.sleep(0.02)
    except OSError:  # not Linux
        return average
    return min(average, sorted(samples)[len(samples) // 2])


def runnable_others(loadavg: str) -> int:
    """Tasks runnable at this moment besides this one, from /proc/loadavg ("0.16 0.86 1.39 2/111 30501")."""
    return max(0, int(loadavg.split()[3].split("/")[0]) - 1)


@cache
def torch_default_threads() -> int:
    """torch's own thread count (its physical cores), read before this module first changes it."""
    import torch

    return torch.get_num_threads()


def set_cpu_threads() -> ThreadChoice | None:
    """On a machine without CUDA: torch's threads as `choose_threads` says, and its line logged."""
    import torch

    if torch.cuda.is_available():
        return None
    choice = choose_threads(min(usable_cores(), torch_default_threads()), load_average(), os.environ)
    if choice.threads is not None:
        torch.set_num_threads(choice.threads)
    log.info(choice.line)
    return choice
