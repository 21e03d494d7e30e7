"""Where the chunks of big files wait for the blob workers: one fixed ring of memory.

The readers cut chunks in a buffer they reuse, so each chunk handed to a blob worker is a
copy. As a ``bytes`` object per chunk (0.5-8 MiB each), those copies came from the heap,
which kept every size it had ever served and split the holes for smaller objects: on
/usr/lib + /usr/share a backup's heap held 30-60 MiB free. Here they are copied into a ring
allocated once, outside the heap; a blob worker gives its region back when the blob is
stored. The ring's size bounds the chunk data queued, as a byte budget would.
"""

from __future__ import annotations

import bisect
import threading

from cairn import heap


class ChunkRing:
    """A buffer of ``size`` bytes that copies chunks in and hands out views of them.

    Regions are taken after the newest one, wrapping to the start, and given back in any
    order. A region given back is free at once, even while older ones are held: a big
    chunk that one blob worker compresses for a long time does not keep the other from
    the chunks behind it. Requests are served in the order they come, so a big chunk
    waiting for room is not overtaken for ever by small ones.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._buffer = heap.private_buffer(size)
        self._view = memoryview(self._buffer)
        #: Held regions as [start, end], by start.
        self._taken: list[list[int]] = []
        #: Where the newest region ended: the next one is looked for from there.
        self._next = 0
        self._cond = threading.Condition()
        #: Requests take tickets and are served in their order; a request given up
        #: (interrupted while it waited) leaves its ticket in ``_given_up``.
        self._tickets = 0
        self._serving = 0
        self._given_up: set[int] = set()

    def copy(self, data: memoryview) -> tuple[memoryview, list[int]]:
        """A copy of ``data`` (at most ``size`` bytes) in the ring, and the token to give
        back with :meth:`give_back`. Waits while there is no room."""
        n = len(data)
        if n > self.size:
            raise ValueError(f"a chunk of {n} bytes does not fit a ring of {self.size}")
        with self._cond:
            ticket = self._tickets
            self._tickets += 1
            try:
                while ticket != self._serving or (start := self._room(n)) is None:
                    self._cond.wait()
            except BaseException:
                # The requests behind this one must not wait for it for ever.
                self._given_up.add(ticket)
                self._next_ticket()
                raise
            self._serving += 1
            self._next_ticket()
            region = [start, start + n]
            bisect.insort(self._taken, region)
            self._next = start + n
        # Outside the lock: the region is this thread's until it is given back.
        self._view[start : start + n] = data
        return self._view[start : start + n], region

    def give_back(self, region: list[int]) -> None:
        """The chunk in ``region`` is no longer used: its bytes may be written again."""
        with self._cond:
            self._taken.remove(region)
            self._cond.notify_all()

    def _next_ticket(self) -> None:
        """Skip the tickets given up, and wake the waiters: the next one may fit."""
        while self._serving in self._given_up:
            self._given_up.discard(self._serving)
            self._serving += 1
        self._cond.notify_all()

    @property
    def used(self) -> int:
        """Bytes of the regions not yet given back (for the tests)."""
        with self._cond:
            return sum(end - start for start, end in self._taken)

    def _room(self, n: int) -> int | None:
        """Where a region of ``n`` bytes can start now, or None: the first free stretch
        long enough at or after ``_next``, else the first one from the start."""
        first: int | None = None
        free_from = 0
        for start, end in (*self._taken, [self.size, self.size]):
            # Free: free_from .. start; of it, what lies at or after _next.
            at = max(free_from, self._next)
            if start - at >= n:
                return at
            if first is None and start - free_from >= n:
                first = free_from
            free_from = max(free_from, end)
        return first
