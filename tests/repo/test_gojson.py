"""Go encoding/json, strconv.Quote/Unquote and RFC 3339 emulation (spec §12)."""

from __future__ import annotations

import json
import unicodedata
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cairn.errors import FormatError
from cairn.repo.gojson import (
    _ASSIGNED_AFTER_UNICODE_13,
    LossyUtf8,
    clamp_year,
    format_time,
    go_bytes,
    go_string,
    parse_bytes,
    parse_time,
    quote_name,
    unquote_name,
)
from cairn.repo.node import ZERO_TIME, GoTime

# --- a small independent reference of Go's rules, byte by byte --------------------------


def _decode_rune(b: bytes, i: int) -> tuple[int, int]:
    """Go's utf8.DecodeRune: (rune, size); (-1, 1) for an invalid byte."""
    c = b[i]
    if c < 0x80:
        return c, 1
    if 0xC0 <= c <= 0xDF:
        size, r, lo_min = 2, c & 0x1F, 0x80
    elif 0xE0 <= c <= 0xEF:
        size, r, lo_min = 3, c & 0x0F, 0x800
    elif 0xF0 <= c <= 0xF7:
        size, r, lo_min = 4, c & 0x07, 0x10000
    else:
        return -1, 1
    if i + size > len(b):
        return -1, 1
    for k in range(1, size):
        cc = b[i + k]
        if cc & 0xC0 != 0x80:
            return -1, 1
        r = r << 6 | (cc & 0x3F)
    if r < lo_min or r > 0x10FFFF or 0xD800 <= r <= 0xDFFF:
        return -1, 1
    return r, size


def _ref_json_string(b: bytes) -> str:
    """encoding/json encodeState.string with escapeHTML=true (Go 1.19)."""
    out = ['"']
    i = 0
    while i < len(b):
        c = b[i]
        if c < 0x80:
            if c >= 0x20 and c not in b'"\\<>&':
                out.append(chr(c))
            elif c in b'"\\':
                out.append("\\" + chr(c))
            elif c in b"\n\r\t":
                out.append({10: "\\n", 13: "\\r", 9: "\\t"}[c])
            else:
                out.append("\\u00" + "0123456789abcdef"[c >> 4] + "0123456789abcdef"[c & 15])
            i += 1
            continue
        r, size = _decode_rune(b, i)
        if r < 0:
            out.append("\\ufffd")
        elif r in (0x2028, 0x2029):
            out.append(f"\\u{r:04x}")
        else:
            out.append(chr(r))
        i += size
    return "".join(out) + '"'


def _go_is_print(r: int) -> bool:
    if r == 0x20:
        return True
    if any(a <= r <= b for a, b in _ASSIGNED_AFTER_UNICODE_13):
        return False  # Go 1.19 knows Unicode 13 only
    return unicodedata.category(chr(r))[0] in "LMNPS"


def _ref_quote(b: bytes) -> str:
    """strconv.Quote without quotes (Go 1.19 appendEscapedRune)."""
    out = []
    i = 0
    while i < len(b):
        r, size = _decode_rune(b, i)
        i += size
        if r < 0:
            out.append(f"\\x{b[i - 1]:02x}")
        elif r in (0x22, 0x5C):
            out.append("\\" + chr(r))
        elif _go_is_print(r):
            out.append(chr(r))
        elif r in (7, 8, 12, 10, 13, 9, 11):
            out.append("\\" + "abfnrtv"[[7, 8, 12, 10, 13, 9, 11].index(r)])
        elif r < 0x20 or r == 0x7F:
            out.append(f"\\x{r:02x}")
        elif r < 0x10000:
            out.append(f"\\u{r:04x}")
        else:
            out.append(f"\\U{r:08x}")
    return "".join(out)


# Bytes around the UTF-8 edge cases, so that generated strings hit them often.
_tricky_bytes = st.lists(
    st.one_of(
        st.binary(max_size=4),
        st.sampled_from(
            [
                b"\xed\xa0\x80",  # encoded surrogate: invalid for Go
                b"\xc0\xaf",  # overlong
                b"\xf4\x90\x80\x80",  # above U+10FFFF
                b"\xe2\x80\xa8",  # U+2028
                b"\xef\xbf\xbd",  # a real U+FFFD
                b"\xc2\xa0",  # NBSP (not printable for Go)
                b"\xc2\x85",  # C1 control
                b"\xf0\x9f\x98\x80",  # emoji
                b"\xe2\x82",  # truncated
                b'<&>"\\\x7f\x08\x0c\x00\n\t\r',
            ]
        ),
        st.text(max_size=4).map(lambda s: s.encode("utf-8", "surrogatepass")),
    ),
    max_size=8,
).map(b"".join)


# --- go_string ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("plain", '"plain"'),
        ("", '""'),
        ("<a&b>", '"\\u003ca\\u0026b\\u003e"'),
        ('q"b\\', '"q\\"b\\\\"'),
        ("\n\r\t", '"\\n\\r\\t"'),
        ("\x00\x01\x1f", '"\\u0000\\u0001\\u001f"'),
        ("\x08\x0c", '"\\u0008\\u000c"'),  # Go 1.19 (restic 0.14): no \b \f
        ("\x7f", '"\x7f"'),  # DEL raw
        ("\u2028\u2029", '"\\u2028\\u2029"'),
        ("\u00e9\u65e5\U0001f600\ufffd", '"\u00e9\u65e5\U0001f600\ufffd"'),
        (b"target-\xff-not-utf8", '"target-\\ufffd-not-utf8"'),
        (b"\xe2\x82", '"\\ufffd\\ufffd"'),  # one escape per invalid byte
        (b"\xed\xa0\x80", '"\\ufffd\\ufffd\\ufffd"'),
        (b"\xef\xbf\xbd", '"\ufffd"'),  # a valid U+FFFD stays raw
        (LossyUtf8(b"a\xef\xbf\xbdb"), '"a\\ufffdb"'),
    ],
)
def test_go_string_examples(value: str | bytes, expected: str) -> None:
    assert go_string(value) == expected


@given(st.text().filter(lambda s: not any(0xD800 <= ord(c) <= 0xDFFF for c in s)))
def test_go_string_is_json_for_the_same_text(s: str) -> None:
    assert json.loads(go_string(s)) == s
    assert go_string(s) == go_string(s.encode("utf-8"))


@given(_tricky_bytes)
def test_go_string_matches_reference(b: bytes) -> None:
    assert go_string(b) == _ref_json_string(b)


def test_go_string_surrogateescape_str_is_one_fffd_per_byte() -> None:
    assert go_string(b"a\xffb".decode("utf-8", "surrogateescape")) == '"a\\ufffdb"'


def test_base64_helpers() -> None:
    assert go_bytes(None) == "null"
    assert go_bytes(b"") == '""'
    assert go_bytes(b"\x00\x01\x02\xff") == '"AAEC/w=="'
    assert parse_bytes("AAEC/w==") == b"\x00\x01\x02\xff"
    assert parse_bytes(None) is None
    with pytest.raises(FormatError):
        parse_bytes("AAEC/w=")
    with pytest.raises(FormatError):
        parse_bytes(5)


# --- quote_name / unquote_name ------------------------------------------------------------

# Spec §12.2 table (the JSON text as stored in the fixture trees).
NAME_TABLE = [
    (b"name with spaces.txt", '"name with spaces.txt"'),
    (b'quote"and\\backslash.txt', '"quote\\\\\\"and\\\\\\\\backslash.txt"'),
    (b"tab\tname.txt", '"tab\\\\tname.txt"'),
    (b"html<&>chars.txt", '"html\\u003c\\u0026\\u003echars.txt"'),
    ("nbsp\u00a0name.txt".encode(), '"nbsp\\\\u00a0name.txt"'),
    ("emoji-\U0001f600.txt".encode(), '"emoji-\U0001f600.txt"'),
    ("ünïcödé-日本語.txt".encode(), '"ünïcödé-日本語.txt"'),
    (b"bad-utf8-\xff\xfe.bin", '"bad-utf8-\\\\xff\\\\xfe.bin"'),
]


@pytest.mark.parametrize(("raw", "stored"), NAME_TABLE)
def test_name_table(raw: bytes, stored: str) -> None:
    assert go_string(quote_name(raw)) == stored
    assert unquote_name(json.loads(stored)) == raw


@pytest.mark.parametrize(
    ("raw", "quoted"),
    [
        (b"\x07\x08\x0c\n\r\t\x0b", "\\a\\b\\f\\n\\r\\t\\v"),
        (b"\x00\x1f\x7f", "\\x00\\x1f\\x7f"),
        ("\u0085\u2028\ufeff".encode(), "\\u0085\\u2028\\ufeff"),
        ("\U000e0001".encode(), "\\U000e0001"),  # a format character outside the BMP
        ("\ufffd".encode(), "\ufffd"),  # a real U+FFFD is printable
        # Assigned after Unicode 13: not printable for the Go 1.19 behind restic 0.14.
        ("\U0001fae0\u9ffd\u061d".encode(), "\\U0001fae0\\u9ffd\\u061d"),
        ("\U0001f600\u9ffc".encode(), "\U0001f600\u9ffc"),
        (b"\xed\xa0\x80", "\\xed\\xa0\\x80"),
        (b"", ""),
    ],
)
def test_quote_name_escapes(raw: bytes, quoted: str) -> None:
    assert quote_name(raw) == quoted
    assert unquote_name(quoted) == raw


@pytest.mark.parametrize(
    ("quoted", "raw"),
    [
        ("\\101\\377\\000", b"A\xff\x00"),  # octal escapes are single bytes
        ("\\u00e9\\U0001F600", "é\U0001f600".encode()),  # upper-case hex accepted
        ("\\x41\\xFF", b"A\xff"),
        ("raw\ttab", b"raw\ttab"),  # Go accepts unescaped control chars except newline
        ("\\u0041", b"A"),
    ],
)
def test_unquote_name_accepts(quoted: str, raw: bytes) -> None:
    assert unquote_name(quoted) == raw


@pytest.mark.parametrize(
    "bad",
    ["\\q", "\\'", "a\nb", 'a"b', "trailing\\", "\\x4", "\\xg0", "\\ud800", "\\400", "\\12",
     "\\U00110000", "\\u12"],
)  # fmt: skip
def test_unquote_name_rejects(bad: str) -> None:
    with pytest.raises(FormatError):
        unquote_name(bad)


@given(st.binary(max_size=40) | _tricky_bytes)
def test_quote_round_trip(raw: bytes) -> None:
    q = quote_name(raw)
    q.encode("utf-8")  # no lone surrogates: valid UTF-8
    assert unquote_name(q) == raw
    assert q == _ref_quote(raw)


# --- times ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "t"),
    [
        ("2021-01-02T03:04:05Z", GoTime(1609556645, 0, 0)),
        ("2021-01-02T03:04:06.5Z", GoTime(1609556646, 500_000_000, 0)),
        ("2021-01-02T13:04:15.23456789Z", GoTime(1609592655, 234_567_890, 0)),
        ("2100-01-01T00:00:00.000000001Z", GoTime(4102444800, 1, 0)),
        ("1969-07-20T20:17:40Z", GoTime(-14182940, 0, 0)),
        ("0001-01-01T00:00:00Z", ZERO_TIME),
        ("2021-07-01T14:00:00+02:00", GoTime(1625140800, 0, 7200)),
        ("2021-01-01T01:00:00.1+01:00", GoTime(1609459200, 100_000_000, 3600)),
        ("2020-12-31T18:30:00-05:30", GoTime(1609459200, 0, -19800)),
        ("0000-03-01T00:00:00Z", GoTime(-62162035200, 0, 0)),
        ("9999-12-31T23:59:59.999999999Z", GoTime(253402300799, 999_999_999, 0)),
    ],
)
def test_time_examples(text: str, t: GoTime) -> None:
    assert format_time(t) == text
    assert parse_time(text) == t


def test_time_go_quirks() -> None:
    # Go prints whole minutes of the offset, truncated toward zero.
    assert format_time(GoTime(0, 0, -30)) == "1969-12-31T23:59:30+00:00"
    assert format_time(GoTime(0, 0, 3628)) == "1970-01-01T01:00:28+01:00"
    # The reader is lenient where Go's is: lower-case t/z, comma, more than 9 digits.
    assert parse_time("2021-01-02t03:04:05,5z") == GoTime(1609556645, 500_000_000, 0)
    assert parse_time("2021-01-02T03:04:05.1234567891Z").nsec == 123_456_789


def test_time_clamping_like_restic() -> None:
    # fixTime: year < 0 -> year 0, year > 9999 -> 9999, same month/day/clock.
    before = parse_time("0000-06-15T12:00:00Z")
    very_old = GoTime(before.sec - 5 * 31_556_952, 0, 0)  # about year -5, same date
    assert format_time(very_old).startswith("0000-")
    assert format_time(clamp_year(very_old)) == format_time(very_old)
    future = parse_time("9999-02-28T10:00:00Z")
    leap_10000 = GoTime(future.sec + 366 * 86400 + 86400, 0, 0)  # 10000-02-29
    assert format_time(leap_10000) == "9999-03-01T10:00:00Z"
    assert clamp_year(future) == future


@pytest.mark.parametrize(
    "bad",
    ["", "2021-01-02", "2021-01-02T03:04:05", "2021-02-30T00:00:00Z", "2021-13-01T00:00:00Z",
     "2021-01-01T24:00:00Z", "2021-01-01T00:60:00Z", "2021-01-01T00:00:60Z",
     "2021-01-01T00:00:00+24:00", "21-01-01T00:00:00Z", "2021-01-01T00:00:00.Z",
     " 2021-01-01T00:00:00Z", "2021-01-01T00:00:00Z "],
)  # fmt: skip
def test_parse_time_rejects(bad: str) -> None:
    with pytest.raises(FormatError):
        parse_time(bad)


def test_format_time_rejects_bad_nanoseconds() -> None:
    with pytest.raises(ValueError):
        format_time(GoTime(0, 1_000_000_000, 0))


_WALL_MIN = -62167219200  # 0000-01-01T00:00:00 local
_WALL_MAX = 253402300799  # 9999-12-31T23:59:59 local


@st.composite
def go_times(draw: st.DrawFn) -> GoTime:
    offset = draw(st.integers(-(23 * 60 + 59), 23 * 60 + 59)) * 60
    wall = draw(st.integers(_WALL_MIN, _WALL_MAX))
    return GoTime(wall - offset, draw(st.integers(0, 999_999_999)), offset)


@given(go_times())
def test_time_round_trip(t: GoTime) -> None:
    assert parse_time(format_time(t)) == t


@given(st.integers(-62135596800, 253402300799), st.integers(0, 999_999))
def test_format_time_agrees_with_datetime(sec: int, usec: int) -> None:
    dt = datetime.fromtimestamp(sec, UTC).replace(microsecond=usec)
    expected = f"{dt.year:04d}" + dt.strftime("-%m-%dT%H:%M:%S")
    if usec:
        expected += f".{usec:06d}".rstrip("0")
    expected += "Z"
    assert format_time(GoTime(sec, usec * 1000, 0)) == expected
