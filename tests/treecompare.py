"""Describe a directory tree completely, so that a restore can be compared with its source."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path


def describe(
    root: str | Path, *, times: bool = True, owners: bool = True
) -> dict[bytes, dict[str, object]]:
    """Every entry below ``root`` keyed by its relative path (bytes): type, permission bits
    (incl. setuid/setgid/sticky), size, SHA-256, symlink target, xattrs, mtime in ns, owner,
    and a hard-link group label (the first path of each inode shared by several names)."""
    base = os.fsencode(str(root))
    out: dict[bytes, dict[str, object]] = {}
    first_path: dict[tuple[int, int], bytes] = {}
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, base)
            st = os.lstat(full)
            info: dict[str, object] = {
                "type": stat.S_IFMT(st.st_mode),
                "perm": stat.S_IMODE(st.st_mode),
            }
            if times and not stat.S_ISDIR(st.st_mode):
                info["mtime"] = st.st_mtime_ns
            if owners:
                info["owner"] = (st.st_uid, st.st_gid)
            if stat.S_ISREG(st.st_mode):
                h = hashlib.sha256()
                with open(full, "rb") as f:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        h.update(block)
                info["size"] = st.st_size
                info["sha256"] = h.hexdigest()
                if st.st_nlink > 1:
                    key = (st.st_dev, st.st_ino)
                    info["link_group"] = first_path.setdefault(key, rel)
            elif stat.S_ISLNK(st.st_mode):
                info["target"] = os.readlink(full)
            if not stat.S_ISLNK(st.st_mode):
                try:
                    info["xattrs"] = sorted(
                        (n, os.getxattr(full, n, follow_symlinks=False))
                        for n in os.listxattr(full, follow_symlinks=False)
                    )
                except OSError:
                    info["xattrs"] = []
            out[rel] = info
    return out


def dir_mtimes(root: str | Path) -> dict[bytes, int]:
    """Directory mtimes (checked separately: restoring files inside changes them)."""
    base = os.fsencode(str(root))
    return {
        os.path.relpath(dp, base): os.lstat(dp).st_mtime_ns for dp, _dirs, _files in os.walk(base)
    }
