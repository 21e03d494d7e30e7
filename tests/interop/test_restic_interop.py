"""cairn and the real restic 0.14 writing and reading the same repositories (spec §19)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.cli.conftest import run_cairn
from tests.conftest import FIXTURE_PASSWORD, run_restic
from tests.treecompare import describe


def _summary(proc: subprocess.CompletedProcess[bytes]) -> dict[str, object]:
    docs = [json.loads(x) for x in proc.stdout.splitlines() if x.strip()]
    return [d for d in docs if d.get("message_type") == "summary"][-1]


def _restic_snapshots(repo: Path, password: str = "pw") -> list[dict[str, object]]:
    return json.loads(run_restic(repo, "snapshots", "--json", password=password).stdout)  # type: ignore[no-any-return]


def _copy_without_bad_symlink(dataset: Path, dest: Path) -> Path:
    """The dataset minus its one non-UTF-8 symlink target: for that node cairn adds
    linktarget_raw (restic >= 0.16 does too) so the target restores exactly, where
    restic 0.14 stores only a lossy form. Everything else must encode identically."""
    subprocess.run(["cp", "-a", str(dataset), str(dest)], check=True)
    (dest / "links" / "bad-target").unlink()
    return dest


@pytest.mark.parametrize("tz", ["UTC", "Europe/Berlin"])
def test_same_tree_ids_as_restic_for_the_same_directory(
    tmp_path: Path, dataset: Path, tz: str
) -> None:
    """§19.10: restic backs up a directory, then cairn backs it up into the same repository
    (same polynomial): every tree cairn encodes already exists, byte for byte."""
    src = _copy_without_bad_symlink(dataset, tmp_path / "src")
    repo = tmp_path / "repo"
    run_restic(repo, "init")
    run_restic(repo, "backup", ".", cwd=src, env={"TZ": tz})
    restic_tree = _restic_snapshots(repo)[0]["tree"]

    proc = run_cairn("--json", "backup", "--force", ".", repo=repo, cwd=src, env={"TZ": tz})
    summary = _summary(proc)
    assert summary["data_blobs"] == 0, "cairn cut different chunks than restic"
    assert summary["tree_blobs"] == 0, "cairn encoded a tree differently than restic"
    snaps = {s["id"]: s for s in _restic_snapshots(repo)}
    assert snaps[summary["snapshot_id"]]["tree"] == restic_tree
    assert b"no errors were found" in run_restic(repo, "check", "--read-data").stdout


def test_only_linktarget_raw_differs_for_a_non_utf8_symlink_target(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    import os

    os.symlink(b"target-\xff-not-utf8", os.path.join(os.fsencode(src), b"bad-target"))
    repo = tmp_path / "repo"
    run_restic(repo, "init")
    run_restic(repo, "backup", ".", cwd=src)
    run_cairn("backup", "--force", ".", repo=repo, cwd=src)
    trees = [s["tree"] for s in sorted(_restic_snapshots(repo), key=lambda s: s["time"])]
    theirs, ours = (
        json.loads(run_restic(repo, "cat", "blob", t).stdout)["nodes"][0] for t in trees
    )
    assert ours.pop("linktarget_raw") == "dGFyZ2V0Lf8tbm90LXV0Zjg="
    assert ours == theirs
    run_cairn("restore", "latest", "--target", str(tmp_path / "out"), repo=repo)
    assert (
        os.readlink(os.path.join(os.fsencode(tmp_path), b"out", b"bad-target"))
        == b"target-\xff-not-utf8"
    )


def test_restic_adds_almost_nothing_after_cairn(tmp_path: Path, dataset: Path) -> None:
    """§19.11: restic backs up unchanged data into a cairn-written repository: it finds
    cairn's snapshot as its parent and stores nothing new."""
    src = _copy_without_bad_symlink(dataset, tmp_path / "src")
    repo = tmp_path / "repo"
    run_cairn("init", repo=repo)
    run_cairn("backup", str(src), repo=repo)
    out = run_restic(repo, "backup", "--json", str(src))
    summary = [json.loads(x) for x in out.stdout.splitlines() if b'"summary"' in x][-1]
    assert summary["files_unmodified"] == summary["total_files_processed"]
    # No data at all; new trees only for the directories above the target (/tmp and the
    # test's own folders), whose metadata changed in between.
    assert summary["data_blobs"] == 0
    assert summary["tree_blobs"] <= len(src.parts) - 1
    assert b"no errors were found" in run_restic(repo, "check", "--read-data").stdout
    # cairn restores restic's snapshot.
    restic_id = [s for s in _restic_snapshots(repo) if s.get("parent")][0]["id"]
    run_cairn("restore", restic_id, "--target", str(tmp_path / "out"), "--verify", repo=repo)
    assert describe(tmp_path / "out" / str(src).lstrip("/")) == describe(src)


def test_cairn_adds_to_a_restic_fixture_repository(
    tmp_path: Path, fixture_repo, dataset: Path
) -> None:  # type: ignore[no-untyped-def]
    """cairn opens the restic-written v2 fixture, adds a snapshot, and restic checks it."""
    repo = fixture_repo("v2")
    run_cairn(
        "backup", ".", "--host", "fixture-host", repo=repo, password=FIXTURE_PASSWORD, cwd=dataset
    )
    check = run_restic(repo, "check", "--read-data", password=FIXTURE_PASSWORD)
    assert b"no errors were found" in check.stdout
    assert len(_restic_snapshots(repo, FIXTURE_PASSWORD)) == 4
    run_restic(
        repo,
        "restore",
        "latest",
        "--host",
        "fixture-host",
        "--target",
        str(tmp_path / "out"),
        password=FIXTURE_PASSWORD,
    )
    theirs = describe(tmp_path / "out")
    source = describe(dataset)
    theirs.pop(b"links/bad-target"), source.pop(b"links/bad-target")  # lossy in restic 0.14
    assert theirs == source


def test_restic_written_live_repository_restores_with_cairn(tmp_path: Path) -> None:
    """Reverse direction with data made now: tricky names, xattrs, hard links, sizes
    around the chunker's limits, compression off and max."""
    src = tmp_path / "src"
    src.mkdir()
    names = [
        b"back\\slash",
        b'quo"te',
        b"tab\tname",
        b"new\nline",
        "u2028\u2028x".encode(),
        b"<&>",
        b"\xff\xfe-bad",
    ]
    for i, name in enumerate(names):
        (src / name.decode("utf-8", "surrogateescape")).write_bytes(bytes([i]) * (100 + i))
    import os

    (src / "zero").write_bytes(b"")
    (src / "exact").write_bytes(os.urandom(512 * 1024))
    (src / "plus1").write_bytes(os.urandom(512 * 1024 + 1))
    (src / "large").write_bytes(os.urandom(9 << 20))
    (src / "zeros").write_bytes(bytes(3 << 20))
    os.link(src / "exact", src / "exact-link")
    os.setxattr(src / "exact", "user.note", b"\x00binary\xff")
    os.mkfifo(src / "fifo")
    for compression in ("off", "max"):
        repo = tmp_path / f"repo-{compression}"
        run_restic(repo, "init")
        run_restic(
            repo, "backup", "--compression", compression, str(src), env={"TZ": "Europe/Berlin"}
        )
        out = tmp_path / f"out-{compression}"
        run_cairn("restore", "latest", "--target", str(out), "--verify", repo=repo)
        assert describe(out / str(src).lstrip("/")) == describe(src)
        ours = run_cairn("--json", "ls", "latest", repo=repo).stdout.splitlines()[1:]
        theirs = run_restic(repo, "ls", "--json", "latest").stdout.splitlines()[1:]
        assert [json.loads(x) for x in ours] == [json.loads(x) for x in theirs]


@pytest.mark.parametrize(
    "args", [["init", "--repository-version", "1"], ["init"]], ids=["v1", "v2"]
)
@pytest.mark.parametrize("compression", ["auto", "off", "max"])
def test_restic_checks_and_restores_what_cairn_wrote(
    tmp_path: Path, args: list[str], compression: str
) -> None:
    """§19.8/9: versions 1 and 2, every compression mode."""
    import os

    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "text.txt").write_text("compressible line\n" * 200_000)
    (src / "random.bin").write_bytes(os.urandom(5 << 20))
    for i in range(300):
        (src / "d" / f"small{i}").write_text(f"small file {i}\n")
    repo = tmp_path / "repo"
    run_cairn(*args, repo=repo)
    run_cairn("backup", "--compression", compression, str(src), repo=repo)
    assert b"no errors were found" in run_restic(repo, "check", "--read-data").stdout
    run_restic(repo, "restore", "latest", "--target", str(tmp_path / "out"))
    assert describe(tmp_path / "out" / str(src).lstrip("/")) == describe(src)
