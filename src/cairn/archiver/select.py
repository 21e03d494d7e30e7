"""Which files a backup leaves out: restic's exclude options."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field

from cairn.errors import UsageError
from cairn.filter import PatternList, patterns_from

#: The CACHEDIR.TAG signature (https://bford.info/cachedir/), used by --exclude-caches.
CACHEDIR_TAG = ("CACHEDIR.TAG", b"Signature: 8a477f597d28d172789f06886806bc55")


@dataclass
class ExcludeOptions:
    """The exclude flags of ``backup``, as given on the command line."""

    exclude: list[str] = field(default_factory=list)
    iexclude: list[str] = field(default_factory=list)
    exclude_file: list[str] = field(default_factory=list)
    iexclude_file: list[str] = field(default_factory=list)
    exclude_caches: bool = False
    exclude_if_present: list[str] = field(default_factory=list)  # "FILE" or "FILE:header"
    exclude_larger_than: int | None = None
    one_file_system: bool = False

    def patterns(self) -> list[str]:
        """Every pattern, for the snapshot's ``excludes`` field."""
        from cairn.filter import read_pattern_file

        out = list(self.exclude) + list(self.iexclude)
        for f in self.exclude_file + self.iexclude_file:
            out.extend(read_pattern_file(f))
        return out


def parse_size(text: str) -> int:
    """restic's size syntax: a number with an optional k, m, g or t suffix (powers of 1024)."""
    t = text.strip().lower()
    mult = 1
    if t and t[-1] in "kmgt":
        mult = 1024 ** ("kmgt".index(t[-1]) + 1)
        t = t[:-1]
    elif t.endswith("b"):
        t = t[:-1]
    try:
        value = int(t)
    except ValueError:
        raise UsageError(f"invalid size {text!r} (examples: 500k, 2M, 1G)") from None
    if value < 0:
        raise UsageError(f"invalid size {text!r}")
    return value * mult


class Selector:
    """Decides per entry whether it is excluded."""

    def __init__(self, opts: ExcludeOptions) -> None:
        self.patterns: PatternList = patterns_from(opts.exclude, opts.exclude_file)
        self.ipatterns: PatternList = patterns_from(
            opts.iexclude, opts.iexclude_file, ignore_case=True
        )
        self.if_present: list[tuple[str, bytes | None]] = []
        for spec in opts.exclude_if_present:
            fname, sep, header = spec.partition(":")
            if not fname:
                raise UsageError(f"invalid --exclude-if-present value {spec!r}")
            self.if_present.append((fname, header.encode() if sep else None))
        if opts.exclude_caches:
            self.if_present.append(CACHEDIR_TAG)
        self.larger_than = opts.exclude_larger_than
        self.one_file_system = opts.one_file_system

    @property
    def has_rules(self) -> bool:
        """Whether any entry can be excluded at all."""
        return bool(
            self.patterns
            or self.ipatterns
            or self.if_present
            or self.larger_than is not None
            or self.one_file_system
        )

    def excluded_by_name(self, path: bytes) -> bool:
        """Pattern rules, applied to the absolute path of the entry."""
        return bool(
            (self.patterns and self.patterns.match(path))
            or (self.ipatterns and self.ipatterns.match(path))
        )

    def excluded(self, path: bytes, st: os.stat_result, target_dev: int) -> bool:
        """Every rule for one entry: patterns, size, file system, marker files."""
        if stat.S_ISDIR(st.st_mode):
            return self.excluded_dir(path, st.st_dev, target_dev)
        if self.excluded_by_name(path):
            return True
        if self.one_file_system and st.st_dev != target_dev:
            return True
        return self.larger_than is not None and st.st_size > self.larger_than

    def excluded_dir(self, path: bytes, dev: int, target_dev: int) -> bool:
        """Every rule for a directory on device ``dev``: patterns, file system, markers."""
        if self.excluded_by_name(path):
            return True
        if self.one_file_system and dev != target_dev:
            return True
        return bool(self.if_present and self.has_marker(path))

    def has_marker(self, dirpath: bytes) -> bool:
        """Whether the directory holds a marker file of --exclude-if-present or
        --exclude-caches (whose content may matter, so no listing alone tells)."""
        for fname, header in self.if_present:
            marker = os.path.join(dirpath, os.fsencode(fname))
            try:
                if header is None:
                    if os.path.lexists(marker):
                        return True
                    continue
                with open(marker, "rb") as f:
                    if f.read(len(header)) == header:
                        return True
            except OSError:
                continue
        return False
