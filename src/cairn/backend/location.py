"""Turn a repository URL (restic's syntax) into a Backend.

Schemes: a plain path or ``local:/path``; ``sftp:``; ``s3:``; ``rest:``; ``rclone:``.
Each remote backend lives in its own module, imported only when used, and exposes
``from_location(rest_of_url: str, options: dict[str, str]) -> Backend``.

Remote backends come wrapped in :class:`~cairn.backend.retry.RetryBackend` (policy in
:mod:`cairn.backend.wrap`): networks drop requests, and a backup should not die of one
reset connection. A local disk's failures are not transient, so it is not wrapped.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping

from cairn.backend.base import Backend
from cairn.backend.wrap import DEFAULT_RETRIES, RetryPolicy, with_retries
from cairn.errors import BackendLocationError

_SCHEMES = {
    "sftp": "cairn.backend.sftp",
    "s3": "cairn.backend.s3",
    "rest": "cairn.backend.rest",
    "rclone": "cairn.backend.rclone",
}

#: Schemes wrapped in retries (tests of a bare backend pass ``retries=None``).
_RETRIED = frozenset({"sftp", "rest", "s3", "rclone"})


def split_scheme(url: str) -> tuple[str, str]:
    """Return (scheme, remainder); scheme is "local" for plain paths."""
    if not url:
        raise BackendLocationError("no repository given (use -r/--repo or RESTIC_REPOSITORY)")
    head, sep, rest = url.partition(":")
    if not sep or "/" in head or head == "":
        return "local", url
    if head == "local":
        return "local", rest
    if head in _SCHEMES:
        return head, rest
    if len(head) == 1:  # a Windows drive letter such as C:\backup
        return "local", url
    raise BackendLocationError(
        f"unknown repository scheme {head!r} in {url!r} "
        "(expected a path, local:, sftp:, s3:, rest: or rclone:)"
    )


def open_backend(
    url: str,
    options: Mapping[str, str] | None = None,
    log: Callable[[str], None] | None = None,
    *,
    retries: RetryPolicy | None = DEFAULT_RETRIES,
) -> Backend:
    """Build the backend for ``url``; ``options`` are the ``-o key=value`` settings.

    A remote backend is wrapped in retries under ``retries`` (None: the bare backend);
    each retry is logged to the ``logging`` module and, when given, to ``log`` as one line.
    """
    scheme, rest = split_scheme(url)
    opts = dict(options or {})
    if scheme == "local":
        from cairn.backend.local import LocalBackend

        if not rest:
            raise BackendLocationError(f"empty path in repository {url!r}")
        return LocalBackend(rest)
    try:
        module = importlib.import_module(_SCHEMES[scheme])
    except ModuleNotFoundError as e:
        raise BackendLocationError(f"the {scheme}: backend is not available: {e}") from e
    backend: Backend = module.from_location(rest, opts)
    if retries is None or scheme not in _RETRIED:
        return backend
    return with_retries(backend, retries, log)
