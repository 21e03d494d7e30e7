"""restic's include/exclude pattern semantics (filter.Match / ChildMatch)."""

from __future__ import annotations

import pytest

from cairn.errors import UsageError
from cairn.filter import Pattern, PatternList, child_may_match, match


@pytest.mark.parametrize(
    ("pattern", "path", "expected"),
    [
        ("*.tmp", "/home/u/x.tmp", True),
        ("*.tmp", "/home/u/x.tmpl", False),
        ("cache", "/home/u/cache", True),
        ("cache", "/home/u/cache/deep/file", True),  # a run of components anywhere
        ("cache", "/home/u/cached", False),
        ("/home/u", "/home/u/docs/a", True),  # anchored patterns match a prefix
        ("/home/u", "/srv/home/u", False),
        ("u/docs", "/home/u/docs/a", True),
        ("/home/*/docs", "/home/u/docs", True),
        ("/home/*/docs", "/home/u/v/docs", False),
        ("/home/**/docs", "/home/u/v/docs", True),
        ("/home/**/docs", "/home/docs", True),
        ("**/*.go", "/src/a/b/main.go", True),
        ("foo?.txt", "/x/foo1.txt", True),
        ("foo?.txt", "/x/foo12.txt", False),
        ("[ab].txt", "/a.txt", True),
        ("[^ab].txt", "/a.txt", False),
        ("[^ab].txt", "/c.txt", True),
        ("\\*star", "/d/*star", True),
        ("\\*star", "/d/xstar", False),
        ("/home/u/", "/home/u/x", True),  # trailing slash ignored
    ],
)
def test_match(pattern: str, path: str, expected: bool) -> None:
    assert match(Pattern(pattern), path.encode()) is expected


def test_child_may_match_for_anchored_patterns() -> None:
    p = Pattern("/home/u/docs/taxes")
    assert child_may_match(p, b"/home")
    assert child_may_match(p, b"/home/u/docs")
    assert not child_may_match(p, b"/srv")
    assert not child_may_match(p, b"/home/v")
    assert child_may_match(Pattern("*.txt"), b"/anything")
    assert child_may_match(Pattern("/home/**/x"), b"/home/a/b/c")


def test_pattern_list_negation_and_case() -> None:
    pl = PatternList(["*.log", "!keep.log"])
    assert pl.match(b"/var/a.log")
    assert not pl.match(b"/var/keep.log")
    assert PatternList(["*.JPG"], ignore_case=True).match(b"/p/img.jpg")
    assert not PatternList(["*.JPG"]).match(b"/p/img.jpg")
    assert PatternList(["*.bin"]).match(b"/d/\xff\xfe.bin")  # names need not be UTF-8


def test_matches_with_child() -> None:
    pl = PatternList(["/home/me/Documents/taxes"])
    assert pl.matches(b"/home") == (False, True)
    assert pl.matches(b"/home/me/Documents/taxes") == (True, True)
    assert pl.matches(b"/home/me/Music") == (False, False)


def test_bad_patterns_are_usage_errors() -> None:
    with pytest.raises(UsageError):
        Pattern("[abc")
    with pytest.raises(UsageError):
        Pattern("")
