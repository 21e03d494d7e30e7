"""restic 0.14's restore pattern matching (internal/filter), case by case."""

from __future__ import annotations

import pytest

from cairn.errors import UsageError
from cairn.filter import Pattern, PatternList, child_may_match, match

MATCH_CASES = [
    # absolute patterns are anchored at the snapshot root and match everything below
    ("/home/user", b"/home/user", True),
    ("/home/user", b"/home/user/docs/a.txt", True),
    ("/home/user", b"/other/home/user", False),
    ("/home/user", b"/home", False),
    # relative patterns match any run of components
    ("user", b"/home/user/docs", True),
    ("home/user", b"/x/home/user/y", True),
    ("docs", b"/home/user", False),
    # globs per component: * and ? never cross "/"
    ("*.txt", b"/a/b/c.txt", True),
    ("/a/*.txt", b"/a/b/c.txt", False),
    ("/a/*/c.txt", b"/a/b/c.txt", True),
    ("/a/?/c.txt", b"/a/bb/c.txt", False),
    ("[a-c]x", b"/bx", True),
    ("[^a-c]x", b"/bx", False),
    ("\\*", b"/*", True),
    ("\\*", b"/a", False),
    ("]", b"/]", True),  # a lone ] is a literal in Go
    # ** spans any number of components, also none
    ("/a/**/c.txt", b"/a/c.txt", True),
    ("/a/**/c.txt", b"/a/b/b/b/c.txt", True),
    ("/a/**/c.txt", b"/x/a/b/c.txt", False),
    ("**/c.txt", b"/a/b/c.txt", True),
    ("/a/**", b"/a/b/c", True),
    # ? is one rune: two bytes of UTF-8, or one invalid byte
    ("é?", "/éx".encode(), True),
    ("?", "/é".encode(), True),
    ("bad-??.bin", b"/names/bad-\xff\xfe.bin", True),
    # a trailing slash or dot segments are cleaned away
    ("/a/b/", b"/a/b", True),
    ("/a/./b", b"/a/b", True),
]


@pytest.mark.parametrize(("pattern", "path", "expected"), MATCH_CASES)
def test_match(pattern: str, path: bytes, expected: bool) -> None:
    assert match(Pattern(pattern), path) is expected


CHILD_CASES = [
    ("/home/user/docs", b"/home", True),
    ("/home/user/docs", b"/home/user", True),
    ("/home/user/docs", b"/srv", False),
    ("/home/*/docs", b"/home/anyone", True),
    ("/a/**/z", b"/a/b/c/d", True),
    ("/a/**/z", b"/b", False),
    ("relative", b"/anything/at/all", True),
]


@pytest.mark.parametrize(("pattern", "path", "expected"), CHILD_CASES)
def test_child_may_match(pattern: str, path: bytes, expected: bool) -> None:
    assert child_may_match(Pattern(pattern), path) is expected


def test_pattern_list() -> None:
    pl = PatternList(["/srv/www", "", "*.log"])
    assert len(pl.patterns) == 2  # empty patterns are ignored, as in restic
    assert pl.matches(b"/srv") == (False, True)
    assert pl.matches(b"/srv/www/index.html") == (True, True)
    assert pl.matches(b"/var/x.log")[0] is True
    assert not PatternList([])


@pytest.mark.parametrize("bad", ["[", "[a-", "a\\", "[]", "[z-a]"])
def test_malformed_patterns_are_usage_errors(bad: str) -> None:
    with pytest.raises(UsageError):
        Pattern(bad)
