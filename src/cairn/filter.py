"""Include/exclude patterns with restic's semantics (restic 0.14 ``internal/filter``),
shared by backup excludes and restore includes/excludes.

A pattern is split at ``/`` into parts; each part is a Go ``filepath.Match`` glob for one
path component, and a part ``**`` matches any number of components. A pattern with a
leading ``/`` is anchored at the root; any other pattern matches any run of consecutive
components, so ``foo`` matches ``/a/foo`` and everything below it. Paths and patterns are
bytes: file names need not be UTF-8. In pattern lists a leading ``!`` re-includes what an
earlier pattern matched.
"""

from __future__ import annotations

import os.path
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cairn.errors import UsageError

_GLOB_CHARS = re.compile(rb"[\\\[\]*?]")


@dataclass(frozen=True)
class _Part:
    text: bytes
    #: None for a literal part (compared with ==), else the compiled glob.
    regex: re.Pattern[str] | None


def _glob_to_regex(glob: bytes) -> re.Pattern[str]:
    """Translate one Go ``filepath.Match`` component pattern to a regex over runes.

    Go semantics: ``*`` any run of non-separators, ``?`` one rune, ``[...]`` a class with
    ``^`` for negation and ``a-z`` ranges, ``\\`` escapes the next rune. Names are matched
    as decoded text (invalid bytes become one surrogate each, as Go sees one rune per
    invalid byte). A malformed pattern is a usage error (Go's ErrBadPattern)."""
    text = glob.decode("utf-8", "surrogateescape")
    bad = UsageError(f"invalid pattern {glob!r}")
    out: list[str] = []
    i, n = 0, len(text)

    def escaped(j: int) -> tuple[str, int]:
        # One (possibly backslash-escaped) class member; Go rejects a bare "-" or "]".
        if j >= n or text[j] in "-]":
            raise bad
        if text[j] == "\\":
            j += 1
            if j >= n:
                raise bad
        return text[j], j + 1

    while i < n:
        c = text[i]
        i += 1
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "\\":
            if i >= n:
                raise bad
            out.append(re.escape(text[i]))
            i += 1
        elif c == "[":
            negate = i < n and text[i] == "^"
            if negate:
                i += 1
            items: list[str] = []
            while True:
                if i < n and text[i] == "]" and items:
                    i += 1
                    break
                lo, i = escaped(i)
                hi = lo
                if i < n and text[i] == "-":
                    hi, i = escaped(i + 1)
                    if hi < lo:
                        raise bad
                items.append(re.escape(lo) + ("-" + re.escape(hi) if hi != lo else ""))
            out.append("[" + ("^/" if negate else "") + "".join(items) + "]")
        else:
            out.append(re.escape(c))
    return re.compile("".join(out) + r"\Z", re.DOTALL)


class Pattern:
    """One prepared pattern (restic ``preparePattern``: cleaned, split at ``/``)."""

    __slots__ = ("parts", "text")

    def __init__(self, text: str | bytes) -> None:
        raw = os.fsencode(text)
        if not raw:
            raise UsageError("empty pattern")
        self.text = raw
        cleaned = os.path.normpath(raw)
        # Go's filepath.Clean keeps a single leading slash; normpath keeps two.
        if cleaned.startswith(b"//"):
            cleaned = b"/" + cleaned.lstrip(b"/")
        self.parts = [
            _Part(p, _glob_to_regex(p) if _GLOB_CHARS.search(p) and p != b"**" else None)
            for p in cleaned.split(b"/")
        ]

    @property
    def absolute(self) -> bool:
        return self.parts[0].text == b""

    def __repr__(self) -> str:
        return f"Pattern({self.text!r})"


def _split(path: bytes) -> list[bytes]:
    if not path:
        raise ValueError("empty path")
    return path.split(b"/")


def _double_wildcard(parts: Sequence[_Part]) -> int:
    for i, p in enumerate(parts):
        if p.text == b"**":
            return i
    return -1


_STAR = _Part(b"*", re.compile(r"[^/]*\Z", re.DOTALL))


def _match(parts: Sequence[_Part], strs: Sequence[bytes]) -> bool:
    pos = _double_wildcard(parts)
    if pos >= 0:
        # Expand "**" gradually into 0, 1, 2, ... single-component wildcards.
        for i in range(len(strs) - len(parts) + 2):
            expanded = [*parts[:pos], *([_STAR] * i), *parts[pos + 1 :]]
            if _match(expanded, strs):
                return True
        return False
    if not parts and not strs:
        return True
    if not parts or len(parts) > len(strs):
        return False
    max_offset = 0 if parts[0].text == b"" else len(strs) - len(parts)
    for offset in range(max_offset, -1, -1):
        for i in range(len(parts) - 1, -1, -1):
            part, s = parts[i], strs[offset + i]
            if part.regex is None:
                ok = part.text == s
            else:
                ok = part.regex.match(s.decode("utf-8", "surrogateescape")) is not None
            if not ok:
                break
        else:
            return True
    return False


def _child_match(parts: Sequence[_Part], strs: Sequence[bytes]) -> bool:
    if parts[0].text != b"":
        return True  # a relative pattern may match anywhere further down
    pos = _double_wildcard(parts)
    if pos >= 0 and len(strs) >= pos:
        strs = strs[:pos]
    n = min(len(strs), len(parts))
    return _match(parts[:n], strs[:n])


def match(pattern: Pattern, path: bytes) -> bool:
    """True when ``path`` (absolute within the snapshot, e.g. ``b"/a/b"``) matches."""
    return _match(pattern.parts, _split(path))


def child_may_match(pattern: Pattern, path: bytes) -> bool:
    """True when something below ``path`` could match ``pattern``."""
    return _child_match(pattern.parts, _split(path))


class PatternList:
    """Patterns applied together, as restic's ``filter.List`` / ``ListWithChild`` use them."""

    def __init__(self, patterns: Iterable[str | bytes] = (), *, ignore_case: bool = False) -> None:
        self.ignore_case = ignore_case
        self.patterns: list[Pattern] = []
        self.negated: list[bool] = []
        for p in patterns:
            raw = os.fsencode(p)
            if not raw:
                continue
            neg = raw.startswith(b"!")
            if neg:
                raw = raw[1:]
            self.patterns.append(Pattern(_fold(raw) if ignore_case else raw))
            self.negated.append(neg)

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def _prepare(self, path: bytes) -> list[bytes]:
        return _split(_fold(path) if self.ignore_case else path)

    def match(self, path: bytes) -> bool:
        """Whether ``path`` is selected: the last matching pattern decides, so a later
        ``!pattern`` re-includes what an earlier one matched."""
        strs = self._prepare(path)
        matched = False
        for p, neg in zip(self.patterns, self.negated, strict=True):
            if (not neg or matched) and _match(p.parts, strs):
                matched = not neg
        return matched

    def matches(self, path: bytes) -> tuple[bool, bool]:
        """(path matches some pattern, a child of path may match some pattern)."""
        strs = self._prepare(path)
        matched = child = False
        for p, neg in zip(self.patterns, self.negated, strict=True):
            if neg:
                continue
            matched = matched or _match(p.parts, strs)
            child = child or _child_match(p.parts, strs)
            if matched and child:
                break
        return matched, child


def _fold(raw: bytes) -> bytes:
    """Case folding for --iexclude: lower-case the text, keep undecodable bytes."""
    return raw.decode("utf-8", "surrogateescape").lower().encode("utf-8", "surrogateescape")


def read_pattern_file(path: str) -> list[str]:
    """Patterns from a file: one per line, blank lines and ``#`` comments skipped,
    surrounding white space trimmed, ``$VAR`` expanded as restic does."""
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise UsageError(f"cannot read pattern file {path}: {e.strerror}") from e
    out = []
    for line in lines:
        line = line.strip()
        if line and not line.startswith("#"):
            out.append(os.path.expandvars(line))
    return out


def patterns_from(
    patterns: Sequence[str] = (), files: Sequence[str] = (), *, ignore_case: bool = False
) -> PatternList:
    """A PatternList from command-line patterns plus pattern files."""
    all_patterns = list(patterns)
    for f in files:
        all_patterns.extend(read_pattern_file(f))
    return PatternList(all_patterns, ignore_case=ignore_case)
