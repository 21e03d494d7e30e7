"""Emulation of the bits of Go that shape restic's JSON bytes (spec §12).

restic serialises with Go's ``encoding/json``; a tree's ID is the SHA-256 of that text, so
cairn must write *exactly* the same bytes to deduplicate against restic-written trees.
Three pieces are needed:

* :func:`go_string` — a JSON string literal as Go's encoder writes it (HTML-safe escapes,
  ``\\u2028``/``\\u2029``, lowercase ``\\u00xx``, ``\\ufffd`` for invalid UTF-8);
* :func:`quote_name` / :func:`unquote_name` — Go's ``strconv.Quote``/``Unquote``, which restic
  applies to file names so that any byte sequence survives JSON;
* :func:`format_time` / :func:`parse_time` — RFC 3339 with trimmed nanoseconds.

Python strings that carry undecodable bytes use the ``surrogateescape`` convention
(U+DC80..U+DCFF stand for the raw bytes 0x80..0xFF), as ``os.fsdecode`` produces them.
"""

from __future__ import annotations

import base64
import binascii
import re
from datetime import date
from functools import lru_cache

from cairn.errors import FormatError
from cairn.repo.node import GoTime

__all__ = [
    "go_string",
    "quote_name",
    "unquote_name",
    "format_time",
    "parse_time",
    "clamp_year",
    "go_bytes",
    "parse_bytes",
    "utf8_lossy",
    "LossyUtf8",
]

# --- encoding/json strings -----------------------------------------------------------

# Characters Go's encoder does not copy verbatim (HTML-safe mode, the default). Lone
# surrogates are included because they stand for bytes that are not valid UTF-8.
_JSON_SPECIAL = re.compile('[\x00-\x1f"\\\\<>&\u2028\u2029\ud800-\udfff]')

_JSON_ESCAPES: dict[str, str] = {chr(c): f"\\u{c:04x}" for c in range(0x20)}
_JSON_ESCAPES.update(
    {
        "\n": "\\n",
        "\r": "\\r",
        "\t": "\\t",
        '"': '\\"',
        "\\": "\\\\",
        "<": "\\u003c",
        ">": "\\u003e",
        "&": "\\u0026",
        "\u2028": "\\u2028",
        "\u2029": "\\u2029",
    }
)
# Go writes \ufffd for each byte that is not part of a valid UTF-8 sequence. A surrogate
# from ``surrogateescape`` is one such byte; any other lone surrogate would be three
# bytes (ED xx xx) in WTF-8, each of them invalid for Go.
_JSON_ESCAPES.update({chr(c): "\\ufffd" for c in range(0xDC80, 0xDD00)})


def _json_escape(m: re.Match[str]) -> str:
    ch = m.group()
    esc = _JSON_ESCAPES.get(ch)
    return esc if esc is not None else "\\ufffd" * 3


class LossyUtf8(bytes):
    """Bytes decoded from a Go JSON string in which each U+FFFD was written as the escape
    ``\\ufffd``, i.e. stood for a byte that was not valid UTF-8 (restic 0.14's lossy symlink
    targets). Equal to the plain bytes; :func:`go_string` writes the escape back so that a
    decoded tree re-encodes to the same bytes."""


def go_string(s: str | bytes) -> str:
    """The JSON string literal (quotes included) that Go's ``encoding/json`` writes for
    ``s``. ``bytes`` are taken as Go's byte strings: invalid UTF-8 becomes ``\\ufffd``."""
    if isinstance(s, LossyUtf8):
        # A lone surrogate is escaped as \ufffd, exactly one per replaced byte.
        s = s.decode("utf-8", "surrogateescape").replace("\ufffd", "\udcff")
    elif not isinstance(s, str):
        raw = bytes(s)
        try:
            s = raw.decode("utf-8")
        except UnicodeDecodeError:
            s = raw.decode("utf-8", "surrogateescape")
    if _JSON_SPECIAL.search(s) is None:
        return f'"{s}"'
    return '"' + _JSON_SPECIAL.sub(_json_escape, s) + '"'


def utf8_lossy(s: str) -> str:
    """``s`` as Go would hold it after a JSON round trip: lone surrogates become U+FFFD."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return re.sub("[\ud800-\udfff]", "\ufffd", s)
    return s


def go_bytes(data: bytes | bytearray | None) -> str:
    """A Go ``[]byte`` as JSON: padded standard base64 in quotes, ``null`` for nil."""
    if data is None:
        return "null"
    return '"' + base64.b64encode(data).decode("ascii") + '"'


def parse_bytes(value: object) -> bytes | None:
    """Inverse of :func:`go_bytes` on a parsed JSON value (``None`` or a base64 string)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise FormatError(f"expected a base64 string, got {type(value).__name__}")
    try:
        # Go's decoder skips \r and \n inside base64 and is otherwise strict.
        return base64.b64decode(value.replace("\r", "").replace("\n", ""), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise FormatError(f"invalid base64 value {value[:40]!r}: {exc}") from None


# --- strconv.Quote / Unquote -----------------------------------------------------------

# Code points that Go 1.19 (restic 0.14, Unicode 13.0) does not consider printable but
# Python's ``str.isprintable`` does because its Unicode database is newer (14.0 in 3.11,
# 15.0 in 3.12, 15.1 in 3.13): characters assigned after Unicode 13, e.g. the emoji
# U+1FAE0. strconv.Quote escapes them, so must we to get restic's tree IDs. Generated by
# comparing ``isprintable`` over all code points in Python 3.10 (Unicode 13.0) with 3.11,
# 3.12 and 3.13; no code point went the other way.
_ASSIGNED_AFTER_UNICODE_13 = (
    (0x61D, 0x61D),
    (0x870, 0x88E),
    (0x898, 0x89F),
    (0x8B5, 0x8B5),
    (0x8C8, 0x8D2),
    (0xC3C, 0xC3C),
    (0xC5D, 0xC5D),
    (0xCDD, 0xCDD),
    (0xCF3, 0xCF3),
    (0xECE, 0xECE),
    (0x170D, 0x170D),
    (0x1715, 0x1715),
    (0x171F, 0x171F),
    (0x180F, 0x180F),
    (0x1AC1, 0x1ACE),
    (0x1B4C, 0x1B4C),
    (0x1B7D, 0x1B7E),
    (0x1DFA, 0x1DFA),
    (0x20C0, 0x20C0),
    (0x2C2F, 0x2C2F),
    (0x2C5F, 0x2C5F),
    (0x2E53, 0x2E5D),
    (0x2FFC, 0x2FFF),
    (0x31EF, 0x31EF),
    (0x9FFD, 0x9FFF),
    (0xA7C0, 0xA7C1),
    (0xA7D0, 0xA7D1),
    (0xA7D3, 0xA7D3),
    (0xA7D5, 0xA7D9),
    (0xA7F2, 0xA7F4),
    (0xFBC2, 0xFBC2),
    (0xFD40, 0xFD4F),
    (0xFDCF, 0xFDCF),
    (0xFDFE, 0xFDFF),
    (0x10570, 0x1057A),
    (0x1057C, 0x1058A),
    (0x1058C, 0x10592),
    (0x10594, 0x10595),
    (0x10597, 0x105A1),
    (0x105A3, 0x105B1),
    (0x105B3, 0x105B9),
    (0x105BB, 0x105BC),
    (0x10780, 0x10785),
    (0x10787, 0x107B0),
    (0x107B2, 0x107BA),
    (0x10EFD, 0x10EFF),
    (0x10F70, 0x10F89),
    (0x11070, 0x11075),
    (0x110C2, 0x110C2),
    (0x1123F, 0x11241),
    (0x116B9, 0x116B9),
    (0x11740, 0x11746),
    (0x11AB0, 0x11ABF),
    (0x11B00, 0x11B09),
    (0x11F00, 0x11F10),
    (0x11F12, 0x11F3A),
    (0x11F3E, 0x11F59),
    (0x12F90, 0x12FF2),
    (0x1342F, 0x1342F),
    (0x13440, 0x13455),
    (0x16A70, 0x16ABE),
    (0x16AC0, 0x16AC9),
    (0x1AFF0, 0x1AFF3),
    (0x1AFF5, 0x1AFFB),
    (0x1AFFD, 0x1AFFE),
    (0x1B11F, 0x1B122),
    (0x1B132, 0x1B132),
    (0x1B155, 0x1B155),
    (0x1CF00, 0x1CF2D),
    (0x1CF30, 0x1CF46),
    (0x1CF50, 0x1CFC3),
    (0x1D1E9, 0x1D1EA),
    (0x1D2C0, 0x1D2D3),
    (0x1DF00, 0x1DF1E),
    (0x1DF25, 0x1DF2A),
    (0x1E030, 0x1E06D),
    (0x1E08F, 0x1E08F),
    (0x1E290, 0x1E2AE),
    (0x1E4D0, 0x1E4F9),
    (0x1E7E0, 0x1E7E6),
    (0x1E7E8, 0x1E7EB),
    (0x1E7ED, 0x1E7EE),
    (0x1E7F0, 0x1E7FE),
    (0x1F6DC, 0x1F6DF),
    (0x1F774, 0x1F776),
    (0x1F77B, 0x1F77F),
    (0x1F7D9, 0x1F7D9),
    (0x1F7F0, 0x1F7F0),
    (0x1F979, 0x1F979),
    (0x1F9CC, 0x1F9CC),
    (0x1FA75, 0x1FA77),
    (0x1FA7B, 0x1FA7C),
    (0x1FA87, 0x1FA88),
    (0x1FAA9, 0x1FAAF),
    (0x1FAB7, 0x1FABD),
    (0x1FABF, 0x1FABF),
    (0x1FAC3, 0x1FAC5),
    (0x1FACE, 0x1FACF),
    (0x1FAD7, 0x1FADB),
    (0x1FAE0, 0x1FAE8),
    (0x1FAF0, 0x1FAF8),
    (0x2A6DE, 0x2A6DF),
    (0x2B735, 0x2B739),
    (0x2EBF0, 0x2EE5D),
    (0x31350, 0x323AF),
)
_NOT_PRINTABLE_FOR_GO = re.compile(
    "[" + "".join(f"{chr(a)}-{chr(b)}" for a, b in _ASSIGNED_AFTER_UNICODE_13) + "]"
)

# Bytes that force the slow path of quote_name for an ASCII name.
_QUOTE_ASCII_SPECIAL = re.compile(rb'[\x00-\x1f\x7f"\\]')
_QUOTE_SHORT = {
    "\a": "\\a",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\v": "\\v",
    '"': '\\"',
    "\\": "\\\\",
}


def _quote_char(ch: str) -> str:
    short = _QUOTE_SHORT.get(ch)
    if short is not None:
        return short
    c = ord(ch)
    if 0xDC80 <= c <= 0xDCFF:  # an undecodable byte (surrogateescape)
        return f"\\x{c - 0xDC00:02x}"
    if ch.isprintable() and _NOT_PRINTABLE_FOR_GO.match(ch) is None:
        return ch
    if c < 0x20 or c == 0x7F:
        return f"\\x{c:02x}"
    if c < 0x10000:
        return f"\\u{c:04x}"
    return f"\\U{c:08x}"


def quote_name(raw: bytes) -> str:
    """Go's ``strconv.Quote(raw)`` without the surrounding quotes.

    Printable runes (Go's ``unicode.IsPrint`` = Python's ``str.isprintable``, restricted to
    Unicode 13.0 as in the Go 1.19 that built restic 0.14) are kept,
    bytes that are not valid UTF-8 become ``\\xHH``, the rest get Go's escapes."""
    if raw.isascii():
        if _QUOTE_ASCII_SPECIAL.search(raw) is None:
            return raw.decode("ascii")
        s = raw.decode("ascii")
    else:
        s = raw.decode("utf-8", "surrogateescape")
        if (
            s.isprintable()
            and '"' not in s
            and "\\" not in s
            and _NOT_PRINTABLE_FOR_GO.search(s) is None
        ):
            return s
    return "".join([_quote_char(ch) for ch in s])


#: what makes a name need unquoting (anything else is its own bytes)
UNQUOTE_SPECIAL = re.compile('[\\\\"\n]')
_HEX = frozenset("0123456789abcdefABCDEF")
_UNQUOTE_SIMPLE = {
    "a": b"\a",
    "b": b"\b",
    "f": b"\f",
    "n": b"\n",
    "r": b"\r",
    "t": b"\t",
    "v": b"\v",
    "\\": b"\\",
    '"': b'"',
}


def _utf8(s: str) -> bytes:
    # A str from JSON may hold lone surrogates (\udXXX escapes); Go's decoder turns those
    # into U+FFFD, so do the same.
    try:
        return s.encode("utf-8")
    except UnicodeEncodeError:
        return utf8_lossy(s).encode("utf-8")


def unquote_name(s: str) -> bytes:
    """Go's ``strconv.Unquote('"' + s + '"')`` returning raw bytes (``\\xHH`` and octal
    escapes give single bytes). Raises :class:`FormatError` where Go reports a syntax error:
    an unknown escape, ``\\'``, a raw newline or an unescaped ``"``."""
    m = UNQUOTE_SPECIAL.search(s)
    if m is None:
        return _utf8(s)
    out = bytearray()
    pos = 0
    n = len(s)
    while m is not None:
        i = m.start()
        if i > pos:
            out += _utf8(s[pos:i])
        ch = s[i]
        if ch != "\\":
            raise FormatError(f"invalid quoted name {s!r}: unescaped {ch!r}")
        if i + 1 >= n:
            raise FormatError(f"invalid quoted name {s!r}: trailing backslash")
        c = s[i + 1]
        pos = i + 2
        simple = _UNQUOTE_SIMPLE.get(c)
        if simple is not None:
            out += simple
        elif c in "xuU":
            width = 2 if c == "x" else 4 if c == "u" else 8
            digits = s[pos : pos + width]
            if len(digits) != width or not _HEX.issuperset(digits):
                raise FormatError(f"invalid quoted name {s!r}: bad \\{c} escape")
            v = int(digits, 16)
            pos += width
            if c == "x":
                out.append(v)
            else:
                if v > 0x10FFFF or 0xD800 <= v <= 0xDFFF:
                    raise FormatError(f"invalid quoted name {s!r}: invalid code point")
                out += chr(v).encode("utf-8")
        elif "0" <= c <= "7":
            digits = s[pos - 1 : pos + 2]
            if len(digits) != 3 or any(not "0" <= d <= "7" for d in digits):
                raise FormatError(f"invalid quoted name {s!r}: bad octal escape")
            v = int(digits, 8)
            if v > 255:
                raise FormatError(f"invalid quoted name {s!r}: octal escape above 255")
            out.append(v)
            pos += 2
        else:
            raise FormatError(f"invalid quoted name {s!r}: unknown escape \\{c}")
        m = UNQUOTE_SPECIAL.search(s, pos)
    if pos < n:
        out += _utf8(s[pos:])
    return bytes(out)


# --- times ---------------------------------------------------------------------------


def _days_from_civil(y: int, m: int, d: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm);
    works for any year, unlike ``datetime`` (1..9999)."""
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def _civil_from_days(z: int) -> tuple[int, int, int]:
    z += 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    y = yoe + era * 400
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + 3 if mp < 10 else mp - 9
    return y + (m <= 2), m, d


def _is_leap(y: int) -> bool:
    return y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)


_MONTH_DAYS = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def clamp_year(t: GoTime) -> GoTime:
    """restic's ``fixTime``: move a time whose (local) year is outside 0..9999 to year 0 or
    9999 with Go's ``AddDate`` (same month, day and clock; Feb 29 may roll to Mar 1)."""
    wall = t.sec + t.offset
    days, rem = divmod(wall, 86400)
    y, m, d = _civil_from_days(days)
    if 0 <= y <= 9999:
        return t
    target = 0 if y < 0 else 9999
    new_days = _days_from_civil(target, m, 1) + d - 1  # AddDate normalises overflowing days
    return GoTime(new_days * 86400 + rem - t.offset, t.nsec, t.offset)


# Days from 0001-01-01 (ordinal 1 in Python's calendar) to 1970-01-01.
_UNIX_EPOCH_ORDINAL = 719163
_MAX_ORDINAL = date.max.toordinal()


def _civil(days: int) -> tuple[int, int, int]:
    ordinal = days + _UNIX_EPOCH_ORDINAL
    if 1 <= ordinal <= _MAX_ORDINAL:  # C fast path for years 1..9999
        dt = date.fromordinal(ordinal)
        return dt.year, dt.month, dt.day
    return _civil_from_days(days)


@lru_cache(maxsize=8192)
def _format_time_cached(sec: int, nsec: int, offset: int) -> str:
    days, rem = divmod(sec + offset, 86400)
    y, mo, d = _civil(days)
    if not 0 <= y <= 9999:
        t = clamp_year(GoTime(sec, nsec, offset))
        days, rem = divmod(t.sec + offset, 86400)
        y, mo, d = _civil_from_days(days)
    hh, rem = divmod(rem, 3600)
    mi, ss = divmod(rem, 60)
    text = f"{y:04d}-{mo:02d}-{d:02d}T{hh:02d}:{mi:02d}:{ss:02d}"
    if nsec:
        text += f".{nsec:09d}".rstrip("0")
    if offset == 0:
        return text + "Z"
    # Go prints whole minutes only, truncating toward zero (sub-minute offsets are lost).
    zone = abs(offset) // 60
    sign = "-" if offset < 0 and zone else "+"
    return f"{text}{sign}{zone // 60:02d}:{zone % 60:02d}"


def format_time(t: GoTime) -> str:
    """Go's ``time.Time.MarshalJSON`` text without quotes (RFC 3339, nanoseconds with
    trailing zeros trimmed, ``Z`` for offset 0), after restic's year clamping."""
    if not 0 <= t.nsec < 1_000_000_000:
        raise ValueError(f"nanoseconds out of range: {t.nsec}")
    return _format_time_cached(t.sec, t.nsec, t.offset)


_TIME_RE = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:[.,](\d+))?"
    r"(?:([Zz])|([+-])(\d{2}):(\d{2}))",
    re.ASCII,
)


@lru_cache(maxsize=8192)
def parse_time(s: str) -> GoTime:
    """Parse an RFC 3339 time as Go's ``time.Time.UnmarshalJSON`` does, keeping the
    nanoseconds and the zone offset. Raises :class:`FormatError` on malformed input."""
    m = _TIME_RE.fullmatch(s)
    if m is None:
        raise FormatError(f"invalid time {s!r}")
    ys, mos, ds, hhs, mis, sss, frac, z, sign, ohs, oms = m.groups()
    y, mo, d = int(ys), int(mos), int(ds)
    try:
        days = date(y, mo, d).toordinal() - _UNIX_EPOCH_ORDINAL
    except ValueError:
        # Year 0 is valid for Go (and restic clamps to it) but not for ``date``.
        dim = 29 if mo == 2 and _is_leap(y) else _MONTH_DAYS[mo - 1] if 1 <= mo <= 12 else 0
        if y != 0 or not 1 <= d <= dim:
            raise FormatError(f"invalid time {s!r}: date out of range") from None
        days = _days_from_civil(y, mo, d)
    hh, mi, ss = int(hhs), int(mis), int(sss)
    if hh > 23 or mi > 59 or ss > 59:
        raise FormatError(f"invalid time {s!r}: clock out of range")
    nsec = int(frac[:9].ljust(9, "0")) if frac else 0
    if z:
        offset = 0
    else:
        oh, om = int(ohs), int(oms)
        if oh > 23 or om > 59:
            raise FormatError(f"invalid time {s!r}: zone offset out of range")
        offset = (oh * 3600 + om * 60) * (-1 if sign == "-" else 1)
    return GoTime(days * 86400 + hh * 3600 + mi * 60 + ss - offset, nsec, offset)
