"""HTTP/2 with prior knowledge over a pair of pipes (``rclone serve restic --stdio``).

One HTTP/2 connection carries every request as its own stream, so parallel requests from
many threads are multiplexed over the single pipe pair. The sans-IO ``h2`` library keeps
the protocol state; this module only moves bytes:

- a *reader* thread reads the child's stdout, feeds ``h2`` and hands events to the waiting
  streams (it never blocks on writing, so the child can always make progress);
- a *writer* thread drains a queue of outgoing bytes into the child's stdin. Everything
  ``h2`` produces is queued under the connection lock, so frames keep their order, and a
  request thread never blocks in a pipe write while holding the lock. The queue stays
  small because request bodies are sent only as far as the peer's flow-control window.

One lock guards the ``h2`` connection; a condition on it wakes senders when the peer
opens its window and waiters when a stream finishes.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Mapping

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import hyperframe.frame
from h2.errors import ErrorCodes

from cairn.backend._http import READ_TIMEOUT, Body, HttpResponse
from cairn.errors import BackendError, TransientBackendError

#: Our receive windows: large, so that a download is not throttled by window updates.
_STREAM_WINDOW = 16 * 1024 * 1024
_CONNECTION_WINDOW = 64 * 1024 * 1024
#: Largest DATA frame we accept (bigger frames = fewer Python-level events).
_MAX_FRAME = 1024 * 1024
_READ_SIZE = 1024 * 1024


def _data_frame_repr(self: hyperframe.frame.DataFrame) -> str:
    return f"<{len(self.data)} bytes>"


# h2 formats ``repr(frame)`` for its trace log on every frame it receives, even with
# logging off, and a DATA frame's repr copies the body and hex-encodes all of it only to
# keep 20 characters: measured 0.5 s of CPU per 500 MiB downloaded (a quarter of a
# restore's CPU). The repr of a DATA frame becomes its length; nothing else reads it.
hyperframe.frame.DataFrame._body_repr = _data_frame_repr  # type: ignore[method-assign,assignment]


class _Stream:
    """The state of one request while it is in flight."""

    __slots__ = ("chunks", "done", "error", "headers", "last_activity", "status")

    def __init__(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.chunks: list[bytes] = []
        self.done = threading.Event()
        self.error: BackendError | None = None
        self.last_activity = time.monotonic()


class H2PipeTransport:
    """Requests over one HTTP/2 connection on ``(read_fd, write_fd)``; thread-safe.

    ``describe_exit`` is called when the pipe closes, to explain why (e.g. the tail of
    the child's error output). ``idle_timeout`` bounds the wait for any progress of one
    request.
    """

    def __init__(
        self,
        read_fd: int,
        write_fd: int,
        *,
        connections: int,
        describe_exit: Callable[[], str] = lambda: "the connection closed",
        idle_timeout: float = READ_TIMEOUT,
        authority: str = "localhost",
    ) -> None:
        self.connections = connections
        self._read_fd = read_fd
        self._write_fd = write_fd
        self._describe_exit = describe_exit
        self._idle = idle_timeout
        self._authority = authority
        self._slots = threading.BoundedSemaphore(connections)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._streams: dict[int, _Stream] = {}
        self._dead: BackendError | None = None
        self._out: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()

        config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        self._conn = h2.connection.H2Connection(config=config)
        with self._lock:
            self._conn.initiate_connection()
            # Through update_settings, so that h2 applies them when the peer acknowledges.
            self._conn.update_settings(
                {
                    h2.settings.SettingCodes.ENABLE_PUSH: 0,
                    h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: _STREAM_WINDOW,
                    h2.settings.SettingCodes.MAX_FRAME_SIZE: _MAX_FRAME,
                }
            )
            self._conn.increment_flow_control_window(_CONNECTION_WINDOW - 65535)
            self._flush()
        self._writer = threading.Thread(target=self._write_loop, name="h2-writer", daemon=True)
        self._reader = threading.Thread(target=self._read_loop, name="h2-reader", daemon=True)
        self._writer.start()
        self._reader.start()

    # --- request side ----------------------------------------------------------

    def request(
        self, method: str, path: str, headers: Mapping[str, str], body: Body | None = None
    ) -> HttpResponse:
        view = memoryview(body).cast("B") if body is not None else memoryview(b"")
        with self._slots:
            stream = _Stream()
            with self._lock:
                self._raise_if_dead()
                sid = self._conn.get_next_available_stream_id()
                self._streams[sid] = stream
                fields = [
                    (":method", method),
                    (":scheme", "http"),
                    (":authority", self._authority),
                    (":path", path),
                    *((k.lower(), v) for k, v in headers.items()),
                ]
                self._conn.send_headers(sid, fields, end_stream=not view)
                self._flush()
            try:
                if view:
                    self._send_body(sid, stream, view)
                self._wait(sid, stream, f"{method} {path}")
            finally:
                with self._lock:
                    self._streams.pop(sid, None)
            return HttpResponse(stream.status, stream.headers, b"".join(stream.chunks))

    def _send_body(self, sid: int, stream: _Stream, view: memoryview) -> None:
        """Send ``view`` as DATA frames, as far as the peer's windows allow at each moment."""
        pos, total = 0, len(view)
        with self._lock:
            while pos < total:
                if stream.done.is_set():
                    # The server answered (or reset) before taking the whole body.
                    self._reset(sid)
                    return
                self._raise_if_dead()
                room = min(
                    self._conn.local_flow_control_window(sid),
                    self._conn.max_outbound_frame_size,
                    total - pos,
                )
                if room <= 0:
                    if not self._changed.wait(self._idle) and not stream.done.is_set():
                        self._reset(sid)
                        raise TransientBackendError("the server stopped accepting data")
                    continue
                end = pos + room
                self._conn.send_data(sid, view[pos:end], end_stream=end == total)
                pos = end
                stream.last_activity = time.monotonic()
                self._flush()

    def _wait(self, sid: int, stream: _Stream, what: str) -> None:
        while not stream.done.wait(min(self._idle, 5.0)):
            if time.monotonic() - stream.last_activity > self._idle:
                with self._lock:
                    self._reset(sid)
                raise TransientBackendError(f"{what}: no answer within {self._idle:.0f}s")
        if stream.error is not None:
            raise stream.error

    def _reset(self, sid: int) -> None:
        """Abandon a stream (lock held); harmless when it is already closed."""
        try:
            self._conn.reset_stream(sid, ErrorCodes.CANCEL)
        except h2.exceptions.H2Error:
            return
        self._flush()

    def _raise_if_dead(self) -> None:
        if self._dead is not None:
            raise self._dead

    def _flush(self) -> None:
        """Queue what h2 wants to send (lock held, so frames keep their order)."""
        data = self._conn.data_to_send()
        if data:
            self._out.put(data)

    # --- I/O threads -------------------------------------------------------------

    def _write_loop(self) -> None:
        while True:
            data = self._out.get()
            if data is None:
                return
            view = memoryview(data)
            try:
                while view:
                    view = view[os.write(self._write_fd, view) :]
            except OSError:
                self._die()
                return

    def _read_loop(self) -> None:
        while True:
            try:
                data = os.read(self._read_fd, _READ_SIZE)
            except OSError:
                data = b""
            if not data:
                self._die()
                return
            with self._lock:
                try:
                    events = self._conn.receive_data(data)
                except h2.exceptions.H2Error as e:
                    self._dead = BackendError(f"HTTP/2 protocol error: {e}")
                    self._fail_all_locked()
                    return
                for event in events:
                    self._dispatch(event)
                self._flush()
                self._changed.notify_all()

    def _dispatch(self, event: h2.events.Event) -> None:
        sid = getattr(event, "stream_id", None)
        stream = self._streams.get(sid) if sid else None
        if stream is not None:
            stream.last_activity = time.monotonic()
        if isinstance(event, h2.events.DataReceived):
            # Give the window back at once: the whole body is kept anyway.
            self._conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            if stream is not None and event.data:
                stream.chunks.append(event.data)
        elif isinstance(event, h2.events.ResponseReceived) and stream is not None:
            for name, value in event.headers:
                key, val = str(name), str(value)
                if key == ":status":
                    stream.status = int(val)
                else:
                    stream.headers[key] = val
        elif isinstance(event, h2.events.StreamEnded) and stream is not None:
            stream.done.set()
        elif isinstance(event, h2.events.StreamReset) and stream is not None:
            if not stream.done.is_set():
                stream.error = TransientBackendError(
                    f"the server reset the request ({ErrorCodes(event.error_code).name})"
                )
                stream.done.set()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self._dead = BackendError(f"the server closed the connection: {event.error_code}")
            self._fail_all_locked()

    def _die(self) -> None:
        with self._lock:
            if self._dead is None:
                self._dead = BackendError(self._describe_exit())
            self._fail_all_locked()

    def _fail_all_locked(self) -> None:
        assert self._dead is not None
        for stream in self._streams.values():
            if not stream.done.is_set():
                stream.error = self._dead
                stream.done.set()
        self._changed.notify_all()

    def close(self) -> None:
        """Say goodbye and stop the writer; the caller then closes the pipes."""
        with self._lock:
            if self._dead is None:
                self._dead = BackendError("the connection is closed")
                try:
                    self._conn.close_connection()
                    self._flush()
                except h2.exceptions.H2Error:
                    pass
        self._out.put(None)
        self._writer.join(5)

    def join(self, timeout: float) -> None:
        """Wait for the reader thread to see the end of the pipe."""
        self._reader.join(timeout)
