"""The backup options and metadata cases not covered elsewhere, through the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import threading
from pathlib import Path

import pytest

from tests.cli.conftest import run_cairn
from tests.conftest import run_restic
from tests.treecompare import describe


def _summary(proc: subprocess.CompletedProcess[bytes]) -> dict[str, object]:
    docs = [json.loads(x) for x in proc.stdout.splitlines() if x.strip()]
    return [d for d in docs if d.get("message_type") == "summary"][-1]


def test_one_file_system_skips_mounted_file_systems(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "mnt").mkdir(parents=True)
    (src / "here.txt").write_text("on the same file system")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "none", str(src / "mnt")], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        (src / "mnt" / "other-fs.txt").write_text("on another file system")
        repo = tmp_path / "repo"
        run_cairn("init", repo=repo)
        run_cairn("backup", "--one-file-system", str(src), repo=repo)
        listing = run_cairn("ls", "latest", repo=repo).stdout.decode()
        assert "here.txt" in listing and "other-fs.txt" not in listing and "/mnt" not in listing
        run_cairn("backup", str(src), repo=repo)
        assert "other-fs.txt" in run_cairn("ls", "latest", repo=repo).stdout.decode()
    finally:
        subprocess.run(["umount", str(src / "mnt")], check=True)


def test_explicit_parent_is_used_for_change_detection(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir()
        (d / "same.bin").write_bytes(b"x" * 100_000)
    repo = tmp_path / "repo"
    run_cairn("init", repo=repo)
    first = _summary(run_cairn("--json", "backup", str(a), repo=repo))
    # b has other paths, so there is no automatic parent; --parent forces one (and since the
    # inode differs the file is re-read, but found deduplicated).
    auto = _summary(run_cairn("--json", "backup", str(b), repo=repo))
    assert "parent" not in auto and auto["backup_type"] == "full"
    forced = _summary(
        run_cairn("--json", "backup", "--parent", str(first["snapshot_id"])[:8], str(a), repo=repo)
    )
    assert forced["parent"] == first["snapshot_id"] and forced["files_unmodified"] == 1
    run_cairn("backup", "--parent", "ffffffff", str(a), repo=repo, expect=1)


def test_devices_and_special_files_round_trip(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    os.mknod(src / "null-like", 0o620 | 0o020000, os.makedev(1, 3))  # character device
    os.mknod(src / "block-like", 0o600 | 0o060000, os.makedev(7, 200))  # block device
    os.mkfifo(src / "pipe", 0o640)
    (src / "setuid").write_text("x")
    (src / "setuid").chmod(0o4755)
    (src / "sticky").mkdir()
    (src / "sticky").chmod(0o1777)
    os.chown(src / "setuid", 1234, 5678)
    os.utime(src / "setuid", ns=(1_600_000_000_123_456_789, 1_500_000_000_987_654_321))
    sparse = src / "sparse.img"
    with open(sparse, "wb") as f:
        f.truncate(64 << 20)
        f.seek(10 << 20)
        f.write(b"data in the middle")
    repo = tmp_path / "repo"
    run_cairn("init", repo=repo)
    run_cairn("backup", str(src), repo=repo)
    out = tmp_path / "out"
    run_cairn("restore", "latest", "--target", str(out), repo=repo)
    restored = out / str(src).lstrip("/")
    assert describe(restored) == describe(src)
    assert os.stat(restored / "null-like").st_rdev == os.makedev(1, 3)
    assert os.stat(restored / "block-like").st_rdev == os.makedev(7, 200)
    assert os.stat(restored / "setuid").st_mtime_ns == 1_500_000_000_987_654_321
    # The hole stays a hole: far fewer blocks than the file's size.
    assert os.stat(restored / "sparse.img").st_blocks * 512 < (1 << 20)
    run_restic(repo, "restore", "latest", "--target", str(tmp_path / "restic-out"))
    assert describe(tmp_path / "restic-out" / str(src).lstrip("/")) == describe(src)


def test_files_vanishing_during_backup(tmp_path: Path) -> None:
    """Files deleted while the backup runs: each is either stored whole or reported and
    left out; the snapshot and the repository stay valid."""
    src = tmp_path / "src"
    src.mkdir()
    names = [f"f{i:04d}.bin" for i in range(400)]
    for n in names:
        (src / n).write_bytes(os.urandom(64 << 10))
    repo = tmp_path / "repo"
    run_cairn("init", repo=repo)
    stop = threading.Event()

    def delete() -> None:
        for n in reversed(names):
            if stop.is_set():
                return
            (src / n).unlink()

    th = threading.Thread(target=delete)
    th.start()
    try:
        proc = run_cairn("--json", "backup", str(src), repo=repo, expect=None)
    finally:
        stop.set()
        th.join()
    assert proc.returncode in (0, 3), proc.stderr
    assert b"Traceback" not in proc.stderr
    summary = _summary(proc)
    stored = run_cairn("ls", "latest", repo=repo).stdout.decode().count(".bin")
    assert stored + summary["errors"] <= len(names)
    assert b"no errors were found" in run_restic(repo, "check", "--read-data").stdout


def test_verbose_lists_new_modified_and_unchanged_files(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a")
    (src / "b.txt").write_text("b")
    repo = tmp_path / "repo"
    run_cairn("init", repo=repo)
    first = run_cairn("-v", "backup", str(src), repo=repo).stdout.decode()
    assert f"new        {src}/a.txt" in first and f"new        {src}/b.txt" in first
    (src / "a.txt").write_text("changed")
    second = run_cairn("-v", "backup", str(src), repo=repo).stdout.decode()
    assert f"modified   {src}/a.txt" in second and "b.txt" not in second
    third = run_cairn("-vv", "--json", "backup", str(src), repo=repo).stdout.splitlines()
    events = [json.loads(x) for x in third if b"verbose_status" in x]
    assert {(e["action"], e["item"]) for e in events} == {
        ("unchanged", f"{src}/a.txt"),
        ("unchanged", f"{src}/b.txt"),
    }


def test_pack_size_option_and_environment(tmp_path: Path) -> None:
    """--pack-size (and $CAIRN_PACK_SIZE) bound new packs; restic checks and restores."""
    src = tmp_path / "src"
    src.mkdir()
    rand = __import__("random").Random(7)
    for i in range(6):  # 18 MiB of incompressible data in ~1 MiB chunks
        (src / f"f{i}.bin").write_bytes(rand.randbytes(3 << 20))
    repo = tmp_path / "repo"
    run_cairn("init", repo=repo)
    run_cairn("--pack-size", "4", "backup", str(src), repo=repo)
    sizes = [p.stat().st_size for p in (repo / "data").rglob("*") if p.is_file()]
    # A pack is closed before a blob would take it past the target (one blob larger
    # than the target would get a pack of its own).
    assert len(sizes) >= 5 and max(sizes) <= (4 << 20) + 4096
    assert sum(1 for s in sizes if s >= 2 << 20) >= 4
    run_restic(repo, "check", "--read-data")
    out = tmp_path / "out"
    run_cairn("restore", "latest", "--target", str(out), repo=repo)
    assert describe(out / src.relative_to("/")) == describe(src)
    # The environment sets the default; bad values are one clear line and exit 2.
    bad = run_cairn("backup", str(src), repo=repo, env={"CAIRN_PACK_SIZE": "lots"}, expect=2)
    assert b"PACK_SIZE" in bad.stderr and b"Traceback" not in bad.stderr
    small = run_cairn("--pack-size", "2", "snapshots", repo=repo, expect=2)
    assert b"--pack-size" in small.stderr


def test_metadata_only_changes_reach_the_next_snapshot(tmp_path: Path) -> None:
    """An unchanged file keeps the parent's node only while every lstat field matches:
    chmod, chown, a new xattr and a new hard link all change ctime, so (as with restic)
    those files are read again, found deduplicated, and their new metadata recorded."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("mode", "owner", "xattr", "linked", "same"):
        (src / name).write_bytes(name.encode() * 1000)
    repo = tmp_path / "repo"
    run_cairn("init", repo=repo)
    run_cairn("backup", str(src), repo=repo)
    (src / "mode").chmod(0o600)
    os.chown(src / "owner", 1234, 5678)
    try:
        os.setxattr(src / "xattr", b"user.note", b"added later")
        has_xattr = True
    except OSError:
        has_xattr = False  # a file system without user xattrs
    os.link(src / "linked", tmp_path / "outside-link")
    second = _summary(run_cairn("--json", "backup", str(src), repo=repo))
    assert second["files_new"] == 0 and second["files_changed"] == 3 + has_xattr
    assert second["files_unmodified"] == 2 - has_xattr and second["data_blobs"] == 0
    out = tmp_path / "out"
    run_cairn("restore", "latest", "--target", str(out), repo=repo)
    got = describe(out / src.relative_to("/"))
    (tmp_path / "outside-link").unlink()  # its other name is not in the snapshot
    want = describe(src)
    assert got == want
    assert got[b"mode"]["perm"] == 0o600 and got[b"owner"]["owner"] == (1234, 5678)
    if has_xattr:
        assert os.getxattr(out / src.relative_to("/") / "xattr", b"user.note") == b"added later"
    # and restic restores the same tree from that snapshot
    by_restic = tmp_path / "by-restic"
    run_restic(repo, "restore", "latest", "--target", str(by_restic))
    assert describe(by_restic / src.relative_to("/")) == want
