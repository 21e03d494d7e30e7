"""cairn and restic sharing a repository in a real S3 object store (Ceph's radosgw, or the
CAIRN_TEST_S3_URL endpoint), through the real CLI: ``init`` creates the bucket, round trips
both ways, and the failures users meet (missing bucket, wrong secret, missing credentials,
refused port, malformed URLs)."""

from __future__ import annotations

import socket
import subprocess
import uuid
from pathlib import Path

import boto3
import botocore.exceptions
import pytest

from tests.backend.radosgw import S3Server, free_port
from tests.cli.conftest import run_cairn
from tests.conftest import run_restic
from tests.interop.remote_common import Restic, restic_created, round_trip, timed_failure


def bucket_name() -> str:
    return f"cairn-e2e-{uuid.uuid4().hex[:12]}"


def s3_env(server: S3Server, tmp_path: Path, **changes: str) -> dict[str, str]:
    """The credentials in the standard AWS variables, plus a cache of the test's own."""
    env = server.env()
    env.update(changes)
    env["CAIRN_CACHE_DIR"] = str(tmp_path / "cairn-cache")
    return env


def restic_on(url: str, server: S3Server, tmp_path: Path) -> Restic:
    def restic(*args: str) -> subprocess.CompletedProcess[bytes]:
        env = dict(server.env(), RESTIC_CACHE_DIR=str(tmp_path / "restic-cache"))
        return run_restic(url, *args, env=env)

    return restic


def bucket_exists(server: S3Server, bucket: str) -> bool:
    client = boto3.client(
        "s3",
        endpoint_url=server.endpoint,
        aws_access_key_id=server.access_key,
        aws_secret_access_key=server.secret_key,
        region_name=server.region,
    )
    try:
        client.head_bucket(Bucket=bucket)
    except botocore.exceptions.ClientError:
        return False
    return True


def test_init_creates_the_bucket_and_restic_shares_the_repository(
    radosgw_s3: S3Server,  # noqa: F811
    tmp_path: Path,
) -> None:
    bucket = bucket_name()
    url = f"s3:{radosgw_s3.endpoint}/{bucket}/backups/host1"
    assert not bucket_exists(radosgw_s3, bucket)
    env = s3_env(radosgw_s3, tmp_path)
    round_trip(["-r", url], restic_on(url, radosgw_s3, tmp_path), tmp_path, env=env)
    assert bucket_exists(radosgw_s3, bucket)
    # a second repository beside the first, in the bucket that now exists
    run_cairn("-r", f"s3:{radosgw_s3.endpoint}/{bucket}/backups/host2", "init", env=env)


def test_cairn_continues_a_repository_restic_created_in_s3(
    radosgw_s3: S3Server,  # noqa: F811
    tmp_path: Path,
) -> None:
    url = f"s3:{radosgw_s3.endpoint}/{bucket_name()}/restic"
    env = s3_env(radosgw_s3, tmp_path)
    restic_created(["-r", url], restic_on(url, radosgw_s3, tmp_path), tmp_path, env=env)


def test_missing_bucket_is_one_clear_error(radosgw_s3: S3Server, tmp_path: Path) -> None:  # noqa: F811
    bucket = bucket_name()
    url = f"s3:{radosgw_s3.endpoint}/{bucket}/repo"
    env = s3_env(radosgw_s3, tmp_path)
    for command in (["snapshots"], ["backup", str(tmp_path)], ["check"]):
        code, line, elapsed = timed_failure("-r", url, *command, env=env)
        assert code == 1, command
        assert f"the bucket {bucket!r} does not exist" in line, line
        assert elapsed < 10
    assert not bucket_exists(radosgw_s3, bucket), "only init may create the bucket"


def test_missing_prefix_in_an_existing_bucket(radosgw_s3: S3Server, tmp_path: Path) -> None:  # noqa: F811
    bucket = bucket_name()
    env = s3_env(radosgw_s3, tmp_path)
    run_cairn("-r", f"s3:{radosgw_s3.endpoint}/{bucket}/here", "init", env=env)
    code, line, _ = timed_failure(
        "-r", f"s3:{radosgw_s3.endpoint}/{bucket}/elsewhere", "snapshots", env=env
    )
    assert code == 10  # restic's "repository does not exist"
    assert "no repository" in line, line


def test_wrong_secret_and_unknown_key(radosgw_s3: S3Server, tmp_path: Path) -> None:  # noqa: F811
    bucket = bucket_name()
    url = f"s3:{radosgw_s3.endpoint}/{bucket}/repo"
    run_cairn("-r", url, "init", env=s3_env(radosgw_s3, tmp_path))
    for changes, command in (
        ({"AWS_SECRET_ACCESS_KEY": "wrong-secret"}, "snapshots"),
        ({"AWS_SECRET_ACCESS_KEY": "wrong-secret"}, "init"),
        ({"AWS_ACCESS_KEY_ID": "NOSUCHACCESSKEY00000"}, "snapshots"),
    ):
        env = s3_env(radosgw_s3, tmp_path, **changes)
        code, line, elapsed = timed_failure("-r", url, command, env=env)
        assert code == 1, (changes, command)
        assert "access denied" in line, line
        assert "wrong-secret" not in line
        assert elapsed < 10


def test_no_credentials_at_all(tmp_path: Path) -> None:
    env = {
        "AWS_ACCESS_KEY_ID": "",
        "AWS_SECRET_ACCESS_KEY": "",
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_EC2_METADATA_DISABLED": "true",
        "CAIRN_CACHE_DIR": str(tmp_path / "cache"),
    }
    code, line, elapsed = timed_failure(
        "-r", f"s3:http://127.0.0.1:{free_port()}/bucket/repo", "snapshots", env=env
    )
    assert code == 1
    assert "no usable AWS credentials" in line, line
    assert elapsed < 10


def test_refused_port_fails_fast(tmp_path: Path) -> None:
    env = {
        "AWS_ACCESS_KEY_ID": "k",
        "AWS_SECRET_ACCESS_KEY": "s",
        "CAIRN_CACHE_DIR": str(tmp_path / "cache"),
    }
    url = f"s3:http://127.0.0.1:{free_port()}/bucket/repo"
    for command in (["init"], ["snapshots"]):
        code, line, elapsed = timed_failure("-r", url, *command, env=env)
        assert code == 1
        assert "cannot connect" in line, line
        assert elapsed < 10


def test_silent_server_fails_within_the_connect_timeout(tmp_path: Path) -> None:
    """A port that accepts TCP but never answers (a wedged host, another service): the
    first answer is awaited only as long as a connection (10 s), not minutes."""
    env = {
        "AWS_ACCESS_KEY_ID": "k",
        "AWS_SECRET_ACCESS_KEY": "s",
        "CAIRN_CACHE_DIR": str(tmp_path / "cache"),
    }
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)  # the kernel completes handshakes; nobody ever answers
        port = listener.getsockname()[1]
        code, line, elapsed = timed_failure(
            "-r", f"s3:http://127.0.0.1:{port}/bucket/repo", "snapshots", env=env
        )
    assert code == 1
    assert "no answer within 10s" in line, line
    assert elapsed < 20


@pytest.mark.parametrize("url", ["s3:", "s3:http://127.0.0.1:9000", "s3:http:///bucket"])
def test_malformed_urls(url: str, tmp_path: Path) -> None:
    code, line, elapsed = timed_failure(
        "-r", url, "snapshots", env={"CAIRN_CACHE_DIR": str(tmp_path / "cache")}
    )
    assert code == 1
    assert "invalid S3 URL" in line, line
    assert elapsed < 10
