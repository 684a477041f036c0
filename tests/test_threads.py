"""CPU threads from the cores actually free: a busy machine gets fewer, a setting always wins."""

from __future__ import annotations

import pytest
import torch

from tlsearch.config import load_config
from tlsearch.errors import ConfigError
from tlsearch.search.workers import worker_env
from tlsearch.train.threads import apply_threads, busy_cores, choose_threads, free_cores, load_average


def _choose(requested=None, *, env=None, cores=2, load=0.0):
    return choose_threads(requested, environ=env or {}, cores=lambda: cores, load=lambda: load)


def test_free_cores_subtracts_the_load_and_keeps_at_least_one():
    assert free_cores(2, 0.1) == 2
    assert free_cores(8, 3.2) == 5
    assert free_cores(2, 6.0) == 1  # the quickstart's busy machine: one thread, not two fighting
    assert free_cores(4, None) == 4  # no load average on this system: every core


def test_auto_uses_the_free_cores():
    choice = _choose(cores=2, load=6.0)
    assert (choice.threads, choice.source) == (1, "auto")
    assert "load 6.0" in choice.describe() and "training.threads" in choice.describe()
    assert _choose(cores=16, load=0.5).threads == 16


def test_a_setting_wins_over_workers_share_and_omp():
    env = {"TLSEARCH_NUM_THREADS": "3", "OMP_NUM_THREADS": "5"}
    assert _choose(2, env=env, load=9.0).threads == 2
    assert _choose(env=env, load=9.0).threads == 3  # a local worker's share
    assert _choose(env={"OMP_NUM_THREADS": "5"}, load=9.0) is None  # the user's own OMP setting stands


def test_apply_threads_sets_pytorch():
    before = torch.get_num_threads()
    try:
        assert apply_threads(1).threads == 1
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_the_automatic_choice_is_made_once_per_process(monkeypatch):
    import tlsearch.train.threads as threads

    before = torch.get_num_threads()
    monkeypatch.setattr(threads, "_auto", None)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("TLSEARCH_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "available_cores", lambda: 4)
    try:
        monkeypatch.setattr(threads, "load_average", lambda: 3.0)
        assert apply_threads().threads == 1
        monkeypatch.setattr(threads, "load_average", lambda: 0.0)  # the load fell: same count, same results
        assert apply_threads().threads == 1 and torch.get_num_threads() == 1
        assert apply_threads(3).threads == 3  # a setting still wins
    finally:
        torch.set_num_threads(before)


def test_training_threads_setting_and_cli_override(write_study):
    path = write_study(training={"threads": 2})
    assert load_config(path).training.threads == 2
    assert load_config(path, overrides={"training.threads": 1}).training.threads == 1
    with pytest.raises(ConfigError, match="threads"):
        load_config(write_study(training={"threads": 0}))


def test_local_cpu_workers_share_the_free_cores(monkeypatch):
    monkeypatch.setattr("tlsearch.search.workers.available_cores", lambda: 8)
    monkeypatch.setattr("tlsearch.search.workers.load_average", lambda: 4.0)
    env = worker_env(0, 2, gpus=[], base={})
    assert env["OMP_NUM_THREADS"] == env["TLSEARCH_NUM_THREADS"] == "2"  # (8 − 4) free, 2 workers


def test_run_study_applies_the_setting_before_any_work(write_study, tmp_path, monkeypatch):
    seen = []

    class Stop(Exception):
        pass

    def spy(requested):
        seen.append(requested)
        raise Stop

    monkeypatch.setattr("tlsearch.search.study.apply_threads", spy)
    from tlsearch.search import run_study

    with pytest.raises(Stop):
        run_study(write_study(training={"threads": 1}), out_dir=tmp_path / "run")
    assert seen == [1]


STAT_BEFORE = "cpu  30 0 10 60 0 0 0 0 0 0\ncpu0 10 0 0 90 0 0 0 0 0 0\ncpu1 100 0 0 0 0 0 0 0 0 0\n"
STAT_AFTER = "cpu  0 0 0 0 0 0 0 0 0 0\ncpu0 20 0 0 180 0 0 0 0 0 0\ncpu1 190 0 0 5 5 0 0 0 0 0\nintr 1 2\n"


def test_busy_cores_from_two_readings_of_proc_stat():
    # cpu0: 10 of 100 jiffies busy; cpu1: 90 of 100 (iowait counts as idle)
    assert busy_cores(STAT_BEFORE, STAT_AFTER, [0, 1]) == pytest.approx(1.0)
    assert busy_cores(STAT_BEFORE, STAT_AFTER, [1]) == pytest.approx(0.9)
    assert busy_cores(STAT_BEFORE, STAT_AFTER, [7]) is None  # a CPU outside the readings


def test_a_load_average_that_still_counts_a_finished_run_yields_to_the_busy_share_now(monkeypatch):
    import tlsearch.train.threads as threads

    monkeypatch.setattr(threads.os, "getloadavg", lambda: (1.9, 1.0, 0.5))  # the previous study, just ended
    monkeypatch.setattr(threads, "_busy_now", lambda: 0.1)
    assert load_average() == 0.1
    monkeypatch.setattr(threads, "_busy_now", lambda: 3.0)  # a burst now, quiet on average
    assert load_average() == 1.9
    monkeypatch.setattr(threads, "_busy_now", lambda: None)  # no /proc/stat
    assert load_average() == 1.9


def test_a_given_free_core_count_is_shared_without_measuring(monkeypatch):
    monkeypatch.setattr("tlsearch.search.workers.load_average", lambda: pytest.fail("measured again"))
    assert worker_env(1, 3, gpus=[], base={}, free=7)["OMP_NUM_THREADS"] == "2"


def test_a_chosen_count_says_where_it_came_from():
    """Bug caught: a setting's or worker's count described as the automatic choice, or not at all."""
    assert _choose(3).describe() == "3 CPU thread(s), from setting"
    assert _choose(env={"TLSEARCH_NUM_THREADS": "2"}).describe() == "2 CPU thread(s), from worker"


def test_without_an_affinity_call_the_cores_are_the_cpu_count(monkeypatch):
    """Bugs caught: a crash on macOS/Windows (no sched_getaffinity), or 0 cores when the count is unknown."""
    import tlsearch.train.threads as threads

    def no_affinity(pid):
        raise OSError("not supported")

    monkeypatch.setattr(threads.os, "sched_getaffinity", no_affinity, raising=False)
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 3)
    assert threads.available_cores() == 3
    monkeypatch.setattr(threads.os, "cpu_count", lambda: None)
    assert threads.available_cores() == 1


def test_the_busy_share_now_reads_proc_stat_twice_over_the_affinity_cpus(monkeypatch):
    """Bugs caught: one reading (or the wait not between the two), CPUs outside the affinity
    counted, the result dropped; and a crash where there is no /proc/stat."""
    import tlsearch.train.threads as threads

    events = []
    readings = iter([STAT_BEFORE, STAT_AFTER])

    class FakePath:
        def __init__(self, name):
            assert name == "/proc/stat"

        def read_text(self):
            events.append("read")
            return next(readings)

    monkeypatch.setattr(threads, "Path", FakePath)
    monkeypatch.setattr(threads.time, "sleep", lambda seconds: events.append(seconds))
    monkeypatch.setattr(
        threads.os, "sched_getaffinity", lambda pid: {1} if pid == 0 else {0, 1}, raising=False
    )
    assert threads._busy_now() == pytest.approx(0.9)  # cpu1 alone: 90 of its 100 jiffies busy
    assert events == ["read", 0.5, "read"]

    def no_stat(self):
        raise OSError("no /proc")

    monkeypatch.setattr(FakePath, "read_text", no_stat)
    assert threads._busy_now() is None


def test_busy_cores_at_the_edges_of_proc_stat():
    """Bugs caught: a CPU with no time elapsed counted busy (or a division by zero), one missing
    from either reading not noticed, a kernel's five-field line skipped, guest time counted twice."""
    same = "cpu0 10 0 0 90 0\ncpu1 10 0 0 90 0\n"  # five fields (old kernels): read too
    assert busy_cores(same, same, [0, 1]) == 0.0  # nothing elapsed: not busy
    one_jiffy = "cpu0 11 0 0 90 0\ncpu1 10 0 0 91 0\n"
    assert busy_cores(same, one_jiffy, [0, 1]) == pytest.approx(1.0)  # cpu0 busy for its one jiffy
    assert busy_cores(same, "cpu0 11 0 0 90 0\n", [0, 1]) is None  # cpu1 missing after
    assert busy_cores("cpu1 10 0 0 90 0\n", same, [0, 1]) is None  # cpu0 missing before
    guest_before = "cpu0 10 0 0 90 0 0 0 0 0 0\n"
    guest_after = "cpu0 60 0 0 140 0 0 0 0 50 0\n"  # guest (field 9) is already in user
    assert busy_cores(guest_before, guest_after, [0]) == pytest.approx(0.5)


def test_the_cores_are_this_processs_affinity_and_never_fewer_than_one(monkeypatch):
    """Bugs caught: another process's affinity (pid 1's), or a floor above one core."""
    import dataclasses

    import tlsearch.train.threads as threads

    monkeypatch.setattr(
        threads.os, "sched_getaffinity", lambda pid: {3} if pid == 0 else {0, 1, 2, 3}, raising=False
    )
    assert threads.available_cores() == 1
    with pytest.raises(dataclasses.FrozenInstanceError):  # a choice is a record, not a setting to edit
        _choose(2).threads = 3  # type: ignore[misc]


def test_a_worker_share_of_zero_is_not_a_thread_count():
    """Bug caught: ``TLSEARCH_NUM_THREADS=0`` taken as 0 threads instead of the automatic choice."""
    assert _choose(env={"TLSEARCH_NUM_THREADS": "0"}, cores=4, load=1.0).source == "auto"
    assert _choose(env={"TLSEARCH_NUM_THREADS": "1"}, cores=4, load=1.0).threads == 1
