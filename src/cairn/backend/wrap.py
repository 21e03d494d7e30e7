"""The retry policy every remote backend gets when it is opened from a repository URL.

:mod:`cairn.backend.retry` implements retrying; this module decides *how much*: the
defaults below bound one request to a few attempts over at most five minutes (restic
gives up after ten attempts or fifteen minutes; a backup stuck for a quarter of an hour on
one request helps nobody who watches it), and turns each retry into one line of text for
whoever shows progress to the user.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from cairn.backend.base import Backend
from cairn.backend.retry import RetryBackend, RetryEvent


@dataclass(frozen=True)
class RetryPolicy:
    """How often and for how long one request is retried (see :class:`RetryBackend`)."""

    attempts: int = 10  # tries per request, the first one included
    base_delay: float = 0.5  # seconds before the first retry; doubles each time
    max_delay: float = 30.0  # the doubling stops here
    max_elapsed: float = 300.0  # seconds for one request, waits included


#: What :func:`cairn.backend.location.open_backend` applies to remote backends.
DEFAULT_RETRIES = RetryPolicy()


def with_retries(
    backend: Backend,
    policy: RetryPolicy = DEFAULT_RETRIES,
    log: Callable[[str], None] | None = None,
) -> RetryBackend:
    """Wrap ``backend`` so that transient failures are retried under ``policy``.

    Every retry is logged at WARNING on the ``cairn.backend.retry`` logger; ``log``, when
    given, also receives it as one line ("save data/ab/ab12... failed (attempt 1): ...;
    retrying in 0.43s").
    """

    def report(event: RetryEvent) -> None:
        assert log is not None
        log(str(event))

    return RetryBackend(
        backend,
        attempts=policy.attempts,
        base_delay=policy.base_delay,
        max_delay=policy.max_delay,
        max_elapsed=policy.max_elapsed,
        log=report if log is not None else None,
    )
