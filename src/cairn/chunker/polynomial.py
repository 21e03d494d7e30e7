"""The chunker polynomial: irreducibility test, random choice at ``init``, hex form in ``config``.

A polynomial over GF(2) is an ``int`` whose bit *i* is the coefficient of x^i (spec §13.1).
All arithmetic is carry-less: addition is XOR.
"""

from __future__ import annotations

import re
import secrets

from cairn.errors import UnsupportedRepositoryError

#: Degree of the polynomials restic generates.
DEGREE = 53

#: Degrees the C chunker can handle (it needs a top byte and ``h << 8`` within 64 bits).
_MIN_DEGREE = 9
_MAX_DEGREE = 56

_RANDOM_ATTEMPTS = 1_000_000

_HEX = re.compile(r"0*[0-9a-fA-F]{1,16}")


def _pmod(a: int, m: int) -> int:
    """``a mod m`` over GF(2)."""
    dm = m.bit_length()
    while (da := a.bit_length()) >= dm:
        a ^= m << (da - dm)
    return a


def _pmulmod(a: int, b: int, m: int) -> int:
    """Carry-less ``a * b mod m``."""
    r = 0
    while b:
        if b & 1:
            r ^= a
        b >>= 1
        a <<= 1
    return _pmod(r, m)


def _pgcd(a: int, b: int) -> int:
    """Greatest common divisor over GF(2) (Euclid with polynomial remainders)."""
    while b:
        a, b = b, _pmod(a, b)
    return a


def irreducible(p: int) -> bool:
    """True when ``p`` has no non-trivial factor over GF(2) (Ben-Or's test, spec §13.6).

    ``p`` is irreducible iff ``gcd(p, x^(2^i) - x mod p) == 1`` for every i in 1..deg/2.
    """
    if p < 2:
        return False
    h = 2  # the polynomial x
    for _ in range((p.bit_length() - 1) // 2):
        h = _pmulmod(h, h, p)  # x^(2^i) mod p by repeated squaring
        if _pgcd(p, h ^ 2) != 1:  # subtracting x is XOR with 2
            return False
    return True


def random_polynomial() -> int:
    """A random irreducible polynomial of degree 53 from the OS CSPRNG (restic's procedure, §13.5)."""
    for _ in range(_RANDOM_ATTEMPTS):
        f = int.from_bytes(secrets.token_bytes(8), "little")
        f &= (1 << (DEGREE + 1)) - 1
        f |= (1 << DEGREE) | 1
        if irreducible(f):
            return f
    raise RuntimeError("unable to find new random irreducible polynomial")  # pragma: no cover


def parse_polynomial(text: str) -> int:
    """The polynomial written as hex in ``config`` (no ``0x``; restic writes lowercase)."""
    # Like Go's strconv.ParseUint(s, 16, 64): hex digits only, at most 64 bits.
    if not _HEX.fullmatch(text):
        raise UnsupportedRepositoryError("invalid chunker polynomial")
    return int(text, 16)


def format_polynomial(p: int) -> str:
    """The form stored in ``config``: lowercase hex without ``0x``."""
    return format(p, "x")


def validate_polynomial(value: str | int) -> int:
    """Parse (when given text) and check a polynomial from a repository's config.

    Raises :class:`UnsupportedRepositoryError` for anything restic would refuse (not
    irreducible) or that our chunker cannot run (degree outside 9..56).
    """
    p = parse_polynomial(value) if isinstance(value, str) else value
    if not (_MIN_DEGREE <= p.bit_length() - 1 <= _MAX_DEGREE) or not irreducible(p):
        raise UnsupportedRepositoryError("invalid chunker polynomial")
    return p
