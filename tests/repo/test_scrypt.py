"""cairn's parallel-lane scrypt against OpenSSL's (through ``cryptography``) as the oracle."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from hypothesis import given, settings
from hypothesis import strategies as st

from cairn.repo._scrypt import romix
from cairn.repo.scrypt import scrypt


def openssl(password: bytes, salt: bytes, n: int, r: int, p: int, length: int) -> bytes:
    return Scrypt(salt=salt, length=length, n=n, r=r, p=p).derive(password)


@pytest.mark.parametrize(
    ("password", "salt", "n", "r", "p", "length"),
    [
        (b"", b"", 16, 1, 1, 64),  # RFC 7914's first test vector
        (b"password", b"NaCl", 1024, 8, 16, 64),  # RFC 7914's second
        (b"fixture-password", os.urandom(64), 32768, 8, 3, 64),  # restic's N and r
        (b"x", b"salt", 2, 1, 2, 32),
        (b"odd lanes", b"salt", 256, 3, 5, 64),
    ],
)
def test_matches_openssl(password: bytes, salt: bytes, n: int, r: int, p: int, length: int) -> None:
    assert scrypt(password, salt, n, r, p, length) == openssl(password, salt, n, r, p, length)


def test_rfc7914_vector() -> None:
    want = bytes.fromhex(
        "fdbabe1c9d3472007856e7190d01e9fe7c6ad7cbc8237830e77376634b373162"
        "2eaf30d92e22a3886ff109279d9830dac727afb94a83ee6d8360cbdfa2cc0640"
    )
    assert scrypt(b"password", b"NaCl", 1024, 8, 16, 64) == want


@settings(max_examples=40, deadline=None)
@given(
    password=st.binary(max_size=40),
    salt=st.binary(max_size=40),
    log_n=st.integers(1, 8),
    r=st.integers(1, 4),
    p=st.integers(1, 6),
)
def test_random_parameters_match_openssl(
    password: bytes, salt: bytes, log_n: int, r: int, p: int
) -> None:
    n = 1 << log_n
    assert scrypt(password, salt, n, r, p) == openssl(password, salt, n, r, p, 64)


@pytest.mark.parametrize(
    ("block_len", "n", "r"),
    [(127, 16, 1), (128, 15, 1), (128, 1, 1), (128, 16, 0), (256, 16, 1)],
)
def test_romix_rejects_bad_arguments(block_len: int, n: int, r: int) -> None:
    with pytest.raises(ValueError):
        romix(bytes(block_len), n, r)


@settings(max_examples=30, deadline=None)
@given(block=st.binary(min_size=256, max_size=256), log_n=st.integers(3, 10))
def test_romix_keeping_fewer_entries_gives_the_same_lane(block: bytes, log_n: int) -> None:
    """The time-memory trade-off (every second or fourth entry kept) changes nothing in
    the result, only the memory it takes."""
    n = 1 << log_n
    full = romix(block, n, 2)
    assert romix(block, n, 2, 2) == full
    assert romix(block, n, 2, 4) == full


@pytest.mark.parametrize("stride", [0, 3, 16, 32])
def test_romix_rejects_bad_strides(stride: int) -> None:
    with pytest.raises(ValueError):
        romix(bytes(128), 16, 1, stride)
