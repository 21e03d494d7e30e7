"""Interop: the real restic 0.14 backs up a generated directory, cairn restores it, and the
result equals the source (spec §19 check 7, reader side): names as bytes, modes with
setuid/setgid/sticky, mtimes with nanoseconds in any time zone, owners (as root), xattrs,
hard links, symlinks, FIFOs, device nodes (as root), sparse and multi-chunk files."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from cairn.ops.check import check
from cairn.ops.restore import restore
from tests.conftest import run_restic
from tests.restorer.helpers import open_repo, scan

pytestmark = pytest.mark.usefixtures("content_writers")

IS_ROOT = os.geteuid() == 0


def make_source(root: Path) -> None:
    """A small tree with every kind of entry restic records."""
    rb = os.fsencode(root)

    def j(*parts: bytes) -> bytes:
        return os.path.join(rb, *parts)

    os.makedirs(j(b"dir", b"sub"))
    with open(j(b"dir", b"sub", b"multi-chunk.bin"), "wb") as f:
        for i in range(3 * 1024):  # 3 MiB of pseudo-random data: several chunks
            f.write(hashlib.sha512(i.to_bytes(4, "little")).digest() * 16)
    with open(j(b"zeros.bin"), "wb") as f:
        f.truncate(3 * 1024 * 1024 + 5)
    with open(j(b"periodic.bin"), "wb") as f:
        f.write(b"0123456789abcdef" * (9 * 1024 * 1024 // 16))  # one 8 MiB maximum chunk
    open(j(b"empty"), "wb").close()
    os.mkdir(j(b"empty-dir"))
    for name in (b"bad-\xff\xfe", "ünï-日本".encode(), b'q"\\t\ta', b"line\nbreak"):
        with open(j(b"dir", name), "wb") as f:
            f.write(b"name " + name)
    with open(j(b"dir", b"setuid"), "wb") as f:
        f.write(b"#!/bin/sh\n")
    os.chmod(j(b"dir", b"setuid"), 0o4755)
    os.mkdir(j(b"sticky"))
    os.chmod(j(b"sticky"), 0o1777)
    os.mkdir(j(b"setgid"))
    os.chmod(j(b"setgid"), 0o2750)
    with open(j(b"ro"), "wb") as f:
        f.write(b"read only")
    os.chmod(j(b"ro"), 0o444)
    with open(j(b"hl-1"), "wb") as f:
        f.write(b"linked")
    os.link(j(b"hl-1"), j(b"dir", b"hl-2"))
    os.symlink(b"dir/sub", j(b"link-dir"))
    os.symlink(b"/does/not/exist", j(b"dangling"))
    os.mkfifo(j(b"fifo"), 0o640)
    os.setxattr(j(b"dir", b"setuid"), "user.k", b"\x00v\xff")
    os.setxattr(j(b"dir"), "user.on-dir", b"yes")
    if IS_ROOT:
        os.mknod(j(b"null-dev"), stat.S_IFCHR | 0o620, os.makedev(1, 3))
        os.chown(j(b"ro"), 1234, 5678)
        os.chown(j(b"link-dir"), 4321, 8765, follow_symlinks=False)
    # distinct nanosecond mtimes, children before parents
    entries = sorted(scan(root), key=lambda p: -p.count(b"/"))
    for i, rel in enumerate(entries):
        t = 1_600_000_000_000_000_000 + i * 3_600_123_456_789
        os.utime(j(rel), ns=(t, t), follow_symlinks=False)


def describe(root: Path) -> dict[bytes, tuple[object, ...]]:
    out: dict[bytes, tuple[object, ...]] = {}
    rb = os.fsencode(root)
    for rel, st in scan(root).items():
        full = os.path.join(rb, rel)
        if stat.S_ISREG(st.st_mode):
            with open(full, "rb") as f:
                extra: object = hashlib.sha256(f.read()).hexdigest()
        elif stat.S_ISLNK(st.st_mode):
            extra = os.readlink(full)
        else:
            extra = st.st_rdev
        xattrs = (
            {}
            if stat.S_ISLNK(st.st_mode)
            else {n: os.getxattr(full, n) for n in os.listxattr(full) if n.startswith("user.")}
        )
        out[rel] = (
            st.st_mode,
            st.st_mtime_ns,
            st.st_size,
            st.st_uid,
            st.st_gid,
            extra,
            sorted(xattrs.items()),
            st.st_nlink if stat.S_ISREG(st.st_mode) else 0,
        )
    return out


@pytest.mark.parametrize("tz", ["UTC", "Europe/Berlin"])
def test_cairn_restores_what_restic_wrote(tmp_path: Path, tz: str) -> None:
    source = tmp_path / "src"
    source.mkdir()
    make_source(source)
    repo_path = tmp_path / "repo"
    env = {"TZ": tz}
    run_restic(repo_path, "init", env=env)
    run_restic(repo_path, "backup", "--host", "h", ".", env=env, cwd=source)

    repo = open_repo(repo_path, "pw")
    target = tmp_path / "out"
    try:
        result = restore(repo, "latest", str(target), verify=True)
        checked = check(repo, read_data=True)
    finally:
        repo.close()
    assert result.errors == [] and result.warnings == []
    assert checked.ok, [str(e) for e in checked.errors]
    want, got = describe(source), describe(target)
    assert sorted(got) == sorted(want)
    for rel in want:
        assert got[rel] == want[rel], rel
    assert os.stat(target / "hl-1").st_ino == os.stat(target / "dir" / "hl-2").st_ino
    zeros = os.stat(target / "zeros.bin")
    assert zeros.st_blocks * 512 <= 128 * 1024  # restored sparse
