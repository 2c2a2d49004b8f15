"""CPU threads: one per core the other work leaves free, OMP_NUM_THREADS as the user set it, waits that sleep where
other work runs."""

from __future__ import annotations

import pytest

from amused_lightning.threads import choose_threads, choose_waiting


@pytest.mark.parametrize(("cores", "load", "threads"), [
    (2, 0.1, 2), (2, 0.6, 1), (2, 5.3, 1), (8, 3.2, 5), (8, 0.0, 8), (4, None, 4), (4, 40.0, 1),
])
def test_threads_are_the_cores_the_load_leaves_free(cores, load, threads):
    assert choose_threads(cores, load, {}).threads == threads


def test_the_line_says_what_was_chosen_and_how_to_override_it():
    assert choose_threads(2, 5.3, {}).line == ("CPU: 1 torch thread (2 cores, load 5.3); set OMP_NUM_THREADS to "
                                               "override")
    assert choose_threads(8, 0.0, {}).line.startswith("CPU: 8 torch threads (8 cores, load 0.0)")


def test_omp_num_threads_wins():
    choice = choose_threads(2, 5.3, {"OMP_NUM_THREADS": "2"})
    assert choice.threads is None and choice.line == "CPU: torch threads as OMP_NUM_THREADS=2 sets them"


@pytest.mark.parametrize(("load", "sleeps"), [(0.0, False), (0.4, False), (0.6, True), (7.5, True), (None, True)])
def test_waits_sleep_where_other_work_runs(load, sleeps):
    env = {}
    choose_waiting(load, env)
    assert env == ({"OMP_WAIT_POLICY": "PASSIVE", "KMP_BLOCKTIME": "0"} if sleeps else {})


def test_a_policy_the_user_chose_is_kept():
    env = {"OMP_WAIT_POLICY": "ACTIVE"}
    choose_waiting(3.0, env)
    assert env == {"OMP_WAIT_POLICY": "ACTIVE", "KMP_BLOCKTIME": "0"}


def test_the_line_says_when_threads_sleep_while_they_wait():
    line = choose_threads(8, 2.0, {"OMP_WAIT_POLICY": "PASSIVE"}).line
    assert line == "CPU: 6 torch threads (8 cores, load 2.0; sleeping waits); set OMP_NUM_THREADS to override"


def test_a_cpu_command_sets_torch_threads_and_says_so(monkeypatch, caplog):
    import logging

    import torch

    from amused_lightning import threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "load_average", lambda: 5.3)
    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with caplog.at_level(logging.INFO, logger="amused_lightning"):
        threads.set_cpu_threads()
    assert torch.get_num_threads() == 1
    assert caplog.messages == ["CPU: 1 torch thread (2 cores, load 5.3); set OMP_NUM_THREADS to override"]


def test_runnable_others_leaves_this_process_out():
    from amused_lightning import threads

    assert threads.runnable_others("0.16 0.86 1.39 3/111 30501") == 2
    assert threads.runnable_others("7.50 8.00 8.10 1/240 9") == 0


def test_the_load_is_the_average_or_the_work_running_now_where_less(monkeypatch):
    from amused_lightning import threads

    monkeypatch.setattr(threads.os, "getloadavg", lambda: (1.7, 1.0, 0.5))
    monkeypatch.setattr(threads, "runnable_others", lambda text: 0)  # the machine has just gone quiet
    threads.load_average.cache_clear()
    assert threads.load_average() == 0
    monkeypatch.setattr(threads, "runnable_others", lambda text: 3)  # busier now than over the last minute
    assert threads.load_average() == 0, "measured once per process"
    threads.load_average.cache_clear()
    assert threads.load_average() == 1.7
    threads.load_average.cache_clear()
