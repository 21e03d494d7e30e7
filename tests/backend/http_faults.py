"""Break an HTTP upload halfway, for the "a failed save leaves nothing behind" contract test."""

from __future__ import annotations

import http.client
import socket

import pytest


def break_next_large_send(monkeypatch: pytest.MonkeyPatch, threshold: int = 1 << 20) -> None:
    """Once ``threshold`` bytes have been sent (one large body cut in half, or many small
    blocks as botocore sends them), the connection is dropped, as when a network fails in
    the middle of an upload."""
    real_send = http.client.HTTPConnection.send
    sent = 0
    fired = False

    def send(self: http.client.HTTPConnection, data: object) -> None:
        nonlocal sent, fired
        size = memoryview(data).nbytes if isinstance(data, bytes | bytearray | memoryview) else 0
        if not fired and (size >= threshold or sent + size >= threshold):
            fired = True
            if size >= threshold:
                real_send(self, memoryview(data)[: size // 2])  # type: ignore[arg-type]
            # shutdown, not just close: other file objects may still hold the socket open
            if self.sock is not None:
                self.sock.shutdown(socket.SHUT_RDWR)
            self.close()
            raise ConnectionResetError("connection reset in the middle of the upload (test)")
        sent += size
        real_send(self, data)  # type: ignore[arg-type]

    monkeypatch.setattr(http.client.HTTPConnection, "send", send)
