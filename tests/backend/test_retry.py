"""RetryBackend: the contract holds over a backend that fails 10% of requests, and the
retry policy (which errors, how often, how long, what is logged) is exactly as documented."""

from __future__ import annotations

import logging
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from cairn.backend.base import Backend, FileInfo, FileType, Handle
from cairn.backend.local import LocalBackend
from cairn.backend.retry import RetryBackend, RetryEvent, is_transient
from cairn.errors import (
    AlreadyExistsError,
    AppendOnlyError,
    AuthenticationError,
    BackendError,
    NotFoundError,
    TransientBackendError,
)
from tests.backend.contract import BackendContract, new_id
from tests.backend.faulty import FaultyBackend
from tests.backend.test_local import break_os_write


class TestRetryOverFaultyLocal(BackendContract):
    """10% of requests fail (before or after doing their work), 2% stall and time out."""

    remove_is_idempotent_after_retry = True

    @pytest.fixture
    def backend(self, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Backend]:
        faulty = FaultyBackend(
            LocalBackend(tmp_path / "repo"),
            fail_rate=0.1,
            stall_rate=0.02,
            stall_seconds=0.01,
            seed=zlib.crc32(request.node.name.encode()),
        )
        b = RetryBackend(faulty, attempts=12, base_delay=0.001, max_delay=0.01, seed=1)
        b.create()
        yield b
        b.close()

    @pytest.fixture
    def bare_backend(self, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Backend]:
        faulty = FaultyBackend(
            LocalBackend(tmp_path / "bare"), seed=zlib.crc32(request.node.name.encode())
        )
        with RetryBackend(faulty, base_delay=0.001, max_delay=0.01) as b:
            yield b

    def fail_next_save_midway(self, backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
        break_os_write(monkeypatch)


# --- the policy, with a scripted inner backend and a fake clock ------------------------


class Scripted(FaultyBackend):
    """A FaultyBackend whose fates come from a script instead of dice."""

    def __init__(self, inner: Backend, script: list[str | None]) -> None:
        super().__init__(inner, fail_rate=0.0)
        self.script = script
        self.calls = 0

    def _roll(self) -> str | None:
        self.calls += 1
        return self.script.pop(0) if self.script else None


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def clock(self) -> float:
        return self.now


@pytest.fixture
def local(tmp_path: Path) -> LocalBackend:
    b = LocalBackend(tmp_path / "repo")
    b.create()
    return b


def make(
    inner: Backend, events: list[RetryEvent] | None = None, **kw: float
) -> tuple[RetryBackend, FakeTime]:
    t = FakeTime()
    options: dict[str, float] = {"attempts": 5, "base_delay": 1.0, "max_delay": 4.0} | kw
    rb = RetryBackend(
        inner,
        attempts=int(options.pop("attempts")),
        log=events.append if events is not None else None,
        sleep=t.sleep,
        clock=t.clock,
        seed=7,
        **options,
    )
    return rb, t


def test_transient_failures_are_retried_with_growing_jittered_delays(
    local: LocalBackend, caplog: pytest.LogCaptureFixture
) -> None:
    inner = Scripted(local, ["before", "stall", "before", "before"])
    inner.stall_seconds = 0
    events: list[RetryEvent] = []
    rb, t = make(inner, events)
    h = Handle(FileType.INDEX, new_id())
    with caplog.at_level(logging.WARNING, logger="cairn.backend.retry"):
        rb.save(h, b"abc")
    assert local.load(h) == b"abc"
    assert inner.calls == 5
    # nominal delays 1, 2, 4, 4 (capped), each scaled by a factor in [0.5, 1]
    for got, nominal in zip(t.sleeps, [1, 2, 4, 4], strict=True):
        assert nominal * 0.5 <= got <= nominal
    assert len(set(t.sleeps)) == 4, "jitter makes delays differ"
    assert [e.attempt for e in events] == [1, 2, 3, 4]
    assert isinstance(events[1].error, TimeoutError)
    assert all(str(h) in e.operation for e in events)
    assert len(caplog.records) == 4 and "retrying in" in caplog.records[0].getMessage()


def test_attempts_are_bounded(local: LocalBackend) -> None:
    inner = Scripted(local, ["before"] * 10)
    rb, t = make(inner, attempts=3)
    with pytest.raises(TransientBackendError):
        rb.stat(Handle(FileType.CONFIG))
    assert inner.calls == 3 and len(t.sleeps) == 2


def test_total_time_is_bounded(local: LocalBackend) -> None:
    inner = Scripted(local, ["before"] * 10)
    rb, t = make(inner, attempts=10, base_delay=10.0, max_delay=10.0, max_elapsed=25.0)
    with pytest.raises(TransientBackendError):
        rb.load(Handle(FileType.CONFIG))
    assert sum(t.sleeps) <= 25.0
    assert inner.calls < 10


@pytest.mark.parametrize(
    "error",
    [
        NotFoundError("gone"),
        AlreadyExistsError("there"),
        AuthenticationError("denied"),
        AppendOnlyError("append-only"),
        BackendError("permission denied"),
        ValueError("bug"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_final_errors_are_not_retried(local: LocalBackend, error: Exception) -> None:
    calls = 0

    class Failing(LocalBackend):
        def stat(self, handle: Handle) -> int:
            nonlocal calls
            calls += 1
            raise error

    rb, t = make(Failing(local.root))
    with pytest.raises(type(error)):
        rb.stat(Handle(FileType.CONFIG))
    assert calls == 1 and t.sleeps == []


def test_even_a_final_error_marked_transient_is_not_retried() -> None:
    class Odd(NotFoundError):
        transient = True

    assert not is_transient(Odd("x"))
    assert is_transient(ConnectionResetError())
    assert is_transient(TimeoutError())
    assert not is_transient(OSError("disk"))


def test_save_whose_answer_was_lost_succeeds_on_retry(local: LocalBackend) -> None:
    # "after": the inner save stored the file, then the reply was lost; the retry meets
    # AlreadyExists, and the stored size matches, so it is our file.
    inner = Scripted(local, ["after"])
    rb, _ = make(inner)
    h = Handle(FileType.PACK, new_id())
    rb.save(h, b"pack contents")
    assert local.load(h) == b"pack contents"
    assert inner.calls == 3  # save, save (AlreadyExists), stat


def test_save_conflict_with_other_size_is_raised_on_retry(local: LocalBackend) -> None:
    h = Handle(FileType.PACK, new_id())
    local.save(h, b"a different file")
    inner = Scripted(local, ["before"])
    rb, _ = make(inner)
    with pytest.raises(AlreadyExistsError):
        rb.save(h, b"ours")
    assert local.load(h) == b"a different file"


def test_save_conflict_on_first_attempt_is_raised(local: LocalBackend) -> None:
    h = Handle(FileType.PACK, new_id())
    local.save(h, b"same")
    rb, _ = make(Scripted(local, []))
    with pytest.raises(AlreadyExistsError):
        rb.save(h, b"same")


def test_remove_whose_answer_was_lost_succeeds_on_retry(local: LocalBackend) -> None:
    h = Handle(FileType.LOCK, new_id())
    local.save(h, b"lock")
    rb, _ = make(Scripted(local, ["after"]))
    rb.remove(h)
    assert not local.exists(h)
    rb2, _ = make(Scripted(local, []))
    with pytest.raises(NotFoundError):
        rb2.remove(h)


def test_broken_listing_is_resumed_without_duplicates(local: LocalBackend) -> None:
    names = sorted(new_id() for _ in range(20))
    for n in names:
        local.save(Handle(FileType.SNAPSHOT, n), n.encode())
    rb, t = make(Scripted(local, ["after", "before", "after"]))
    got: list[FileInfo] = list(rb.list(FileType.SNAPSHOT))
    assert sorted(i.name for i in got) == names
    assert len(t.sleeps) == 3


def test_many_operations_survive_a_third_of_requests_failing(local: LocalBackend) -> None:
    faulty = FaultyBackend(local, fail_rate=0.3, seed=3)
    rb = RetryBackend(faulty, attempts=30, base_delay=0.0001, max_delay=0.001)
    files = {Handle(FileType.PACK, new_id()): new_id().encode() for _ in range(100)}
    for h, data in files.items():
        rb.save(h, data)
    for h, data in files.items():
        assert rb.load(h) == data
        assert rb.stat(h) == len(data)
    assert {i.name for i in rb.list(FileType.PACK)} == {h.name for h in files}
    for h in files:
        rb.remove(h)
    assert list(rb.list(FileType.PACK)) == []
    assert faulty.injected["before"] > 20 and faulty.injected["after"] > 20


def test_fault_counts_match_logged_retries_when_a_retry_finds_its_work_done(
    local: LocalBackend,
) -> None:
    """A save that failed after storing its file is retried; if the retry is also dealt an
    "after" fault, the inner save answers AlreadyExists first and that fault never happens.
    FaultyBackend must not count it: the fault tests compare its counts with the log."""
    faulty = FaultyBackend(local)
    fates = iter(["after", "after", None])
    faulty._roll = lambda: next(fates)  # type: ignore[method-assign]
    lines: list[RetryEvent] = []
    rb = RetryBackend(faulty, base_delay=0.0001, log=lines.append)
    rb.save(Handle(FileType.PACK, new_id()), b"data")
    assert faulty.injected["after"] == len(lines) == 1
