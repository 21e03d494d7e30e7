"""The chunker polynomial: Ben-Or irreducibility, random choice, hex form, validation."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cairn.chunker.polynomial import (
    format_polynomial,
    irreducible,
    parse_polynomial,
    random_polynomial,
    validate_polynomial,
)
from cairn.errors import UnsupportedRepositoryError
from tests.chunker.reference import pmod

# Spec §13.6: restic's test suite, the design document's example, the two fixture repos.
KNOWN_IRREDUCIBLE = [0x3DA3358B4DC173, 0x25B468838DCB75, 0x364DB5C33BE699, 0x347E3B154B5D79]


def _pmul(a: int, b: int) -> int:
    """Carry-less product."""
    r = 0
    while b:
        if b & 1:
            r ^= a
        a <<= 1
        b >>= 1
    return r


def _has_factor_by_trial_division(p: int) -> bool:
    """Obviously correct and only feasible for small degrees."""
    d = p.bit_length() - 1
    return any(pmod(p, q) == 0 for q in range(2, 1 << (d // 2 + 1)) if q.bit_length() - 1 <= d // 2)


@pytest.mark.parametrize("p", KNOWN_IRREDUCIBLE)
def test_known_irreducible(p: int) -> None:
    assert irreducible(p)
    assert validate_polynomial(format_polynomial(p)) == p


def test_reducible() -> None:
    assert not irreducible(0x20000000000001)  # x^53 + 1 = (x + 1)(...)
    assert not irreducible(_pmul(0x3DA3358B4DC173 >> 10 | 1, 0x400003))
    assert not irreducible(0)
    assert not irreducible(1)
    with pytest.raises(UnsupportedRepositoryError, match="invalid chunker polynomial"):
        validate_polynomial("20000000000001")


@settings(max_examples=200, deadline=None)
@given(st.integers(2, (1 << 13) - 1))
def test_ben_or_equals_trial_division(p: int) -> None:
    assert irreducible(p) == (p.bit_length() > 1 and not _has_factor_by_trial_division(p))


@settings(max_examples=50, deadline=None)
@given(st.integers(1 << 20, (1 << 30) - 1), st.integers(1 << 20, (1 << 30) - 1))
def test_products_are_reducible(a: int, b: int) -> None:
    assert not irreducible(_pmul(a, b))


def test_random_polynomials_are_irreducible_of_degree_53() -> None:
    seen = set()
    for _ in range(20):
        p = random_polynomial()
        assert p.bit_length() - 1 == 53
        assert p & 1
        assert irreducible(p)
        seen.add(p)
    assert len(seen) == 20


def test_hex_form() -> None:
    assert format_polynomial(0x364DB5C33BE699) == "364db5c33be699"
    assert parse_polynomial("364db5c33be699") == 0x364DB5C33BE699
    assert parse_polynomial("364DB5C33BE699") == 0x364DB5C33BE699


@pytest.mark.parametrize(
    "text", ["", "0x364db5c33be699", " 364db5c33be699", "-1", "36_4d", "zz", "1" * 17]
)
def test_malformed_hex_is_rejected(text: str) -> None:
    with pytest.raises(UnsupportedRepositoryError, match="invalid chunker polynomial"):
        validate_polynomial(text)


def test_irreducible_of_unusable_degree_is_rejected() -> None:
    assert irreducible(0x7)  # x^2 + x + 1
    with pytest.raises(UnsupportedRepositoryError):
        validate_polynomial(0x7)
