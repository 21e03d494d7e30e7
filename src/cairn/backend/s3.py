"""Amazon S3 and compatible object stores (Ceph radosgw, MinIO, Garage, B2, ...): spec §16.3.

URLs are restic's: ``s3:https://host[:port]/bucket/prefix``, ``s3:http://...`` (no TLS),
``s3://host/bucket/prefix`` and ``s3:host/bucket/prefix`` (HTTPS), with
``s3:s3.amazonaws.com/bucket/prefix`` for AWS itself. Object keys are the default layout
below the prefix, without a leading slash when the prefix is empty (spec §20 pitfall 19).

boto3 does the protocol and the credentials (environment, shared config and credential
files, profiles, container and instance roles). Options: ``s3.region``,
``s3.bucket-lookup=auto|dns|path`` (auto: virtual-host style on AWS, path style
elsewhere, as restic's minio client does), ``s3.storage-class`` (archive classes apply to
data packs only, as in restic 0.17), ``s3.connections`` (default 5).

Retries are left to :mod:`cairn.backend.retry` (botocore's own are off) so that every
backend retries and logs the same way. Checksums beyond what S3 requires are off:
third-party servers reject botocore's newer default CRC trailers.
"""

from __future__ import annotations

import io
import posixpath
import threading
from collections.abc import Iterator, Mapping
from typing import Any, NoReturn

import boto3
import botocore.config
import botocore.exceptions
from boto3.s3.transfer import TransferConfig, create_transfer_manager

from cairn.backend.base import Backend, FileInfo, FileType, Handle, is_id_name
from cairn.backend.rest import check_options, connections_option
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

MiB = 1024 * 1024

#: Objects at least this large go up in parts, several at once; smaller ones in one PUT
#: (restic's packs are 16 MiB by default, where one request is cheapest).
MULTIPART_THRESHOLD = 64 * MiB
MULTIPART_CHUNK = 16 * MiB
MULTIPART_CONCURRENCY = 4

CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 120.0

_OPTIONS = {"region", "bucket-lookup", "storage-class", "connections"}
_ARCHIVE_CLASSES = {"GLACIER", "DEEP_ARCHIVE"}
_AUTH_CODES = {
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
    "AllAccessDisabled",
    "401",
    "403",
}
_TRANSIENT_CODES = {
    "SlowDown",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "InternalError",
    "ServiceUnavailable",
    "Throttling",
    "ThrottlingException",
}


class S3Location:
    """The parts of an ``s3:`` URL."""

    def __init__(self, rest: str) -> None:
        scheme = "https"
        body = rest
        if rest.startswith("//"):
            body = rest[2:]
        elif rest.startswith(("http://", "https://")):
            scheme, _, body = rest.partition("://")
        host, _, path = body.partition("/")
        bucket, _, prefix = path.strip("/").partition("/")
        if not host or not bucket:
            raise BackendLocationError(
                f"invalid S3 URL s3:{rest}: expected s3:[http(s)://]host[:port]/bucket[/prefix]"
            )
        self.scheme = scheme
        self.host = host
        self.bucket = bucket
        cleaned = posixpath.normpath("/" + prefix).strip("/")
        self.prefix = "" if cleaned in ("", ".") else cleaned
        self.is_aws = host == "s3.amazonaws.com" or (
            host.endswith(".amazonaws.com") and host.startswith("s3")
        )

    @property
    def endpoint(self) -> str | None:
        """The endpoint URL for boto3; None lets boto3 choose AWS's regional endpoint."""
        if self.host == "s3.amazonaws.com" and self.scheme == "https":
            return None
        return f"{self.scheme}://{self.host}"


class _BufferReader(io.RawIOBase):
    """A seekable read-only file over a buffer, so uploads need not copy it first."""

    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        self._view = memoryview(data).cast("B")
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        out = memoryview(b).cast("B")
        n = min(len(out), len(self._view) - self._pos)
        out[:n] = self._view[self._pos : self._pos + n]
        self._pos += n
        return n

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._view)}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def __len__(self) -> int:
        return len(self._view)


class S3Backend(Backend):
    """A repository under a prefix of one bucket."""

    def __init__(
        self,
        where: S3Location,
        *,
        region: str | None = None,
        bucket_lookup: str = "auto",
        storage_class: str | None = None,
        connections: int = 5,
        session: boto3.session.Session | None = None,
        multipart_threshold: int = MULTIPART_THRESHOLD,
    ) -> None:
        self.where = where
        self.bucket = where.bucket
        self.prefix = where.prefix
        self.location = f"s3:{where.scheme}://{where.host}/{where.bucket}" + (
            f"/{where.prefix}" if where.prefix else ""
        )
        self.connections = connections
        self.storage_class = storage_class
        self.multipart_threshold = multipart_threshold
        self._session = session or boto3.session.Session()
        style = {"auto": "virtual" if where.is_aws else "path", "dns": "virtual", "path": "path"}
        if bucket_lookup not in style:
            raise UsageError(f"-o s3.bucket-lookup={bucket_lookup}: expected auto, dns or path")
        self._addressing = style[bucket_lookup]
        if region is None:
            region = self._session.region_name
        if region is None:
            region = self._bucket_region() if where.is_aws else "us-east-1"
        self.region = region
        # Until the server has answered once, a port that accepts connections but never
        # answers is a wrong address, not a slow server: the first client waits only as
        # long as a connection may take, and is replaced by the patient one after the
        # first answer (from the same session, a second client costs about 10 ms).
        self._client = self._make_client(region, read_timeout=CONNECT_TIMEOUT)
        self._clients = [self._client]
        self._transfers: Any = None  # created on the first large upload
        self._reached = False
        self._reached_lock = threading.Lock()

    def _answered(self) -> None:
        """The server answered: from now on, wait for answers as long as uploads need."""
        if self._reached:
            return
        with self._reached_lock:
            if not self._reached:
                self._client = self._make_client(self.region, read_timeout=READ_TIMEOUT)
                self._clients.append(self._client)
                self._reached = True

    def _make_client(self, region: str, *, read_timeout: float) -> Any:
        config = botocore.config.Config(
            region_name=region,
            signature_version="s3v4",
            connect_timeout=CONNECT_TIMEOUT,
            read_timeout=read_timeout,
            max_pool_connections=self.connections + MULTIPART_CONCURRENCY,
            retries={"total_max_attempts": 1, "mode": "standard"},
            s3={"addressing_style": self._addressing},
            tcp_keepalive=True,
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        return self._session.client("s3", endpoint_url=self.where.endpoint, config=config)

    def _bucket_region(self) -> str:
        """Ask AWS where the bucket lives (restic's minio client does the same)."""
        client = self._session.client(
            "s3",
            endpoint_url=self.where.endpoint,
            config=botocore.config.Config(
                region_name="us-east-1",
                connect_timeout=CONNECT_TIMEOUT,
                read_timeout=READ_TIMEOUT,
                retries={"total_max_attempts": 1, "mode": "standard"},
            ),
        )
        try:
            resp = client.head_bucket(Bucket=self.bucket)
            headers = resp["ResponseMetadata"]["HTTPHeaders"]
        except botocore.exceptions.ClientError as e:
            headers = e.response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
        except botocore.exceptions.BotoCoreError:
            headers = {}
        region: str = headers.get("x-amz-bucket-region") or "us-east-1"
        return region

    def _key(self, handle: Handle) -> str:
        rel = handle.relpath()
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def _dir(self, file_type: FileType) -> str:
        return f"{self.prefix}/{file_type.value}/" if self.prefix else f"{file_type.value}/"

    # --- errors ------------------------------------------------------------------

    def _raise(self, e: Exception, what: str) -> NoReturn:
        raise self._error(e, what) from e

    def _error(self, e: Exception, what: str) -> BackendError:
        where = f"{self.location}: {what}"
        if isinstance(e, botocore.exceptions.ClientError):
            code = str(e.response.get("Error", {}).get("Code", ""))
            status = int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
            message = e.response.get("Error", {}).get("Message") or code or str(status)
            if code == "NoSuchBucket":
                return BackendError(f"{self.location}: the bucket {self.bucket!r} does not exist")
            if code in ("NoSuchKey", "404", "NotFound") or status == 404:
                return NotFoundError(f"{where}: not found")
            if code in _AUTH_CODES or status in (401, 403):
                return AuthenticationError(f"{where}: access denied ({message})")
            if code == "InvalidRange" or status == 416:
                return BackendError(f"{where}: range beyond the end of the file")
            if code in _TRANSIENT_CODES or status >= 500 or status in (408, 429):
                return TransientBackendError(f"{where}: {message}")
            return BackendError(f"{where}: {message}")
        if isinstance(
            e, botocore.exceptions.NoCredentialsError | botocore.exceptions.PartialCredentialsError
        ):
            return AuthenticationError(
                f"{self.location}: no usable AWS credentials "
                "(set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a profile)"
            )
        if isinstance(e, botocore.exceptions.SSLError):
            return BackendError(f"{self.location}: TLS failed: {e}")
        if isinstance(e, botocore.exceptions.ReadTimeoutError) and not self._reached:
            return BackendError(
                f"{self.location}: connected to {self.where.endpoint or 'AWS'}, but no answer "
                f"within {CONNECT_TIMEOUT:g}s (is this an S3 server?)"
            )
        if isinstance(
            e, botocore.exceptions.EndpointConnectionError | botocore.exceptions.ConnectTimeoutError
        ) and not isinstance(e, botocore.exceptions.ReadTimeoutError):
            msg = f"{self.location}: cannot connect to {self.where.endpoint or 'AWS'}"
            return TransientBackendError(msg) if self._reached else BackendError(msg)
        if isinstance(e, botocore.exceptions.BotoCoreError | OSError):
            return TransientBackendError(f"{where}: {e}")
        return BackendError(f"{where}: {e}")

    def _call(self, what: str, fn: Any, **kwargs: Any) -> Any:
        try:
            result = fn(**kwargs)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as e:
            error = self._error(e, what)  # judged by what was known when the call began
            if isinstance(e, botocore.exceptions.ClientError):
                self._answered()
            raise error from e
        self._answered()
        return result

    def _head(self, handle: Handle) -> int | None:
        """The size of the object, None when it does not exist."""
        try:
            resp = self._call(
                f"stat {handle}",
                self._client.head_object,
                Bucket=self.bucket,
                Key=self._key(handle),
            )
        except NotFoundError:
            return None
        return int(resp["ContentLength"])

    def _bucket_exists(self) -> bool:
        try:
            self._call("look up the bucket", self._client.head_bucket, Bucket=self.bucket)
        except NotFoundError:
            return False
        except AuthenticationError:
            return True  # it exists; we may only lack the right to ask about it
        return True

    def _not_found(self, handle: Handle) -> BackendError:
        """NotFoundError, or the clearer "no bucket" when config is missing with its bucket."""
        if handle.type is FileType.CONFIG and not self._bucket_exists():
            return BackendError(f"{self.location}: the bucket {self.bucket!r} does not exist")
        return NotFoundError(f"{handle} does not exist in {self.location}")

    # --- Backend -----------------------------------------------------------------

    def create(self) -> None:
        if not self._bucket_exists():
            kwargs: dict[str, Any] = {"Bucket": self.bucket}
            if self.region != "us-east-1":
                kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
            try:
                self._client.create_bucket(**kwargs)
            except botocore.exceptions.ClientError as e:
                code = e.response.get("Error", {}).get("Code")
                if code not in ("BucketAlreadyOwnedByYou",):
                    self._raise(e, f"create the bucket {self.bucket!r}")
            except botocore.exceptions.BotoCoreError as e:
                self._raise(e, f"create the bucket {self.bucket!r}")
        if self._head(Handle(FileType.CONFIG)) is not None:
            raise AlreadyExistsError(f"{self.location}: a repository already exists here")

    def save(self, handle: Handle, data: bytes | bytearray | memoryview) -> None:
        # Names are content hashes: a HEAD first keeps "never overwrite" on every S3
        # dialect (conditional PUTs are not implemented everywhere).
        if handle.type is not FileType.CONFIG and self._head(handle) is not None:
            raise AlreadyExistsError(f"{handle} already exists in {self.location}")
        extra: dict[str, str] = {"ContentType": "application/octet-stream"}
        if self.storage_class and (
            handle.type is FileType.PACK or self.storage_class not in _ARCHIVE_CLASSES
        ):
            extra["StorageClass"] = self.storage_class
        size = memoryview(data).nbytes
        key = self._key(handle)
        if size >= self.multipart_threshold:
            self._upload_parts(handle, key, data, extra)
            return
        body = data if not isinstance(data, memoryview) else _BufferReader(data)
        self._call(
            f"save {handle}",
            self._client.put_object,
            Bucket=self.bucket,
            Key=key,
            Body=body,
            ContentLength=size,
            **extra,
        )

    def _upload_parts(
        self, handle: Handle, key: str, data: bytes | bytearray | memoryview, extra: dict[str, str]
    ) -> None:
        if self._transfers is None:
            config = TransferConfig(
                multipart_threshold=self.multipart_threshold,
                multipart_chunksize=MULTIPART_CHUNK,
                max_concurrency=MULTIPART_CONCURRENCY,
            )
            self._transfers = create_transfer_manager(self._client, config)
        try:
            future = self._transfers.upload(_BufferReader(data), self.bucket, key, extra_args=extra)
            future.result()
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as e:
            self._raise(e, f"save {handle}")
        except Exception as e:  # s3transfer wraps some failures in its own types
            raise TransientBackendError(f"{self.location}: save {handle}: {e}") from e
        self._answered()

    def load(self, handle: Handle, offset: int = 0, length: int | None = None) -> bytes:
        if self._check_range(handle, offset, length):
            return b""
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": self._key(handle)}
        if offset or length is not None:
            end = "" if length is None else str(offset + length - 1)
            kwargs["Range"] = f"bytes={offset}-{end}"
        try:
            resp = self._call(f"load {handle}", self._client.get_object, **kwargs)
        except NotFoundError:
            raise self._not_found(handle) from None
        try:
            data: bytes = resp["Body"].read()
        except (botocore.exceptions.BotoCoreError, OSError) as e:
            raise TransientBackendError(f"{self.location}: load {handle}: {e}") from e
        finally:
            resp["Body"].close()
        if length is not None and len(data) != length:
            raise BackendError(
                f"{handle}: short read ({len(data)} of {length} bytes at offset {offset})"
            )
        return data

    def stat(self, handle: Handle) -> int:
        size = self._head(handle)
        if size is None:
            raise self._not_found(handle)
        return size

    def exists(self, handle: Handle) -> bool:
        # Not stat(): for config that reports a missing bucket as an error, but `init` asks
        # exactly this question before it creates the bucket.
        return self._head(handle) is not None

    def list(self, file_type: FileType) -> Iterator[FileInfo]:
        if file_type is FileType.CONFIG:
            raise ValueError("config is not listed")
        prefix = self._dir(file_type)
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
        if file_type is not FileType.PACK:
            kwargs["Delimiter"] = "/"  # only data/ has subdirectories
        pages = self._client.get_paginator("list_objects_v2").paginate(**kwargs)
        try:
            for page in pages:
                self._answered()
                for obj in page.get("Contents", ()):
                    name = obj["Key"].rsplit("/", 1)[-1]
                    if is_id_name(name):
                        yield FileInfo(name, int(obj["Size"]))
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as e:
            self._raise(e, f"list {file_type.value}")

    def remove(self, handle: Handle) -> None:
        # DELETE of a missing key succeeds on S3; the contract wants NotFoundError.
        if self._head(handle) is None:
            raise NotFoundError(f"{handle} does not exist in {self.location}")
        try:
            self._call(
                f"remove {handle}",
                self._client.delete_object,
                Bucket=self.bucket,
                Key=self._key(handle),
            )
        except AuthenticationError as e:
            raise AppendOnlyError(
                f"{self.location}: deleting {handle} is not allowed "
                "(an append-only or write-once policy?)"
            ) from e

    def close(self) -> None:
        if self._transfers is not None:
            self._transfers.shutdown()
            self._transfers = None
        for client in self._clients:
            client.close()


def _option(options: Mapping[str, str], key: str) -> str | None:
    value = options.get(key)
    return value if value else None


def from_location(rest: str, options: dict[str, str]) -> S3Backend:
    """Build the backend for ``s3:<rest>``."""
    check_options(options, "s3", _OPTIONS)
    return S3Backend(
        S3Location(rest),
        region=_option(options, "s3.region"),
        bucket_lookup=options.get("s3.bucket-lookup", "auto"),
        storage_class=_option(options, "s3.storage-class"),
        connections=connections_option(options, "s3.connections"),
    )
