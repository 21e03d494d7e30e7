"""Moving whole restic repositories through a backend, for the interop tests with restic.

``upload_repo`` writes a repository directory (e.g. a restic-written fixture) file by file
through any Backend; ``download_repo`` reads every file back through a Backend into a
local directory, checking that each name is the SHA-256 of its content. The real restic
then checks the result on the server (after an upload) or on disk (after a download).
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cairn.backend.base import DIR_TYPES, Backend, FileType, Handle, is_id_name
from cairn.backend.local import LocalBackend


def repo_files(root: Path) -> list[tuple[Handle, Path]]:
    """Every file of a repository directory in the default layout, as handles."""
    files = [(Handle(FileType.CONFIG), root / "config")]
    for t in DIR_TYPES:
        for p in sorted((root / t.value).rglob("*")):
            if p.is_file() and is_id_name(p.name):
                files.append((Handle(t, p.name), p))
    return files


def upload_repo(root: Path, backend: Backend) -> int:
    """Create the repository on ``backend`` and save every file of ``root``; returns the count."""
    backend.create()
    files = repo_files(root)
    # config last, as restic writes it: the repository exists only when it is complete
    rest = [f for f in files if f[0].type is not FileType.CONFIG]
    with ThreadPoolExecutor(backend.connections) as pool:
        list(pool.map(lambda f: backend.save(f[0], f[1].read_bytes()), rest))
    backend.save(files[0][0], files[0][1].read_bytes())
    return len(files)


def download_repo(backend: Backend, dest: Path) -> int:
    """Read every file through ``backend`` into a new local repository at ``dest``."""
    local = LocalBackend(dest)
    local.create()
    handles = [Handle(t, info.name) for t in DIR_TYPES for info in backend.list(t)]
    count = 0

    def copy(h: Handle) -> None:
        data = backend.load(h)
        assert hashlib.sha256(data).hexdigest() == h.name, f"{h}: content does not match name"
        assert len(data) == backend.stat(h)
        local.save(h, data)

    with ThreadPoolExecutor(backend.connections) as pool:
        for _ in pool.map(copy, handles):
            count += 1
    local.save(Handle(FileType.CONFIG), backend.load(Handle(FileType.CONFIG)))
    return count + 1
