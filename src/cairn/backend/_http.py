"""HTTP transports for the REST protocol: what rest.py needs from a connection, and
the HTTP/1.1 one over TCP (urllib3, pooled and thread-safe).

A transport sends one request and returns the whole response. Failures below HTTP
(refused, reset, timeout, TLS) come out as cairn errors: transient when a retry may cure
them. A host that cannot be reached at all before any request succeeded is *not*
transient, so that a wrong URL or a server that is down fails fast with one message
instead of minutes of retries; once the server has answered, a refused connection means
it is restarting and is worth retrying. Likewise the first answer is awaited only for
the connect timeout, not the long read timeout: a port that accepts connections but never
answers (a wedged host, another service) must not hold the user for minutes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import urllib3
from urllib3.exceptions import (
    ConnectTimeoutError,
    EmptyPoolError,
    HTTPError,
    NameResolutionError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    SSLError,
)

from cairn.errors import BackendError, TransientBackendError

Body = bytes | bytearray | memoryview

#: Seconds to wait for a TCP (and TLS) connection, and for each read on an open one.
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 120.0


@dataclass(frozen=True)
class HttpResponse:
    """A complete response; header names are lower case."""

    status: int
    headers: Mapping[str, str]
    body: bytes


class Transport(Protocol):
    """Sends requests to one server; implementations are thread-safe."""

    #: How many requests may usefully run at once.
    connections: int

    def request(
        self, method: str, path: str, headers: Mapping[str, str], body: Body | None = None
    ) -> HttpResponse:
        """Send ``method path`` (path absolute on the server, already quoted)."""
        ...

    def close(self) -> None:
        """Release connections (and child processes)."""
        ...


class Urllib3Transport:
    """HTTP/1.1 (or HTTPS) to one host through a bounded urllib3 connection pool."""

    def __init__(
        self,
        origin: str,
        *,
        connections: int,
        ca_file: str | None = None,
        connect_timeout: float = CONNECT_TIMEOUT,
        read_timeout: float = READ_TIMEOUT,
    ) -> None:
        self.origin = origin
        self.connections = connections
        kwargs: dict[str, object] = {}
        if origin.startswith("https:") and ca_file:
            kwargs["ca_certs"] = ca_file
        self._timeout = urllib3.Timeout(connect=connect_timeout, read=read_timeout)
        # block=True: at most ``connections`` sockets; extra threads wait for a free one.
        # retries=False: cairn.backend.retry decides about retries, with backoff and logging.
        self._pool = urllib3.connection_from_url(
            origin,
            maxsize=connections,
            block=True,
            retries=False,
            timeout=self._timeout,
            **kwargs,
        )
        self._reached = False
        self._first_wait = connect_timeout
        self._first_timeout = urllib3.Timeout(connect=connect_timeout, read=connect_timeout)

    def request(
        self, method: str, path: str, headers: Mapping[str, str], body: Body | None = None
    ) -> HttpResponse:
        try:
            resp = self._pool.urlopen(
                method,
                path,
                # urllib3 sends any buffer as-is (its annotation names only bytes)
                body=body,  # type: ignore[arg-type]
                headers=dict(headers),
                redirect=False,
                preload_content=False,
                decode_content=False,
                # until the server has answered once, a silent server is a wrong address
                timeout=self._timeout if self._reached else self._first_timeout,
            )
            try:
                data = resp.read()
            except BaseException:
                resp.close()  # a half-read connection must not go back into the pool
                raise
            finally:
                resp.release_conn()
        except HTTPError as e:
            raise self._error(e, method, path) from e
        except OSError as e:  # a socket error urllib3 did not wrap
            raise TransientBackendError(f"{method} {self._url(path)}: {e}") from e
        self._reached = True
        return HttpResponse(resp.status, {k.lower(): v for k, v in resp.headers.items()}, data)

    def _url(self, path: str) -> str:
        return self.origin + path

    def _error(self, e: HTTPError, method: str, path: str) -> BackendError:
        where = f"{method} {self._url(path)}"
        if isinstance(e, NameResolutionError):
            return BackendError(f"{self.origin}: cannot resolve the host name")
        if isinstance(e, SSLError):
            return BackendError(f"{self.origin}: TLS failed: {e}")
        if isinstance(e, NewConnectionError | ConnectTimeoutError):
            reason = "connection refused" if isinstance(e, NewConnectionError) else "timed out"
            msg = f"{self.origin}: cannot connect ({reason})"
            return TransientBackendError(msg) if self._reached else BackendError(msg)
        if isinstance(e, ReadTimeoutError):
            if not self._reached:
                return BackendError(
                    f"{self.origin}: connected, but no answer within "
                    f"{self._first_wait:g}s (is this a REST server?)"
                )
            return TransientBackendError(f"{where}: the server did not answer in time")
        if isinstance(e, ProtocolError | EmptyPoolError):
            return TransientBackendError(f"{where}: connection broken ({e})")
        return TransientBackendError(f"{where}: {e}")

    def close(self) -> None:
        self._pool.close()
