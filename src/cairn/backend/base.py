"""The storage interface: named files of a few types, and nothing about their content.

A backend never sees a key or a plaintext. It stores whole files atomically (a file is
absent or complete, never partial), loads whole files or byte ranges, lists the files of
one type with their sizes, and removes files. Every backend passes the shared contract
suite in ``tests/backend/contract.py``.
"""

from __future__ import annotations

import contextlib
import enum
import mmap
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, cast


class FileType(enum.Enum):
    """The kinds of files in a restic repository; the value is the directory name."""

    CONFIG = "config"
    KEY = "keys"
    SNAPSHOT = "snapshots"
    INDEX = "index"
    LOCK = "locks"
    PACK = "data"


#: Every directory a repository has besides ``config``.
DIR_TYPES = (FileType.KEY, FileType.SNAPSHOT, FileType.INDEX, FileType.LOCK, FileType.PACK)


@dataclass(frozen=True)
class Handle:
    """A file in the repository: its type and name (the name is "" for ``config``)."""

    type: FileType
    name: str = ""

    def __post_init__(self) -> None:
        if self.type is FileType.CONFIG:
            if self.name:
                raise ValueError("the config file has no name")
        elif not self.name:
            raise ValueError(f"a {self.type.value} file needs a name")

    def relpath(self) -> str:
        """Path in restic's default layout: packs sharded by their first two hex digits."""
        if self.type is FileType.CONFIG:
            return "config"
        if self.type is FileType.PACK:
            return f"data/{self.name[:2]}/{self.name}"
        return f"{self.type.value}/{self.name}"

    def __str__(self) -> str:
        return self.relpath()


@dataclass(frozen=True)
class FileInfo:
    """One entry of a listing."""

    name: str
    size: int


def is_id_name(name: str) -> bool:
    """True for the names restic lists: exactly 64 lowercase hex digits."""
    return len(name) == 64 and all(c in "0123456789abcdef" for c in name)


class Backend(ABC):
    """Byte storage for one repository location. Implementations must be thread-safe."""

    #: A human-readable location (the URL the user gave, without secrets).
    location: str = ""

    #: How many requests the caller may usefully run at once.
    connections: int = 2

    #: Largest range worth reading in one request when several blobs of a pack are
    #: wanted: big for remote stores, where each request costs a round trip.
    read_span: int = 32 << 20

    #: Whether a process forked from this one may read packs through this backend while
    #: the parent goes on using it: true when each call opens what it reads (a local
    #: directory), false when calls share a connection (a forked copy would garble it).
    fork_safe: bool = False

    #: Whether a file, once saved, is at once in every client's listing (a local disk).
    #: Then a lock needs no pause before its second look for other locks (restic waits
    #: 200 ms, for stores and network file systems whose listings lag behind).
    consistent_listing: bool = False

    @abstractmethod
    def create(self) -> None:
        """Prepare an empty repository location (directories, bucket, ...).

        Raises AlreadyExistsError when a ``config`` file is already there.
        """

    @abstractmethod
    def save(self, handle: Handle, data: bytes | bytearray | memoryview) -> None:
        """Store a whole file atomically. Saving an existing name is an error
        (AlreadyExistsError) except for ``config``, which may be replaced."""

    def temp_file(self, buffering: int) -> BinaryIO:
        """A new anonymous file to build a pack in, for :meth:`save_file`.

        This default is the system's temporary directory. A backend that can keep such a
        file as the stored one, without copying it, makes it where it can do that."""
        file = tempfile.TemporaryFile("w+b", buffering=buffering, prefix="cairn-pack-")  # noqa: SIM115 - the caller's
        return cast(BinaryIO, file)

    def save_file(self, handle: Handle, file: BinaryIO, size: int) -> None:
        """Store the first ``size`` bytes of an open file, as :meth:`save` would (used for
        packs, which are built in temporary files). This default maps the file and hands
        the mapping to :meth:`save`; a backend that can copy from a file descriptor
        overrides it and spares the mapping (whose pages count as the process's memory).

        A backend may keep a file from :meth:`temp_file` as the stored file itself: the
        caller reads it afterwards at most, and then closes it, but never writes to it."""
        if size == 0:
            self.save(handle, b"")
            return
        mm = mmap.mmap(file.fileno(), size, prot=mmap.PROT_READ)
        try:
            with memoryview(mm) as view:
                self.save(handle, view)
        finally:
            # A backend that kept a view: the mapping goes with its last reference.
            with contextlib.suppress(BufferError):
                mm.close()

    @abstractmethod
    def load(self, handle: Handle, offset: int = 0, length: int | None = None) -> bytes:
        """Read ``length`` bytes from ``offset`` (to the end when ``length`` is None).

        Raises NotFoundError for a missing file; a range beyond the end is an error."""

    @abstractmethod
    def stat(self, handle: Handle) -> int:
        """Size of the file in bytes; NotFoundError when missing."""

    @abstractmethod
    def list(self, file_type: FileType) -> Iterator[FileInfo]:
        """Every file of one type (not ``config``); names that are not IDs are skipped.
        A missing directory lists as empty."""

    @abstractmethod
    def remove(self, handle: Handle) -> None:
        """Delete a file. NotFoundError when it does not exist."""

    def _check_range(self, handle: Handle, offset: int, length: int | None) -> bool:
        """Validate a load's range for backends that speak HTTP ranges; True when the range
        is empty (no Range header can say that), after checking the offset is in the file."""
        if offset < 0 or (length is not None and length < 0):
            raise ValueError("offset and length must not be negative")
        if length != 0:
            return False
        size = self.stat(handle)
        if offset > size:
            from cairn.errors import BackendError

            raise BackendError(f"{handle}: offset {offset} is beyond the end ({size} bytes)")
        return True

    def exists(self, handle: Handle) -> bool:
        """True when the file exists."""
        from cairn.errors import NotFoundError

        try:
            self.stat(handle)
        except NotFoundError:
            return False
        return True

    def close(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing
        """Release connections and child processes."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
