"""Where the chunks of big files wait for the blob workers: one fixed ring of memory.

The readers cut chunks in a buffer they reuse, so each chunk handed to a blob worker is a
copy. As a ``bytes`` object per chunk (0.5-8 MiB each), those copies came from the heap,
which kept every size it had ever served and split the holes for smaller objects: on
/usr/lib + /usr/share a backup's heap held 30-60 MiB free. Here they are copied into a ring
allocated once, outside the heap; a blob worker gives its region back when the blob is
stored. The ring's size bounds the chunk data queued, as a byte budget would.
"""

from __future__ import annotations

import collections
import threading

from cairn import heap


class ChunkRing:
    """A ring buffer of ``size`` bytes that copies chunks in and hands out views of them.

    Regions are taken at the head and given back in any order; space is reused once every
    older region is given back (blob workers finish in roughly the order chunks come).
    A chunk goes in whole: one that does not fit before the end of the ring starts again
    at its beginning.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._buffer = heap.private_buffer(size)
        self._view = memoryview(self._buffer)
        #: Regions in the order they were taken: [start, end, given back].
        self._taken: collections.deque[list[int]] = collections.deque()
        self._cond = threading.Condition()

    def copy(self, data: memoryview) -> tuple[memoryview, list[int]]:
        """A copy of ``data`` (at most ``size`` bytes) in the ring, and the token to give
        back with :meth:`give_back`. Waits while there is no room."""
        n = len(data)
        if n > self.size:
            raise ValueError(f"a chunk of {n} bytes does not fit a ring of {self.size}")
        with self._cond:
            while (start := self._room(n)) is None:
                self._cond.wait()
            region = [start, start + n, 0]
            self._taken.append(region)
        # Outside the lock: the region is this thread's until it is given back.
        self._view[start : start + n] = data
        return self._view[start : start + n], region

    def give_back(self, region: list[int]) -> None:
        """The chunk in ``region`` is no longer used: its bytes may be written again."""
        with self._cond:
            region[2] = 1
            taken = self._taken
            while taken and taken[0][2]:
                taken.popleft()
            self._cond.notify_all()

    @property
    def used(self) -> int:
        """Bytes of the regions not yet given back (for the tests)."""
        with self._cond:
            return sum(end - start for start, end, back in self._taken if not back)

    def _room(self, n: int) -> int | None:
        """Where a region of ``n`` bytes can start now, or None."""
        taken = self._taken
        if not taken:
            return 0
        oldest, newest = taken[0][0], taken[-1][1]
        if taken[-1][0] >= oldest:
            # Not wrapped: free after the newest region, and before the oldest.
            if self.size - newest >= n:
                return newest
            return 0 if oldest >= n else None
        # Wrapped: free between the newest region and the oldest.
        return newest if oldest - newest >= n else None
