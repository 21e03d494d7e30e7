"""The restore tests that write content run twice (module mark ``content_writers``): once
with packs written by threads, once by forked worker processes (restorer/forked.py) from
the first pack on. A restore forks only from a few packs on otherwise, more than the
fixture repositories hold."""

from __future__ import annotations

import pytest

from cairn.forking import fork_available


@pytest.fixture(params=["threads", "processes"])
def content_writers(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "processes":
        if not fork_available():
            pytest.skip("forked restore workers need fork() and two cores")
        monkeypatch.setattr("cairn.restorer.forked.FORK_MIN_PACKS", 1)
    else:
        monkeypatch.setattr("cairn.restorer.forked.FORK_MIN_PACKS", 10**9)
    return str(request.param)
