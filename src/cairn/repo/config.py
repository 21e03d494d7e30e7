"""The ``config`` file: repository version, identity and chunker polynomial (spec §5).

It is sealed with the master key but never compressed and never prefixed with a version
byte, in every repository version: it must be readable before the version is known.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from cairn.chunker.polynomial import (
    format_polynomial,
    parse_polynomial,
    random_polynomial,
    validate_polynomial,
)
from cairn.errors import FormatError, UnsupportedRepositoryError

SUPPORTED_VERSIONS = (1, 2)
LATEST_VERSION = 2


@dataclass(frozen=True)
class Config:
    """What ``config`` holds. ``id`` is 64 lowercase hex digits."""

    version: int
    id: str
    chunker_polynomial: int

    @classmethod
    def new(cls, version: int = LATEST_VERSION, polynomial: int | None = None) -> Config:
        """A fresh config with a random ID and (unless given) a random irreducible polynomial."""
        if version not in SUPPORTED_VERSIONS:
            raise UnsupportedRepositoryError(
                f"repository version {version} is not supported (use 1 or 2)"
            )
        poly = random_polynomial() if polynomial is None else polynomial
        cfg = cls(version, os.urandom(32).hex(), poly)
        cfg.check()
        return cfg

    def check(self) -> None:
        """restic's reader rules: version 1 or 2, irreducible polynomial."""
        if self.version not in SUPPORTED_VERSIONS:
            raise UnsupportedRepositoryError(
                f"repository version {self.version} is not supported by this cairn "
                f"(it reads versions 1 and 2); a newer program wrote it"
            )
        try:
            validate_polynomial(self.chunker_polynomial)
        except UnsupportedRepositoryError as e:
            raise UnsupportedRepositoryError(
                f"{e} {format_polynomial(self.chunker_polynomial)} in the repository config "
                f"(restic refuses it too)"
            ) from e

    def encode(self) -> bytes:
        """restic's compact JSON (Go strconv.FormatUint(p, 16) for the polynomial)."""
        return (
            f'{{"version":{self.version},"id":"{self.id}",'
            f'"chunker_polynomial":"{format_polynomial(self.chunker_polynomial)}"}}'
        ).encode("ascii")

    @classmethod
    def decode(cls, data: bytes) -> Config:
        """Parse and check (UnsupportedRepositoryError for a version or polynomial we refuse)."""
        try:
            doc = json.loads(data)
            if not isinstance(doc, dict):
                raise ValueError("not a JSON object")
            version = doc["version"]
            if not isinstance(version, int) or isinstance(version, bool):
                raise ValueError("version is not an integer")
            poly_text = doc["chunker_polynomial"]
            if not isinstance(poly_text, str):
                raise ValueError("chunker_polynomial is not a string")
            cfg = cls(version, str(doc.get("id", "")), parse_polynomial(poly_text))
        except (ValueError, KeyError, TypeError) as e:
            raise FormatError(f"the repository config is invalid: {e}") from e
        cfg.check()
        return cfg
