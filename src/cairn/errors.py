"""One exception hierarchy for cairn; the CLI maps each class to an exit code.

Exit codes follow restic's where restic has one:

====  =====================================================================
0     success
1     fatal error (anything not listed below)
2     usage error (bad flags or arguments)
3     backup finished but some source files could not be read
10    repository does not exist
11    repository is locked by another process
12    wrong password (or no key found)
130   interrupted (Ctrl-C)
====  =====================================================================
"""

from __future__ import annotations


class CairnError(Exception):
    """Base class: a message a user can act on, and the exit code to leave with."""

    exit_code = 1


class UsageError(CairnError):
    """The command line or a configuration value is not valid."""

    exit_code = 2


# --- backend ---------------------------------------------------------------


class BackendError(CairnError):
    """Storage failed (I/O, network, server answered with an error)."""

    #: True when retrying the same request may succeed (timeouts, 5xx, resets).
    transient = False


class TransientBackendError(BackendError):
    """A failure that a retry may cure: timeout, connection reset, HTTP 5xx."""

    transient = True


class NotFoundError(BackendError):
    """The named file does not exist in the backend."""


class AlreadyExistsError(BackendError):
    """The file (or repository) already exists and must not be overwritten."""


class AppendOnlyError(BackendError):
    """The server is append-only and refused to delete."""


class BackendLocationError(BackendError):
    """The repository URL cannot be parsed or names an unknown scheme."""


class AuthenticationError(BackendError):
    """The server refused our credentials or host key."""


# --- repository ------------------------------------------------------------


class RepositoryNotFoundError(CairnError):
    """No repository (no config file) at the given location."""

    exit_code = 10


class RepositoryExistsError(CairnError):
    """`init` found a repository already there."""


class WrongPasswordError(CairnError):
    """No key file could be opened with the given password."""

    exit_code = 12


class UnsupportedRepositoryError(CairnError):
    """The repository's version or parameters are not supported."""


class RepositoryLockedError(CairnError):
    """Another process holds a conflicting lock."""

    exit_code = 11


class IntegrityError(CairnError):
    """Stored data failed verification: MAC mismatch, hash mismatch, bad framing."""


class FormatError(IntegrityError):
    """Stored data decrypted but does not parse as the format requires."""


class BlobNotFoundError(CairnError):
    """A blob is referenced but not listed in any index."""


class SnapshotNotFoundError(CairnError):
    """No snapshot matches the given ID, prefix or filter."""


class PathNotFoundError(CairnError):
    """A path does not exist inside a snapshot (or is not a directory where one is needed)."""


class PasswordError(CairnError):
    """No password could be obtained (no terminal, empty, mismatch)."""

    exit_code = 1


# --- operations ------------------------------------------------------------


class PartialBackupError(CairnError):
    """The snapshot was written but some source files could not be read."""

    exit_code = 3


class SourceError(CairnError):
    """A backup source path does not exist or cannot be accessed at all."""


class RestoreError(CairnError):
    """Some files could not be restored (the rest were)."""


class CheckFailedError(CairnError):
    """`check` found problems in the repository."""


class Interrupted(CairnError):
    """The user interrupted the operation."""

    exit_code = 130
