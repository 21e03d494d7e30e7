"""Count what a backup will process, for progress totals and an ETA (restic does the same).

Runs in its own thread beside the backup, with the same exclude rules; it only stats, so
it is cheap, and it is started only when progress is shown. Without exclude rules each
target is counted by C (``_treecount``, the C library's nftw) without the GIL: 0.15 s of
CPU for 100,000 files where the Python walk took 0.36 s, 3% of the backup's CPU time.
"""

from __future__ import annotations

import os
import stat
import threading

from cairn.archiver import _treecount
from cairn.archiver.select import Selector
from cairn.archiver.targets import Target, VirtualDir
from cairn.threadname import name_this_thread


class Scanner:
    """Totals of files and bytes below the targets; ``done`` is set when complete."""

    def __init__(self, layout: VirtualDir, selector: Selector) -> None:
        self.layout = layout
        self.selector = selector
        self.files = 0
        self.dirs = 0
        self.bytes = 0
        self.done = threading.Event()
        self.cancelled = threading.Event()
        self._stop_flag = bytearray(1)  # read by the C walk, which has no other way in
        self._thread = threading.Thread(target=self._run, name="cairn-scan", daemon=True)

    def start(self) -> Scanner:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.cancelled.set()
        self._stop_flag[0] = 1

    def _run(self) -> None:
        name_this_thread("cairn-scan")
        try:
            if not self.selector.has_rules:
                for target in self._targets(self.layout):
                    if self.cancelled.is_set():
                        break
                    files, dirs, nbytes, _ = _treecount.count(target.path, self._stop_flag)
                    self.files += files
                    self.dirs += dirs
                    self.bytes += nbytes
                return
            stack: list[bytes] = []
            if self.layout.target is not None:
                self.dirs += 1  # the target itself, as for targets below a virtual root
                stack.append(self.layout.target.path)
            else:
                self._virtual(self.layout, stack)
            while stack and not self.cancelled.is_set():
                self._scan_dir(stack.pop(), stack)
        finally:
            self.done.set()

    def _targets(self, vdir: VirtualDir, top: bool = True) -> list[Target]:
        """The real paths to count, as the Python walk below visits them."""
        if top and vdir.target is not None:
            return [vdir.target]
        found: list[Target] = []
        for child in vdir.children.values():
            found.extend([child] if isinstance(child, Target) else self._targets(child, False))
        return found

    def _virtual(self, vdir: VirtualDir, stack: list[bytes]) -> None:
        for child in vdir.children.values():
            if isinstance(child, Target):
                try:
                    st = os.lstat(child.path)
                except OSError:
                    continue
                self._count(child.path, st, stack)
            else:
                self._virtual(child, stack)

    def _scan_dir(self, path: bytes, stack: list[bytes]) -> None:
        try:
            dev = os.lstat(path).st_dev
            with os.scandir(path) as it:
                for entry in it:
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    if self.selector.excluded(entry.path, st, dev):
                        continue
                    self._count(entry.path, st, stack)
        except OSError:
            return

    def _count(self, path: bytes, st: os.stat_result, stack: list[bytes]) -> None:
        if stat.S_ISDIR(st.st_mode):
            self.dirs += 1
            stack.append(path)
        elif stat.S_ISREG(st.st_mode):
            self.files += 1
            self.bytes += st.st_size
