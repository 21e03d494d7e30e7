"""Key files: a password, through scrypt, unlocks the master key (spec §4).

A key file is plain JSON stored under ``keys/<sha256 of the file>``. It carries the scrypt
parameters and salt used for *this* key (readers must use them, they differ per file) and
the master key sealed with the password-derived user key.
"""

from __future__ import annotations

import base64
import functools
import getpass
import hashlib
import hmac
import json
import os
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from cairn.backend.base import Backend, FileType, Handle
from cairn.errors import (
    FormatError,
    IntegrityError,
    NotFoundError,
    UsageError,
    WrongPasswordError,
)
from cairn.repo.crypto import Key, clamp_r
from cairn.repo.gojson import format_time, go_string
from cairn.repo.node import GoTime
from cairn.repo.scrypt import scrypt

#: restic 0.14 stops after this many key files have been tried (bounds the scrypt cost).
MAX_KEYS_TRIED = 20
SALT_SIZE = 64
#: The environment variable that overrides calibration: "N,r,p". Meant for tests and
#: low-power machines; the values must still be valid scrypt parameters.
KDF_ENV = "CAIRN_KDF_PARAMS"

# restic's calibration (spec §4.2): r fixed, N from a 60 MiB memory budget, p raised until
# one derivation takes about half a second of Go's scrypt (0.65 s of OpenSSL's: see below).
_CAL_N = 32768
_CAL_R = 8
_CAL_TARGET_S = 0.65
_CAL_MAX_P = 64


@dataclass(frozen=True)
class KdfParams:
    """scrypt cost parameters of one key file."""

    n: int
    r: int
    p: int

    def validate(self) -> None:
        """restic's checks (spec §4.2); raises ValueError on invalid parameters."""
        n, r, p = self.n, self.r, self.p
        if n <= 1 or n & (n - 1) or n >= 1 << 31:
            raise ValueError(f"scrypt N={n} must be a power of two between 2 and 2^30")
        if r < 1 or p < 1:
            raise ValueError(f"scrypt r={r} and p={p} must be at least 1")
        if r * p >= 1 << 30:
            raise ValueError(f"scrypt r*p={r * p} must be below 2^30")
        if 128 * r * n > 1 << 33:
            raise ValueError(f"scrypt N={n}, r={r} need more than 8 GiB of memory")


def derive_key(password: str, salt: bytes, params: KdfParams) -> Key:
    """scrypt(password, salt) split into a user key, its lanes on all cores."""
    if len(salt) != SALT_SIZE:
        raise FormatError(f"scrypt salt must be {SALT_SIZE} bytes, not {len(salt)}")
    params.validate()
    raw = scrypt(password.encode("utf-8"), salt, params.n, params.r, params.p, 64)
    return Key.from_bytes(raw)


def kdf_from_env() -> KdfParams | None:
    """The ``CAIRN_KDF_PARAMS="N,r,p"`` override, validated; None when unset."""
    text = os.environ.get(KDF_ENV, "").strip()
    if not text:
        return None
    try:
        n, r, p = (int(v) for v in text.split(","))
        params = KdfParams(n, r, p)
        params.validate()
    except ValueError as e:
        raise UsageError(f"{KDF_ENV}={text!r} is not valid: expected N,r,p ({e})") from e
    return params


@functools.lru_cache(maxsize=1)
def calibrate_kdf() -> KdfParams:
    """Parameters at least as costly as restic's: N=32768, r=8, and p raised to fill the
    time budget; measured once per process.

    restic fills 500 ms with Go's scrypt; OpenSSL's (what `cryptography` uses) is ~1.25x
    slower per unit of p here (68 vs ~55 ms at N=32768, r=8), so the same 500 ms would
    give weaker keys than restic's (measured: p=7 vs restic's p=9 side by side). The
    budget is therefore 0.65 s, timed on warm derivations (the first one also pays page
    faults on its 32 MiB and would understate p). The budget is of sequential work:
    :func:`derive_key` then runs the p lanes on several cores, which shortens the wait
    but not the work an attacker must repeat per guessed password."""
    salt = os.urandom(SALT_SIZE)
    # The fastest of five warm timings: a busy moment makes a timing slow and p small,
    # and keys must not come out weaker than restic's because `init` ran under load.
    timings = []
    for _ in range(6):
        start = time.perf_counter()
        Scrypt(salt=salt, length=64, n=_CAL_N, r=_CAL_R, p=1).derive(b"calibration")
        timings.append(time.perf_counter() - start)
    one = max(min(timings[1:]), 1e-6)
    p = max(1, min(_CAL_MAX_P, round(_CAL_TARGET_S / one)))
    return KdfParams(_CAL_N, _CAL_R, p)


def default_kdf() -> KdfParams:
    """The environment override if set, else calibrated parameters."""
    return kdf_from_env() or calibrate_kdf()


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _unb64(text: object, what: str) -> bytes:
    if not isinstance(text, str):
        raise FormatError(f"{what} is not a base64 string")
    try:
        return base64.b64decode(text, validate=True)
    except ValueError as e:
        raise FormatError(f"{what} is not valid base64") from e


def encode_master_key(key: Key) -> bytes:
    """restic's master key JSON: {"mac":{"k":..,"r":..},"encrypt":..} (compact)."""
    return (
        f'{{"mac":{{"k":"{_b64(key.mac_k)}","r":"{_b64(key.mac_r)}"}},'
        f'"encrypt":"{_b64(key.encrypt)}"}}'
    ).encode("ascii")


def decode_master_key(data: bytes) -> Key:
    """Parse the master key JSON. ``r`` is kept as stored (newer restic leaves it
    unclamped); crypto clamps it on every use."""
    try:
        doc = json.loads(data)
        mac = doc["mac"]
        key = Key(
            encrypt=_unb64(doc["encrypt"], "master key 'encrypt'"),
            mac_k=_unb64(mac["k"], "master key 'mac.k'"),
            mac_r=_unb64(mac["r"], "master key 'mac.r'"),
        )
    except (ValueError, KeyError, TypeError) as e:
        raise FormatError(f"invalid master key: {e}") from e
    if not key.valid() or not any(clamp_r(key.mac_r)):
        raise FormatError("invalid master key: a part is all zero")
    return key


def _local_now() -> GoTime:
    ns = time.time_ns()
    return GoTime.from_ns(ns, time.localtime(ns // 1_000_000_000).tm_gmtoff)


def _username() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return ""


def build_key_file(
    master: Key,
    password: str,
    params: KdfParams,
    *,
    username: str | None = None,
    hostname: str | None = None,
    created: GoTime | None = None,
) -> bytes:
    """The bytes of a new key file wrapping ``master``, in restic's field order, compact,
    without a trailing newline."""
    params.validate()
    salt = os.urandom(SALT_SIZE)
    user = derive_key(password, salt, params)
    data = user.seal(encode_master_key(master))
    return (
        f'{{"created":"{format_time(created or _local_now())}",'
        f'"username":{go_string(_username() if username is None else username)},'
        f'"hostname":{go_string(socket.gethostname() if hostname is None else hostname)},'
        f'"kdf":"scrypt","N":{params.n},"r":{params.r},"p":{params.p},'
        f'"salt":"{_b64(salt)}","data":"{_b64(bytes(data))}"}}'
    ).encode()


def add_key(
    backend: Backend,
    master: Key,
    password: str,
    params: KdfParams,
    *,
    username: str | None = None,
    hostname: str | None = None,
) -> str:
    """Write a new key file for ``password``; returns its name (ID)."""
    data = build_key_file(master, password, params, username=username, hostname=hostname)
    name = hashlib.sha256(data).hexdigest()
    backend.save(Handle(FileType.KEY, name), data)
    return name


@dataclass(frozen=True)
class KeyFile:
    """A parsed key file (the fields restic writes)."""

    name: str
    created: str
    username: str
    hostname: str
    params: KdfParams
    salt: bytes
    data: bytes

    @classmethod
    def parse(cls, name: str, raw: bytes) -> KeyFile:
        """Parse and verify a key file; IntegrityError when its bytes do not match its name."""
        if not hmac.compare_digest(hashlib.sha256(raw).hexdigest(), name):
            raise IntegrityError(
                f"key file {name[:8]} is damaged: its content does not match its name"
            )
        try:
            doc = json.loads(raw)
            if not isinstance(doc, dict):
                raise ValueError("not a JSON object")
            kdf = doc.get("kdf")
            if kdf != "scrypt":
                raise FormatError(f"key file {name[:8]} uses unsupported KDF {kdf!r}")
            params = KdfParams(int(doc["N"]), int(doc["r"]), int(doc["p"]))
            params.validate()
            return cls(
                name=name,
                created=str(doc.get("created", "")),
                username=str(doc.get("username", "")),
                hostname=str(doc.get("hostname", "")),
                params=params,
                salt=_unb64(doc["salt"], "key salt"),
                data=_unb64(doc["data"], "key data"),
            )
        except (ValueError, KeyError, TypeError) as e:
            raise FormatError(f"key file {name[:8]} is invalid: {e}") from e

    def unlock(self, password: str) -> Key | None:
        """The master key, or None when the password is wrong for this key."""
        user = derive_key(password, self.salt, self.params)
        try:
            plain = user.open(self.data)
        except IntegrityError:
            return None
        return decode_master_key(plain)


def open_master_key(
    backend: Backend, password: str, *, key_hint: str | None = None
) -> tuple[Key, str]:
    """Try the key files (the hinted one first, at most 20) until one opens with
    ``password``. Returns (master key, key file name).

    A damaged key file (hash mismatch, bad JSON) does not stop the search; it is reported
    only when no other key opens, because then it may be the user's key."""
    names = _candidate_names(backend, key_hint)
    damaged: list[IntegrityError] = []
    for name in names[:MAX_KEYS_TRIED]:
        try:
            kf = KeyFile.parse(name, backend.load(Handle(FileType.KEY, name)))
        except NotFoundError:
            continue  # removed while we looked
        except IntegrityError as e:
            damaged.append(e)
            continue
        master = kf.unlock(password)
        if master is not None:
            return master, name
    if damaged:
        raise IntegrityError(f"{damaged[0]}; no other key matches the password")
    if not names:
        raise WrongPasswordError(f"no key files found in {backend.location}")
    raise WrongPasswordError("wrong password or no key found")


def _candidate_names(backend: Backend, key_hint: str | None) -> list[str]:
    names = sorted(fi.name for fi in backend.list(FileType.KEY))
    if key_hint:
        hinted = [n for n in names if n.startswith(key_hint)]
        if len(hinted) == 1:
            names.remove(hinted[0])
            names.insert(0, hinted[0])
    return names


def list_keys(backend: Backend) -> Iterable[KeyFile]:
    """Every readable key file (for `key list`); damaged ones are skipped."""
    for fi in backend.list(FileType.KEY):
        try:
            yield KeyFile.parse(fi.name, backend.load(Handle(FileType.KEY, fi.name)))
        except (IntegrityError, NotFoundError):
            continue
