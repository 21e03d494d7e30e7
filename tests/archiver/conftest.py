"""Every archiver test runs twice: once with files read and sealed by threads, once by
forked encoder processes (archiver/encoders.py) from the first file on. A backup forks
its encoders only after a few hundred files otherwise, more than these tests hold."""

from __future__ import annotations

import pytest

from cairn.forking import fork_available


@pytest.fixture(autouse=True, params=["threads", "encoders"])
def file_readers(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "encoders":
        if not fork_available():
            pytest.skip("forked encoders need fork() and two cores")
        monkeypatch.setattr("cairn.archiver.archiver._FORK_AFTER_FILES", 0)
    else:
        monkeypatch.setattr("cairn.archiver.archiver._FORK_AFTER_FILES", 10**9)
    return str(request.param)
