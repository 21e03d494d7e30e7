"""PipePool's answers as they come (forking.as_answered), with real forked workers."""

from __future__ import annotations

import time

import pytest

from cairn.forking import PipePool, WorkerFailed, as_answered, fork_available

pytestmark = pytest.mark.skipif(not fork_available(), reason="needs fork() and two cores")


def _nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def test_a_free_worker_takes_the_next_call_while_the_other_is_busy() -> None:
    """One long call must not hold up the short ones: the other worker answers them
    meanwhile (all but the one already queued behind the long call), and every call is
    answered once."""
    pool = PipePool(_nap, 2)
    try:
        calls = [1.0] + [0.01] * 20
        seen = [arg for arg, future in as_answered(pool, calls, window=4) if future.result() == arg]
    finally:
        pool.shutdown(cancel=False)
    assert sorted(seen) == sorted(calls)
    # in order, the parent would have waited for the long call before sending a fifth
    assert seen.index(1.0) >= len(calls) - 2


def test_calls_are_prepared_when_sent_and_meanwhile_runs_after_the_first() -> None:
    pool = PipePool(_nap, 2)
    prepared: list[int] = []
    at_meanwhile: list[int] = []

    def prepare(i: int) -> float:
        prepared.append(i)
        return 0.0

    try:
        answered = as_answered(
            pool, range(10), 3, prepare, lambda: at_meanwhile.append(len(prepared))
        )
        assert sorted(arg for arg, _ in answered) == list(range(10))
    finally:
        pool.shutdown(cancel=False)
    assert at_meanwhile == [3]
    assert prepared == list(range(10))


def test_a_call_that_cannot_be_sent_comes_back_failed() -> None:
    pool = PipePool(_nap, 2)
    pool.shutdown(cancel=True)  # every worker gone: submit refuses
    answered = list(as_answered(pool, [0.0, 0.0], 2))
    assert len(answered) == 2
    for _, future in answered:
        with pytest.raises(WorkerFailed):
            future.result()
