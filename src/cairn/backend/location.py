"""Turn a repository URL (restic's syntax) into a Backend.

Schemes: a plain path or ``local:/path``; ``sftp:``; ``s3:``; ``rest:``; ``rclone:``.
Each remote backend lives in its own module, imported only when used, and exposes
``from_location(rest_of_url: str, options: dict[str, str]) -> Backend``.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping

from cairn.backend.base import Backend
from cairn.errors import BackendLocationError

_SCHEMES = {
    "sftp": "cairn.backend.sftp",
    "s3": "cairn.backend.s3",
    "rest": "cairn.backend.rest",
    "rclone": "cairn.backend.rclone",
}


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


def open_backend(url: str, options: Mapping[str, str] | None = None) -> Backend:
    """Build the backend for ``url``; ``options`` are the ``-o key=value`` settings."""
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
    return backend
