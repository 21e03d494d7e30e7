"""The chunk ring (archiver/chunkring.py): every chunk copied in reads back intact while it
is held, whatever order the blob workers give regions back in; a chunk that does not fit
waits for room instead of overwriting a held one."""

from __future__ import annotations

import queue
import random
import threading
import time

import pytest

from cairn.archiver.chunkring import ChunkRing


def test_chunks_read_back_intact_whatever_order_they_are_given_back() -> None:
    """One reader copies chunks in; two workers check and give them back, each at its own
    pace, so regions come back out of order and the reader often waits for room."""
    ring = ChunkRing(1000)
    work: queue.Queue[tuple[memoryview, list[int], bytes] | None] = queue.Queue()
    bad: list[int] = []

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        while (item := work.get()) is not None:
            view, region, data = item
            if rng.random() < 0.3:
                time.sleep(0.0005)  # a slow blob: the other worker overtakes it
            if bytes(view) != data:
                bad.append(region[0])
            ring.give_back(region)

    workers = [threading.Thread(target=worker, args=(seed,)) for seed in (1, 2)]
    for w in workers:
        w.start()
    rng = random.Random(3)
    for _ in range(3000):
        data = rng.randbytes(rng.randrange(1, 400))
        view, region = ring.copy(memoryview(data))
        work.put((view, region, data))
    for _ in workers:
        work.put(None)
    for w in workers:
        w.join()
    assert bad == []  # nothing was written over a region still held
    assert ring.used == 0


def test_a_chunk_without_room_waits_until_a_region_is_given_back() -> None:
    ring = ChunkRing(100)
    first, first_region = ring.copy(memoryview(b"a" * 60))
    copied = threading.Event()
    result: list[bytes] = []

    def copy_second() -> None:
        view, _ = ring.copy(memoryview(b"b" * 60))
        result.append(bytes(view))
        copied.set()

    worker = threading.Thread(target=copy_second)
    worker.start()
    assert not copied.wait(0.2)  # 40 bytes free after the first region, 0 before it
    assert bytes(first) == b"a" * 60
    ring.give_back(first_region)
    assert copied.wait(5)
    worker.join()
    assert result == [b"b" * 60]


def test_the_ring_wraps_to_its_start_when_the_end_is_too_short() -> None:
    ring = ChunkRing(100)
    a, ra = ring.copy(memoryview(b"a" * 40))
    b, rb = ring.copy(memoryview(b"b" * 40))
    ring.give_back(ra)  # 0-40 free again, 80-100 too short for 30
    c, rc = ring.copy(memoryview(b"c" * 30))
    assert rc[0] == 0 and bytes(b) == b"b" * 40 and bytes(c) == b"c" * 30
    ring.give_back(rb)
    ring.give_back(rc)
    assert ring.used == 0


def test_a_chunk_larger_than_the_ring_is_refused() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        ChunkRing(10).copy(memoryview(b"x" * 11))


def test_a_region_given_back_is_free_while_older_ones_are_held() -> None:
    """A big chunk held long by one worker does not keep the ring full: the room of the
    chunks after it, once given back, takes new ones."""
    ring = ChunkRing(100)
    big, rbig = ring.copy(memoryview(b"B" * 60))
    small, rsmall = ring.copy(memoryview(b"s" * 30))
    ring.give_back(rsmall)  # 60-100 free while 0-60 is still held
    again, ragain = ring.copy(memoryview(b"t" * 35))
    assert ragain[0] == 60 and bytes(again) == b"t" * 35
    assert bytes(big) == b"B" * 60
    ring.give_back(rbig)
    ring.give_back(ragain)
    assert ring.used == 0


def test_chunks_waiting_for_room_are_served_in_order() -> None:
    """A big chunk waiting for room is not overtaken by a small one that would fit: the
    small one waits behind it."""
    ring = ChunkRing(100)
    _, ra = ring.copy(memoryview(b"a" * 50))
    _, rb = ring.copy(memoryview(b"b" * 40))  # 90-100 free
    starts: dict[str, int] = {}

    def copy(label: str, n: int) -> None:
        view, region = ring.copy(memoryview(label.encode() * n))
        assert bytes(view) == label.encode() * n
        starts[label] = region[0]

    big = threading.Thread(target=copy, args=("B", 60))
    big.start()
    while ring._tickets < 3:  # the big request has its place in the queue
        time.sleep(0.001)
    small = threading.Thread(target=copy, args=("s", 5))
    small.start()
    time.sleep(0.2)
    assert starts == {}  # 10 bytes are free, but the big chunk came first
    ring.give_back(ra)  # 0-50 free: still too short for 60
    time.sleep(0.1)
    assert starts == {}
    ring.give_back(rb)
    big.join(5)
    small.join(5)
    # The big one first, at the start; the small one after it (served first it would
    # have gone after the newest region, at 90).
    assert starts == {"B": 0, "s": 60}


def test_a_request_given_up_does_not_hold_up_the_ones_behind_it() -> None:
    """A waiting copy interrupted by an exception (here: a condition whose wait raises
    once) gives up its turn; the next request is served when room comes."""
    ring = ChunkRing(100)
    _, held = ring.copy(memoryview(b"a" * 90))

    class Interrupted(Exception):
        pass

    real_wait = ring._cond.wait
    calls = 0

    def wait_once_interrupted(timeout: float | None = None) -> bool:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise Interrupted
        return real_wait(timeout)

    ring._cond.wait = wait_once_interrupted  # type: ignore[method-assign]
    with pytest.raises(Interrupted):
        ring.copy(memoryview(b"x" * 50))  # no room: waits, and is interrupted
    got: list[bytes] = []
    later = threading.Thread(target=lambda: got.append(bytes(ring.copy(memoryview(b"y" * 50))[0])))
    later.start()
    time.sleep(0.1)
    assert got == []
    ring.give_back(held)
    later.join(5)
    assert got == [b"y" * 50]
