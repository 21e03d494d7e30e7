"""Include/exclude patterns with restic's semantics, shared by backup and restore.

A pattern is split into path components. ``*``, ``?``, ``[...]`` (``[^...]`` negates) and
``\\`` escapes work inside one component as in Go's ``filepath.Match``; a component ``**``
matches any number of components. A pattern starting with ``/`` is anchored at the root;
any other pattern matches a run of consecutive components anywhere in the path, so
``*.tmp`` excludes ``/a/b/x.tmp`` and ``cache`` excludes ``/home/u/cache/whatever``.
Paths are ``str`` (file names that are not UTF-8 arrive via ``os.fsdecode``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from cairn.errors import UsageError

_ANY = None  # a "**" component


@dataclass(frozen=True)
class Pattern:
    """A prepared pattern: a tuple of components; "/" first means anchored."""

    original: str
    parts: tuple[str | re.Pattern[str] | None, ...]
    anchored: bool
    negated: bool = False

    def match(self, path: str) -> bool:
        """True when the pattern matches ``path`` (restic's ``filter.Match``)."""
        return _match(self.parts, self.anchored, _split(path))

    def child_may_match(self, path: str) -> bool:
        """True when something below directory ``path`` could match (``ChildMatch``)."""
        if not self.anchored:
            return True
        strs = _split(path)
        parts = self.parts
        if _ANY in parts:
            pos = parts.index(_ANY)
            strs = strs[: pos + 1]  # +1: the root marker is not part of ``parts``
        n = min(len(strs) - 1, len(parts))
        return _match(parts[:n], True, strs[: n + 1])


def _split(path: str) -> list[str]:
    """Components of a cleaned path; an absolute path starts with the marker "/"."""
    clean = os.path.normpath(path) if path else path
    if clean.startswith("//"):  # normpath keeps a leading double slash (POSIX rule)
        clean = "/" + clean.lstrip("/")
    parts = clean.split("/")
    if parts and parts[0] == "":
        parts[0] = "/"
    if parts and parts[-1] == "" and len(parts) > 1:
        parts.pop()
    return parts


@lru_cache(maxsize=4096)
def _component(text: str) -> str | re.Pattern[str]:
    """A literal component stays a string (fast equality); a glob becomes a regex."""
    if not any(c in text for c in "*?[\\"):
        return text
    out = []
    i = 0
    while i < len(text):
        c = text[i]
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "\\":
            i += 1
            if i >= len(text):
                raise UsageError(f"invalid pattern {text!r}: trailing backslash")
            out.append(re.escape(text[i]))
        elif c == "[":
            end = text.find("]", i + 2 if text[i + 1 : i + 2] in ("^", "]") else i + 1)
            if end < 0:
                raise UsageError(f"invalid pattern {text!r}: unclosed '['")
            body = text[i + 1 : end]
            negate = body.startswith("^")
            if negate:
                body = body[1:]
            body = body.replace("\\", "\\\\").replace("[", "\\[")
            out.append(f"[{'^' if negate else ''}{body}]")
            i = end
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out) + r"\Z", re.DOTALL)


def _part_matches(part: str | re.Pattern[str], s: str) -> bool:
    if isinstance(part, str):
        return part == s
    return part.match(s) is not None


def _match(
    parts: tuple[str | re.Pattern[str] | None, ...], anchored: bool, strs: list[str]
) -> bool:
    if _ANY in parts:
        pos = parts.index(_ANY)
        before, after = parts[:pos], parts[pos + 1 :]
        # Expand "**" into 0, 1, 2, ... single-component wildcards.
        star = _component("*")
        for width in range(0, max(0, len(strs) - len(before) - len(after)) + 1):
            if _match(before + (star,) * width + after, anchored, strs):
                return True
        return False
    if not parts:
        return False
    if anchored:
        body = strs[1:] if strs and strs[0] == "/" else None
        if body is None or len(parts) > len(body):
            return False
        return all(_part_matches(p, s) for p, s in zip(parts, body, strict=False))  # type: ignore[arg-type]
    min_off = 1 if strs and strs[0] == "/" else 0
    max_off = len(strs) - len(parts)
    for off in range(max_off, min_off - 1, -1):
        if all(_part_matches(p, strs[off + i]) for i, p in enumerate(parts)):  # type: ignore[arg-type]
            return True
    return False


def parse(pattern: str, *, ignore_case: bool = False) -> Pattern:
    """Prepare one pattern; ``!`` negates (used by include/exclude files)."""
    negated = pattern.startswith("!")
    if negated:
        pattern = pattern[1:]
    if not pattern:
        raise UsageError("empty pattern")
    text = pattern.lower() if ignore_case else pattern
    clean = os.path.normpath(text)
    anchored = clean.startswith("/")
    comps = [c for c in clean.split("/") if c]
    parts = tuple(_ANY if c == "**" else _component(c) for c in comps)
    return Pattern(pattern, parts, anchored, negated)


class PatternList:
    """Patterns applied in order; a later negated pattern re-includes what an earlier one
    matched (restic's semantics for ``!`` in exclude files)."""

    def __init__(self, patterns: Iterable[str] = (), *, ignore_case: bool = False) -> None:
        self.ignore_case = ignore_case
        self.patterns: list[Pattern] = [parse(p, ignore_case=ignore_case) for p in patterns]

    def __bool__(self) -> bool:
        return bool(self.patterns)

    def _norm(self, path: str) -> str:
        return path.lower() if self.ignore_case else path

    def match(self, path: str) -> bool:
        path = self._norm(path)
        matched = False
        for p in self.patterns:
            if p.match(path):
                matched = not p.negated
        return matched

    def match_or_child(self, path: str) -> tuple[bool, bool]:
        """(path matches, something below path may match): for include lists on restore."""
        path = self._norm(path)
        matched = False
        child = False
        for p in self.patterns:
            if p.match(path):
                matched = not p.negated
                child = child or not p.negated
            elif not p.negated and p.child_may_match(path):
                child = True
        return matched, child


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
        if not line or line.startswith("#"):
            continue
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
