"""End to end: `cairn` run as a user would, with the real restic binary as the oracle."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cli.conftest import cairn_env, run_cairn
from tests.conftest import run_restic
from tests.treecompare import describe


def _summary(proc: subprocess.CompletedProcess[bytes]) -> dict[str, object]:
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    summaries = [doc for doc in lines if doc.get("message_type") == "summary"]
    assert summaries, proc.stdout
    return summaries[-1]


def _small_tree(root: Path) -> Path:
    (root / "docs" / "taxes").mkdir(parents=True)
    (root / "docs" / "taxes" / "2025.txt").write_text("income\n" * 1000)
    (root / "docs" / "notes.md").write_text("# notes\n")
    (root / "docs" / "scratch.tmp").write_text("temporary")
    (root / "photos").mkdir()
    (root / "photos" / "big.raw").write_bytes(os.urandom(3 << 20))
    return root


def test_backup_restore_round_trip_of_the_fixture_dataset(tmp_path: Path, dataset: Path) -> None:
    repo = tmp_path / "repo"
    run_cairn("init", repo=repo)
    backup = run_cairn("--json", "backup", ".", "--tag", "daily", repo=repo, cwd=dataset)
    summary = _summary(backup)
    assert summary["backup_type"] == "full"
    assert summary["files_new"] == summary["total_files_processed"]

    # cairn restores it exactly ...
    run_cairn("restore", "latest", "--target", str(tmp_path / "back"), "--verify", repo=repo)
    assert describe(tmp_path / "back") == describe(dataset)
    # ... and so does the real restic, after a full check of every byte.
    check = run_restic(repo, "check", "--read-data")
    assert b"no errors were found" in check.stdout
    run_restic(repo, "restore", "latest", "--target", str(tmp_path / "restic-back"))
    theirs, source = describe(tmp_path / "restic-back"), describe(dataset)
    # restic 0.14 predates linktarget_raw: it restores a non-UTF-8 symlink target lossily
    # (spec §9.2), where cairn's own restore above was exact.
    assert theirs.pop(b"links/bad-target")["target"] == b"target-\xef\xbf\xbd-not-utf8"
    source.pop(b"links/bad-target")
    assert theirs == source


def test_incremental_backup_reads_only_changes_and_force_reads_all(tmp_path: Path) -> None:
    src = _small_tree(tmp_path / "src")
    repo = tmp_path / "repo"
    run_cairn("init", repo=repo)
    first = _summary(run_cairn("--json", "backup", str(src), repo=repo))
    assert first["backup_type"] == "full" and first["files_new"] == 4

    second = _summary(run_cairn("--json", "backup", str(src), repo=repo))
    assert second["backup_type"] == "incremental"
    assert second["files_unmodified"] == 4 and second["bytes_read"] == 0
    # No new data; at most the trees of intermediate directories such as /tmp, whose
    # metadata other processes change, are new.
    assert second["data_blobs"] == 0 and second["parent"] == first["snapshot_id"]

    (src / "docs" / "notes.md").write_text("# notes\nchanged\n")
    (src / "new.txt").write_text("new")
    third = _summary(run_cairn("--json", "backup", str(src), repo=repo))
    assert (third["files_new"], third["files_changed"], third["files_unmodified"]) == (1, 1, 3)
    assert third["bytes_read"] == len("# notes\nchanged\n") + 3

    full = _summary(run_cairn("--json", "backup", "--force", str(src), repo=repo))
    assert full["backup_type"] == "full"
    assert full["bytes_read"] == full["total_bytes_processed"]
    assert full["data_blobs"] == 0  # everything read again, nothing new stored

    snaps = json.loads(run_cairn("--json", "snapshots", repo=repo).stdout)
    assert len(snaps) == 4
    assert b"no errors were found" in run_restic(repo, "check", "--read-data").stdout


def test_excludes_and_files_from(tmp_path: Path) -> None:
    src = _small_tree(tmp_path / "src")
    (src / "cache").mkdir()
    (src / "cache" / "CACHEDIR.TAG").write_bytes(
        b"Signature: 8a477f597d28d172789f06886806bc55\n# cache\n"
    )
    (src / "cache" / "blob").write_text("cached")
    (src / "private").mkdir()
    (src / "private" / ".nobackup").write_text("")
    (src / "private" / "secret").write_text("s")
    (src / "UPPER.TMP").write_text("x")
    patterns = tmp_path / "excludes.txt"
    patterns.write_text("# comment\n\n*.md\n")
    repo = tmp_path / "repo"
    run_cairn("init", repo=repo)
    run_cairn(
        "backup",
        str(src),
        "--exclude",
        "*.tmp",
        "--iexclude",
        "*.TMP",
        "--exclude-file",
        str(patterns),
        "--exclude-caches",
        "--exclude-if-present",
        ".nobackup",
        "--exclude-larger-than",
        "1M",
        repo=repo,
    )
    listing = run_cairn("ls", "latest", repo=repo).stdout.decode()
    names = {line.rsplit("/", 1)[-1] for line in listing.splitlines()[1:]}
    assert "2025.txt" in names
    for gone in ("notes.md", "scratch.tmp", "UPPER.TMP", "cache", "private", "big.raw"):
        assert gone not in names, gone
    snap = json.loads(run_cairn("--json", "snapshots", repo=repo).stdout)[0]
    assert "*.tmp" in snap["excludes"]

    listfile = tmp_path / "files.txt"
    listfile.write_text(f"# what to save\n{src / 'docs' / 'taxes'}\n\n{src / 'photos'}\n")
    run_cairn("backup", "--files-from", str(listfile), repo=repo)
    snaps = json.loads(
        run_cairn(
            "--json", "snapshots", "--latest", "1", "--path", str(src / "photos"), repo=repo
        ).stdout
    )
    assert sorted(snaps[0]["paths"]) == sorted([str(src / "docs" / "taxes"), str(src / "photos")])


def test_restore_include_exclude_and_subpath(tmp_path: Path) -> None:
    src = _small_tree(tmp_path / "src")
    repo = tmp_path / "repo"
    run_cairn("init", repo=repo)
    run_cairn("backup", str(src), repo=repo)
    out = tmp_path / "out"
    run_cairn(
        "restore", "latest", "--target", str(out), "--include", f"{src}/docs/taxes", repo=repo
    )
    restored = out / str(src).lstrip("/")
    assert (restored / "docs" / "taxes" / "2025.txt").read_text() == "income\n" * 1000
    assert not (restored / "photos").exists()
    assert not (restored / "docs" / "notes.md").exists()

    out2 = tmp_path / "out2"
    run_cairn(
        "restore",
        f"latest:{str(src).lstrip('/')}/docs",
        "--target",
        str(out2),
        "--exclude",
        "*.tmp",
        repo=repo,
    )
    assert sorted(p.name for p in out2.iterdir()) == ["notes.md", "taxes"]


def test_stdin_dry_run_tags_hosts_and_filters(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    run_cairn("init", repo=repo)
    data = os.urandom(2_000_000)
    run_cairn(
        "backup",
        "--stdin",
        "--stdin-filename",
        "dump.sql",
        "--tag",
        "db",
        "--host",
        "dbhost",
        repo=repo,
        input=data,
    )
    snaps = json.loads(
        run_cairn("--json", "snapshots", "--host", "dbhost", "--tag", "db", repo=repo).stdout
    )
    assert len(snaps) == 1 and snaps[0]["paths"] == ["/dump.sql"]
    out = tmp_path / "out"
    run_cairn("restore", "latest", "--target", str(out), repo=repo)
    assert (out / "dump.sql").read_bytes() == data

    before = sorted(p.name for p in (repo / "snapshots").iterdir())
    packs_before = sum(1 for _ in (repo / "data").rglob("*") if _.is_file())
    src = _small_tree(tmp_path / "src")
    dry = _summary(run_cairn("--json", "backup", "--dry-run", str(src), repo=repo))
    assert dry["dry_run"] is True and dry["data_blobs"] > 0
    assert sorted(p.name for p in (repo / "snapshots").iterdir()) == before
    assert sum(1 for _ in (repo / "data").rglob("*") if _.is_file()) == packs_before
    assert json.loads(run_cairn("--json", "snapshots", "--host", "nohost", repo=repo).stdout) == []


def test_ls_and_cat_match_restic(tmp_path: Path, dataset: Path) -> None:
    repo = tmp_path / "repo"
    run_cairn("init", repo=repo)
    run_cairn("backup", ".", repo=repo, cwd=dataset)
    ours = run_cairn("--json", "ls", "latest", repo=repo).stdout.splitlines()
    theirs = run_restic(repo, "ls", "--json", "latest").stdout.splitlines()
    assert [json.loads(x) for x in ours[1:]] == [json.loads(x) for x in theirs[1:]]
    assert (
        run_cairn("ls", "latest", repo=repo).stdout.splitlines()[1:]
        == run_restic(repo, "ls", "latest").stdout.splitlines()[1:]
    )
    assert json.loads(run_cairn("cat", "config", repo=repo).stdout) == json.loads(
        run_restic(repo, "cat", "config").stdout
    )
    assert json.loads(run_cairn("cat", "masterkey", repo=repo).stdout) == json.loads(
        run_restic(repo, "cat", "masterkey").stdout
    )
    snap_id = json.loads(run_cairn("--json", "snapshots", repo=repo).stdout)[0]["id"]
    ours = json.loads(run_cairn("cat", "snapshot", snap_id[:8], repo=repo).stdout)
    theirs = json.loads(run_restic(repo, "cat", "snapshot", snap_id).stdout)
    # restic 0.14 re-encodes and so drops the newer fields it does not know (summary, ...).
    assert {k: ours[k] for k in theirs} == theirs
    assert set(ours) - set(theirs) == {"program_version", "summary"}
    tree = json.loads(run_cairn("cat", "snapshot", snap_id, repo=repo).stdout)["tree"]
    assert (
        run_cairn("cat", "blob", tree, repo=repo).stdout
        == run_restic(repo, "cat", "blob", tree).stdout
    )


# --- bad input ------------------------------------------------------------------------


def _one_line_error(proc: subprocess.CompletedProcess[bytes]) -> str:
    err = proc.stderr.decode().strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    return err


def test_bad_input_gives_one_line_and_exit_code(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    run_cairn("init", repo=repo)
    # init twice
    assert "already" in _one_line_error(run_cairn("init", repo=repo, expect=1))
    # wrong password
    assert "wrong password" in _one_line_error(
        run_cairn("snapshots", repo=repo, password="nope", expect=12)
    )
    # not a repository
    _one_line_error(run_cairn("snapshots", repo=tmp_path / "nothing", expect=10))
    # missing source: nothing written
    _one_line_error(run_cairn("backup", str(tmp_path / "missing"), repo=repo, expect=1))
    assert list((repo / "snapshots").iterdir()) == []
    # unknown snapshot
    _one_line_error(
        run_cairn("restore", "deadbeef", "--target", str(tmp_path / "x"), repo=repo, expect=1)
    )
    # usage error
    run_cairn("backup", repo=repo, expect=2)
    # restore target that is a file
    target = tmp_path / "a-file"
    target.write_text("x")
    src = _small_tree(tmp_path / "src")
    run_cairn("backup", str(src), repo=repo)
    _one_line_error(run_cairn("restore", "latest", "--target", str(target), repo=repo, expect=1))
    # unknown repository scheme
    _one_line_error(run_cairn("snapshots", repo="ftp:/x", expect=1))
    # empty password file
    pw = tmp_path / "pw"
    pw.write_text("\n")
    _one_line_error(
        run_cairn(
            "--password-file", str(pw), "snapshots", repo=repo, env={"CAIRN_PASSWORD": ""}, expect=1
        )
    )
    # a password file with a trailing newline works (trimmed, like restic)
    pw.write_text("pw\n")
    run_cairn("--password-file", str(pw), "snapshots", repo=repo, env={"CAIRN_PASSWORD": ""})
    run_cairn("--password-command", "echo pw", "snapshots", repo=repo, env={"CAIRN_PASSWORD": ""})


def test_unsupported_repository_version(tmp_path: Path) -> None:
    from cairn.backend.base import FileType, Handle
    from cairn.backend.local import LocalBackend
    from cairn.repo.repository import Repository

    repo = tmp_path / "repo"
    run_cairn("init", repo=repo)
    r = Repository.open(LocalBackend(repo), "pw")
    doc = json.loads(r.config.encode())
    doc["version"] = 3
    (repo / "config").chmod(0o600)
    r.backend.save(Handle(FileType.CONFIG), r.key.seal(json.dumps(doc).encode()))
    assert "version" in _one_line_error(run_cairn("snapshots", repo=repo, expect=1))


def test_locked_repository(tmp_path: Path) -> None:
    from cairn.backend.local import LocalBackend
    from cairn.repo.repository import Repository

    repo = tmp_path / "repo"
    run_cairn("init", repo=repo)
    src = _small_tree(tmp_path / "src")
    r = Repository.open(LocalBackend(repo), "pw")
    with r.lock(exclusive=True):
        err = _one_line_error(run_cairn("backup", str(src), repo=repo, expect=11))
        assert "lock" in err
    run_cairn("backup", str(src), repo=repo)


def test_unreadable_file_warns_and_exits_3(tmp_path: Path) -> None:
    """Root reads everything, so cairn runs without the capabilities that let it ignore
    file permissions: warn, keep going, exit 3."""
    src = _small_tree(tmp_path / "src")
    (src / "locked.txt").write_text("secret")
    (src / "locked.txt").chmod(0)
    repo = tmp_path / "repo"
    run_cairn("init", repo=repo)
    proc = run_cairn(
        "--json",
        "backup",
        str(src),
        repo=repo,
        expect=3,
        prefix=["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-all"],
    )
    summary = _summary(proc)
    assert summary["errors"] == 1 and summary["snapshot_id"]
    listing = run_cairn("ls", "latest", repo=repo).stdout.decode()
    assert "locked.txt" not in listing and "2025.txt" in listing
    assert b"no errors were found" in run_restic(repo, "check", "--read-data").stdout


def test_file_growing_during_backup_is_stored_consistently(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    log = src / "growing.log"
    log.write_bytes(os.urandom(64 << 20))
    repo = tmp_path / "repo"
    run_cairn("init", repo=repo)
    writer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import os,time,sys\nf=open(sys.argv[1],'ab')\n"
            "end=time.time()+30\nwhile time.time()<end:\n f.write(os.urandom(65536)); f.flush(); time.sleep(0.001)",
            str(log),
        ]
    )
    try:
        time.sleep(0.2)
        proc = run_cairn("--json", "backup", str(src), repo=repo, expect=None)
    finally:
        writer.kill()
        writer.wait()
    assert proc.returncode in (0, 3), proc.stderr
    assert b"no errors were found" in run_restic(repo, "check", "--read-data").stdout
    out = tmp_path / "out"
    run_restic(repo, "restore", "latest", "--target", str(out))
    restored = (out / str(log).lstrip("/")).read_bytes()
    assert log.read_bytes()[: len(restored)] == restored  # a consistent prefix of the file


def test_corrupted_pack_restore_reports_files_and_restores_the_rest(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(os.urandom(1 << 20))
    repo = tmp_path / "repo"
    run_cairn("init", repo=repo)
    run_cairn("backup", str(src), repo=repo)
    (src / "b.txt").write_text("second file, second pack\n")
    run_cairn("backup", str(src), repo=repo)
    # Corrupt the largest data pack (the one holding a.bin).
    packs = sorted(
        (p for p in (repo / "data").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size
    )
    victim = packs[-1]
    victim.chmod(0o600)
    raw = bytearray(victim.read_bytes())
    raw[100] ^= 0xFF
    victim.write_bytes(bytes(raw))
    out = tmp_path / "out"
    proc = run_cairn("restore", "latest", "--target", str(out), repo=repo, expect=1)
    assert b"a.bin" in proc.stderr
    assert (out / str(src).lstrip("/") / "b.txt").read_text() == "second file, second pack\n"
    check = run_cairn("check", "--read-data", repo=repo, expect=1)
    assert victim.name[:8].encode() in check.stdout + check.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_interrupted_backup_leaves_a_valid_repository(tmp_path: Path, sig: signal.Signals) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(6):
        (src / f"f{i}.bin").write_bytes(os.urandom(24 << 20))
    repo = tmp_path / "repo"
    run_cairn("init", repo=repo)
    proc = subprocess.Popen(
        [sys.executable, "-m", "cairn", "--json", "backup", str(src)],
        env=cairn_env(repo),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    # Wait until some packs have landed, then interrupt.
    deadline = time.time() + 60
    while time.time() < deadline and sum(1 for p in (repo / "data").rglob("*") if p.is_file()) < 3:
        time.sleep(0.05)
    proc.send_signal(sig)
    proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert list((repo / "snapshots").iterdir()) == []
    # restic accepts the repository as it was left (a lock left by kill -9 is stale).
    run_restic(repo, "unlock")
    assert b"no errors were found" in run_restic(repo, "check", "--read-data").stdout
    landed = sum(p.stat().st_size for p in (repo / "data").rglob("*") if p.is_file())
    summary = _summary(run_cairn("--json", "backup", str(src), repo=repo))
    if sig == signal.SIGINT:
        # What landed before Ctrl-C was indexed: the next backup does not upload it again.
        assert summary["data_added_packed"] < 6 * (24 << 20) * 1.01 - landed * 0.9
    assert b"no errors were found" in run_restic(repo, "check", "--read-data").stdout
    shutil.rmtree(repo)


def test_restore_of_thousands_of_files_in_one_pack_stays_within_the_open_files_limit(
    tmp_path: Path,
) -> None:
    """3,000 small files share one pack; with a limit of 256 open files per process the
    restore must still write them all (each file's descriptor was kept until its pack
    was done, and a /usr/share restore failed with EMFILE)."""
    import resource

    src = tmp_path / "src"
    for d in range(10):
        (src / f"d{d}").mkdir(parents=True)
        for i in range(300):
            (src / f"d{d}" / f"f{i}").write_bytes(f"{d}-{i}\n".encode() * 20)
    repo = tmp_path / "repo"
    run_cairn("init", repo=repo)
    run_cairn("backup", str(src), repo=repo)
    assert len([p for p in (repo / "data").rglob("*") if p.is_file()]) <= 2  # data + trees

    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))

    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "cairn", "restore", "latest", "--target", str(out)],
        env=cairn_env(repo),
        capture_output=True,
        preexec_fn=low_limit,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert describe(out / src.relative_to("/")) == describe(src)
