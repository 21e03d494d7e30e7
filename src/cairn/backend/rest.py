"""restic's REST protocol (spec §16.4): ``rest:http(s)://[user:pass@]host[:port]/path/``.

Served by rest-server and by ``rclone serve restic``. API version 2 is requested on every
request; a server that answers a listing in version 1 (names only) gets one ``HEAD`` per
file for the sizes. The two servers differ in ways the contract hides (spec §16.4 table):

- rclone overwrites an existing name while rest-server refuses (403), so ``save`` asks
  with ``HEAD`` first and maps a 403 on an existing name to AlreadyExistsError;
- a ``DELETE`` of a missing file is 404 on rclone but 200 on rest-server, so ``remove``
  asks with ``HEAD`` first unless the server is known to be rclone (``Server: rclone/``);
- a listing of a missing directory is ``[]`` on rclone and 404 on rest-server (empty).

The protocol logic here is independent of the connection: :class:`RestBackend` takes a
:class:`~cairn.backend._http.Transport`, HTTP/1.1 over TCP here, HTTP/2 over the pipes of
an ``rclone serve restic --stdio`` child in :mod:`cairn.backend.rclone`.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator, Mapping
from urllib.parse import quote, unquote, urlsplit

from cairn.backend._http import Body, HttpResponse, Transport, Urllib3Transport
from cairn.backend.base import Backend, FileInfo, FileType, Handle, is_id_name
from cairn.errors import (
    AlreadyExistsError,
    AppendOnlyError,
    AuthenticationError,
    BackendError,
    BackendLocationError,
    NotFoundError,
    TransientBackendError,
    UsageError,
)

API_V2 = "application/vnd.x.restic.rest.v2"

#: restic's default number of parallel requests for rest: and rclone:.
DEFAULT_CONNECTIONS = 5

_OPTIONS = {"connections", "cacert"}


class RestBackend(Backend):
    """A repository behind restic's REST protocol, reached through ``transport``."""

    def __init__(
        self,
        transport: Transport,
        base_path: str,
        location: str,
        *,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        #: URL path of the repository without a trailing slash ("" for the server root).
        self.base_path = base_path.rstrip("/")
        self.location = location
        self.transport = transport
        self.connections = transport.connections
        self._headers: dict[str, str] = {"accept": API_V2}
        if username is not None or password is not None:
            token = f"{username or ''}:{password or ''}".encode()
            self._headers["authorization"] = "Basic " + base64.b64encode(token).decode()
        # Learnt from the Server header: rclone answers 404 to a DELETE of a missing file.
        self._delete_reports_missing = False
        # Names whose upload failed here. rclone's object cache may keep reporting such a
        # file (deleted on disk) as present, so their next save skips the existence check:
        # the name is a content hash and the earlier attempt was ours.
        self._failed_saves: set[Handle] = set()

    # --- requests --------------------------------------------------------------

    def _url(self, handle: Handle) -> str:
        if handle.type is FileType.CONFIG:
            return f"{self.base_path}/config"
        # Unlike on disk, data files are not sharded in URLs.
        return f"{self.base_path}/{handle.type.value}/{quote(handle.name, safe='')}"

    def _request(
        self,
        method: str,
        path: str,
        *,
        body: Body | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> HttpResponse:
        all_headers = dict(self._headers)
        if headers:
            all_headers.update(headers)
        resp = self.transport.request(method, path, all_headers, body)
        if resp.headers.get("server", "").startswith("rclone/"):
            self._delete_reports_missing = True
        return resp

    def _fail(self, resp: HttpResponse, what: str) -> BackendError:
        """The error for an unexpected status (the caller handled the expected ones)."""
        status = resp.status
        detail = resp.body[:200].decode("utf-8", "replace").strip()
        msg = f"{self.location}: {what}: server answered {status}" + (
            f" ({detail})" if detail else ""
        )
        if status == 401:
            return AuthenticationError(f"{self.location}: the server refused the credentials")
        if status == 403:
            return AuthenticationError(f"{self.location}: {what}: access denied (403)")
        if status == 404:
            return NotFoundError(f"{self.location}: {what}: not found")
        if status == 507:
            return BackendError(f"{self.location}: {what}: the server is out of space")
        if status in (408, 429) or (status >= 500 and status not in (501, 505)):
            return TransientBackendError(msg)
        return BackendError(msg)

    # --- Backend -----------------------------------------------------------------

    def create(self) -> None:
        config = Handle(FileType.CONFIG)
        if self.exists(config):
            raise AlreadyExistsError(f"{self.location}: a repository already exists here")
        resp = self._request(
            "POST",
            f"{self.base_path}/?create=true",
            body=b"",
            headers={"content-type": "binary/octet-stream", "content-length": "0"},
        )
        if resp.status != 200:
            raise self._fail(resp, "create repository")

    def save(self, handle: Handle, data: Body) -> None:
        is_config = handle.type is FileType.CONFIG
        # rclone would silently overwrite; names are content hashes, so a HEAD is cheap
        # insurance that "never overwrite" holds on every server.
        retrying = handle in self._failed_saves
        if not is_config and not retrying and self.exists(handle):
            raise AlreadyExistsError(f"{handle} already exists in {self.location}")
        size = memoryview(data).nbytes
        try:
            resp = self._request(
                "POST",
                self._url(handle),
                body=data,
                headers={"content-type": "application/octet-stream", "content-length": str(size)},
            )
        except BackendError:
            self._failed_saves.add(handle)
            raise
        if resp.status == 200:
            self._failed_saves.discard(handle)
            return
        if resp.status >= 500:
            self._failed_saves.add(handle)
        if resp.status == 403:
            if not is_config and self.exists(handle):
                raise AlreadyExistsError(f"{handle} already exists in {self.location}")
            if is_config and self.exists(handle):
                raise BackendError(
                    f"{self.location}: the server refused to replace config "
                    "(append-only or a rest-server, which never overwrites)"
                )
        raise self._fail(resp, f"save {handle}")

    def load(self, handle: Handle, offset: int = 0, length: int | None = None) -> bytes:
        if self._check_range(handle, offset, length):
            return b""
        headers = {}
        if offset or length is not None:
            end = "" if length is None else str(offset + length - 1)
            headers["range"] = f"bytes={offset}-{end}"
        resp = self._request("GET", self._url(handle), headers=headers)
        if resp.status == 206:
            data = resp.body
        elif resp.status == 200:
            # A server that ignores Range sends the whole file.
            data = (
                resp.body
                if not headers
                else resp.body[offset : None if length is None else offset + length]
            )
        elif resp.status == 404:
            raise NotFoundError(f"{handle} does not exist in {self.location}")
        elif resp.status == 416:
            raise BackendError(f"{handle}: range at offset {offset} is beyond the end of the file")
        else:
            raise self._fail(resp, f"load {handle}")
        if length is not None and len(data) != length:
            raise BackendError(
                f"{handle}: short read ({len(data)} of {length} bytes at offset {offset})"
            )
        return data

    def stat(self, handle: Handle) -> int:
        resp = self._request("HEAD", self._url(handle))
        if resp.status == 404:
            raise NotFoundError(f"{handle} does not exist in {self.location}")
        if resp.status != 200:
            raise self._fail(resp, f"stat {handle}")
        try:
            return int(resp.headers["content-length"])
        except (KeyError, ValueError):
            raise BackendError(f"{self.location}: no valid Content-Length for {handle}") from None

    def list(self, file_type: FileType) -> Iterator[FileInfo]:
        if file_type is FileType.CONFIG:
            raise ValueError("config is not listed")
        resp = self._request("GET", f"{self.base_path}/{file_type.value}/")
        if resp.status == 404 and not resp.headers.get("server", "").startswith("rclone/"):
            return  # rest-server: the directory does not exist (yet)
        if resp.status != 200:
            raise self._fail(resp, f"list {file_type.value}")
        try:
            entries = json.loads(resp.body)
        except ValueError as e:
            raise BackendError(f"{self.location}: invalid listing of {file_type.value}") from e
        if not isinstance(entries, list):
            raise BackendError(f"{self.location}: invalid listing of {file_type.value}")
        if resp.headers.get("content-type", "").startswith(API_V2):
            for entry in entries:
                if not isinstance(entry, dict):
                    raise BackendError(f"{self.location}: invalid listing of {file_type.value}")
                name, size = entry.get("name"), entry.get("size")
                if isinstance(name, str) and is_id_name(name) and isinstance(size, int):
                    yield FileInfo(name, size)
            return
        # API v1: names only; ask for each size.
        for name in entries:
            if isinstance(name, str) and is_id_name(name):
                try:
                    yield FileInfo(name, self.stat(Handle(file_type, name)))
                except NotFoundError:
                    continue  # removed while listing

    def remove(self, handle: Handle) -> None:
        if not self._delete_reports_missing and not self.exists(handle):
            raise NotFoundError(f"{handle} does not exist in {self.location}")
        resp = self._request("DELETE", self._url(handle))
        if resp.status == 200:
            return
        if resp.status == 404:
            raise NotFoundError(f"{handle} does not exist in {self.location}")
        if resp.status == 403:
            raise AppendOnlyError(
                f"{self.location}: the server is append-only and refused to delete {handle}"
            )
        raise self._fail(resp, f"remove {handle}")

    def close(self) -> None:
        self.transport.close()


# --- rest: URLs ---------------------------------------------------------------------


def connections_option(options: Mapping[str, str], key: str) -> int:
    """The positive integer ``options[key]`` (restic's default 5 when absent)."""
    raw = options.get(key)
    if raw is None:
        return DEFAULT_CONNECTIONS
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise UsageError(f"-o {key}={raw}: expected a positive number")
    return value


def check_options(options: Mapping[str, str], namespace: str, known: set[str]) -> None:
    """Refuse unknown ``namespace.*`` options (other namespaces are not ours to judge)."""
    for key in options:
        ns, _, name = key.partition(".")
        if ns == namespace and name not in known:
            raise UsageError(
                f"unknown option -o {key} (known: "
                + ", ".join(f"{namespace}.{k}" for k in sorted(known))
                + ")"
            )


def from_location(rest: str, options: dict[str, str]) -> RestBackend:
    """Build the backend for ``rest:<rest>``."""
    check_options(options, "rest", _OPTIONS)
    parts = urlsplit(rest)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise BackendLocationError(
            f"invalid REST URL {rest!r}: expected rest:http(s)://[user:pass@]host[:port]/path"
        )
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if not hostport or hostport.startswith(":"):
        raise BackendLocationError(f"invalid REST URL {rest!r}: no host")
    try:
        _ = parts.port  # validates the port
    except ValueError as e:
        raise BackendLocationError(f"invalid REST URL {rest!r}: {e}") from None
    username: str | None = None
    password: str | None = None
    if at:
        user, colon, pw = userinfo.partition(":")
        username = unquote(user)
        password = unquote(pw) if colon else None
    if not username and password is None:
        # restic 0.16.1: the environment applies only when the URL carries no credentials.
        env_user = os.environ.get("RESTIC_REST_USERNAME")
        env_pass = os.environ.get("RESTIC_REST_PASSWORD")
        if env_user or env_pass:
            username, password = env_user or "", env_pass or ""
    cacert = options.get("rest.cacert")
    if cacert is not None and not os.path.isfile(cacert):
        raise UsageError(f"-o rest.cacert={cacert}: no such file")
    # restic removes one trailing slash; our paths always add their own.
    path = parts.path[:-1] if parts.path.endswith("/") else parts.path
    shown_user = f"{username}@" if username else ""
    location = f"rest:{parts.scheme}://{shown_user}{hostport}{path}/"
    transport = Urllib3Transport(
        f"{parts.scheme}://{hostport}",
        connections=connections_option(options, "rest.connections"),
        ca_file=cacert,
    )
    return RestBackend(transport, path, location, username=username, password=password)
