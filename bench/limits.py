"""Physical limits measured on a dataset: what the disk, the file system and one core can do
with the same bytes, to judge how far the tools are from the hardware.

- raw read of every file (cold cache), metadata walk (cold), ``cp -a`` (cold source);
- single-core speed of each stage of a backup on that data, in process and warm:
  restic's chunker (cairn's C chunker), SHA-256 of each chunk, zstd level 3 of each new
  (not deduplicated) chunk, AES-256-CTR + Poly1305 of the compressed chunk;
- the two-core limit of chunk + hash + compress + encrypt: all the CPU work a backup of
  the data cannot avoid, spread perfectly over both cores.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import shlex
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import measure

from cairn.chunker import Chunker
from cairn.repo.compression import compress
from cairn.repo.crypto import Key

#: A fixed irreducible polynomial (restic's test polynomial) for the chunker.
POLYNOMIAL = 0x3DA3358B4DC173


@dataclass
class Stages:
    """CPU seconds of each backup stage over the data, single-threaded."""

    files: int
    bytes: int
    unique_bytes: int
    compressed_bytes: int
    chunks: int
    chunk_s: float
    sha_s: float
    zstd_s: float
    seal_s: float

    def rates(self) -> dict[str, float]:
        """MB/s of each stage over the bytes it handles."""
        return {
            "chunker": self.bytes / self.chunk_s / 1e6,
            "sha256": self.bytes / self.sha_s / 1e6,
            "zstd3": self.unique_bytes / self.zstd_s / 1e6,
            "aes_ctr_poly1305": self.compressed_bytes / self.seal_s / 1e6,
        }

    def limit_2core(self) -> float:
        """MB/s of input two cores could back up if they did nothing but these stages."""
        total = self.chunk_s + self.sha_s + self.zstd_s + self.seal_s
        return self.bytes / (total / 2) / 1e6


def stage_speeds(root: Path) -> Stages:
    """Run each stage over every file of ``root`` (warm cache: the files are mmapped and
    touched first, so no stage pays for I/O)."""
    chunker = Chunker(POLYNOMIAL)
    key = Key.random()
    seen: set[bytes] = set()
    s = Stages(0, 0, 0, 0, 0, 0.0, 0.0, 0.0, 0.0)
    for dirpath, _dirs, files in os.walk(root):
        for name in sorted(files):
            path = os.path.join(dirpath, name)
            if os.path.islink(path) or not os.path.isfile(path):
                continue
            size = os.path.getsize(path)
            s.files += 1
            if size == 0:
                continue
            with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as m:
                m.madvise(mmap.MADV_WILLNEED)
                hashlib.md5(m).digest()  # fault the pages in outside the timed stages
                _one_file(m, s, chunker, key, seen)
            s.bytes += size
    return s


def _one_file(m: mmap.mmap, s: Stages, chunker: Chunker, key: Key, seen: set[bytes]) -> None:
    """Time each stage over one mapped file (a function, so that every view of the map is
    gone when it returns and the map can close)."""
    clock = time.thread_time
    with memoryview(m) as view:
        t0 = clock()
        bounds = list(chunker.boundaries(view))
        s.chunk_s += clock() - t0
        for off, n in bounds:
            with view[off : off + n] as chunk:
                t0 = clock()
                digest = hashlib.sha256(chunk).digest()
                t1 = clock()
                s.sha_s += t1 - t0
                s.chunks += 1
                if digest in seen:
                    continue
                seen.add(digest)
                packed = compress(chunk, 3)
                t2 = clock()
                key.seal(packed)
                t3 = clock()
            s.zstd_s += t2 - t1
            s.seal_s += t3 - t2
            s.unique_bytes += n
            s.compressed_bytes += len(packed)


def _shell(cmd: str, cold: bool, log: Path) -> dict[str, Any]:
    if cold:
        measure.drop_caches()
    return measure.run(["sh", "-c", cmd], log=log).to_json()


def measure_all(root: Path, scratch: Path, log: Path, cold: bool) -> dict[str, Any]:
    """Every limit for the dataset at ``root``; ``scratch`` receives (then loses) the copy."""
    q = shlex.quote(str(root))
    out: dict[str, Any] = {}
    out["raw_read"] = _shell(f"find {q} -type f -print0 | xargs -0 -r cat > /dev/null", cold, log)
    out["metadata_walk"] = _shell(f"find {q} -printf '%s %T@ %m\\n' > /dev/null", cold, log)
    dest = scratch / "cp-a"
    if dest.exists():
        shutil.rmtree(dest)
    out["cp_a"] = _shell(f"cp -a {q} {shlex.quote(str(dest))} && sync", cold, log)
    shutil.rmtree(dest)
    # Warm the page cache for the in-process stages.
    measure.run(["sh", "-c", f"find {q} -type f -print0 | xargs -0 -r cat > /dev/null"], log=log)
    stages = stage_speeds(root)
    out["stages"] = {**stages.__dict__, "rates_mb_s": stages.rates()}
    out["limit_2core_mb_s"] = stages.limit_2core()
    return out
