"""Deterministic benchmark datasets (``large``, ``small``, ``real``) and the ``mutate`` step.

Every generator is seeded and sized by its parameters; a stamp file next to each dataset
records them, so a dataset is reused between runs and regenerated only when they change.

``mutate`` simulates a day of changes and writes a journal that ``revert`` replays
backwards, so each benchmark run starts from the same content without copying gigabytes:
rewritten regions are saved (a few MiB), deleted files are moved aside, appended files are
truncated back, new files are removed and the renamed directory is renamed back.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

#: Bump when a generator changes: stamps with another version are regenerated.
GENERATOR_VERSION = 2
MiB = 1024 * 1024
GiB = 1024 * MiB
_BLOCK = 4 * MiB


# --- deterministic byte sources ---------------------------------------------------------


class RandomStream:
    """Incompressible, reproducible bytes: the AES-256-CTR key stream of a seeded key
    (OpenSSL, ~2 GB/s, where ``random.randbytes`` manages a fraction of that)."""

    def __init__(self, seed: str) -> None:
        key = hashlib.sha256(seed.encode()).digest()
        self._enc = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()

    def read(self, n: int) -> bytes:
        return self._enc.update(bytes(n))


class TextPool:
    """Text-like bytes (3-4x compressible with zstd -3): a pool of Zipf-distributed words
    from a made-up vocabulary, then slices of the pool at random offsets, so that no two
    chunks of a dataset are equal while each compresses like prose or source code."""

    def __init__(self, seed: str, size: int = 16 * MiB) -> None:
        rng = random.Random(f"{seed}/vocab")
        letters = "etaoinshrdlcumwfgypbvkjxqz"
        weights = [12, 9, 8, 8, 7, 7, 6, 6, 6, 4, 4, 3, 3, 2, 2, 2, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1]
        vocab = sorted(
            {"".join(rng.choices(letters, weights, k=rng.randint(2, 11))) for _ in range(12_000)}
        )
        rng.shuffle(vocab)
        cum: list[float] = []
        total = 0.0
        for rank in range(len(vocab)):
            total += 1.0 / (rank + 1) ** 1.05
            cum.append(total)
        punct = [" ", " ", " ", " ", " ", " ", ", ", ". ", "; ", "\n", " = ", "(", ") "]
        parts: list[str] = []
        length = 0
        while length < size:
            words = rng.choices(vocab, cum_weights=cum, k=4096)
            seps = rng.choices(punct, k=4096)
            nums = [str(rng.randrange(100_000)) if rng.random() < 0.04 else "" for _ in range(64)]
            block = "".join(w + s for w, s in zip(words, seps, strict=True)) + "".join(nums)
            parts.append(block)
            length += len(block)
        self.pool = "".join(parts).encode()[:size]
        self._rng = random.Random(f"{seed}/slices")

    def read(self, n: int) -> bytes:
        out = bytearray()
        pool = self.pool
        rng = self._rng
        while len(out) < n:
            k = min(n - len(out), rng.randint(2048, 65536))
            off = rng.randrange(len(pool) - k)
            out += pool[off : off + k]
        return bytes(out)


def write_stream(path: Path, size: int, source: RandomStream | TextPool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, _BLOCK)
            f.write(source.read(n))
            left -= n


# --- dataset specifications ------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    """A dataset's name and every parameter its content depends on."""

    name: str
    params: dict[str, Any]


def spec(name: str, quick: bool) -> Spec:
    if name == "large":
        scale = 64 if quick else 1  # quick: 48 MiB
        return Spec(
            name,
            {
                "files": {
                    "a/random-1.bin": ("random", 1024 * MiB // scale),
                    "a/text-1.txt": ("text", 1024 * MiB // scale),
                    "b/random-2.bin": ("random", 512 * MiB // scale),
                    "b/text-2.txt": ("text", 256 * MiB // scale),
                    "c/text-2-copy.txt": ("near-copy:b/text-2.txt", 256 * MiB // scale),
                },
                "seed": "large",
            },
        )
    if name == "small":
        return Spec(name, {"files": 2_000 if quick else 100_000, "seed": "small"})
    if name == "real":
        # /usr/share whole (it is smaller), then /usr/lib up to the cap.
        caps = (
            [["/usr/share", 40 * MiB], ["/usr/lib", 60 * MiB]]
            if quick
            else [
                ["/usr/share", 1 * GiB],
                ["/usr/lib", 2 * GiB],
            ]
        )
        return Spec(name, {"sources": caps})
    raise ValueError(f"unknown dataset {name!r}")


def _stamp(s: Spec) -> str:
    return json.dumps({"version": GENERATOR_VERSION, **s.params}, sort_keys=True)


def ensure(s: Spec, datasets_dir: Path, log: Any = print) -> Path:
    """The dataset's directory, generated unless a matching one exists."""
    root = datasets_dir / s.name
    stamp = datasets_dir / f"{s.name}.stamp"
    if root.is_dir() and stamp.is_file() and stamp.read_text() == _stamp(s):
        return root
    log(f"generating dataset {s.name} in {root}")
    if root.exists():
        shutil.rmtree(root)
    stamp.unlink(missing_ok=True)
    tmp = datasets_dir / f"{s.name}.partial"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    {"large": _gen_large, "small": _gen_small, "real": _gen_real}[s.name](tmp, s.params)
    _fix_times(tmp)
    tmp.rename(root)
    stamp.write_text(_stamp(s))
    return root


def _fix_times(root: Path) -> None:
    """Fixed mtimes (a reproducible tree; also old enough that no tool treats files as
    "modified just now" and racy)."""
    t = 1_600_000_000
    for dirpath, _dirs, files in os.walk(root, topdown=False):
        for name in files:
            os.utime(os.path.join(dirpath, name), (t, t), follow_symlinks=False)
        os.utime(dirpath, (t, t))


def _gen_large(root: Path, p: dict[str, Any]) -> None:
    text = TextPool(p["seed"])
    for rel, (kind, size) in p["files"].items():
        path = root / rel
        if kind == "random":
            write_stream(path, size, RandomStream(f"{p['seed']}/{rel}"))
        elif kind == "text":
            write_stream(path, size, text)
        else:
            # A near-copy: the original with a small change every 32 MiB and a few bytes
            # inserted in the middle (content-defined chunking must resynchronise).
            original = root / kind.split(":", 1)[1]
            rng = random.Random(f"{p['seed']}/{rel}")
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(original, "rb") as src, open(path, "wb") as dst:
                pos = 0
                while chunk := src.read(32 * MiB):
                    buf = bytearray(chunk)
                    off = rng.randrange(max(1, len(buf) - 4096))
                    buf[off : off + 4096] = rng.randbytes(min(4096, len(buf) - off))
                    if pos == size // 2 // (32 * MiB) * (32 * MiB):
                        buf[100:100] = b"inserted by the near-copy generator\n"
                    dst.write(buf)
                    pos += len(chunk)


def small_sizes(rng: random.Random, n: int) -> list[int]:
    """File sizes: 97% log-uniform 1-16 KiB, 3% log-uniform 16 KiB-1 MiB (~12.5 KiB mean)."""
    out = []
    for _ in range(n):
        lo, hi = (1024, 16384) if rng.random() < 0.97 else (16384, MiB)
        out.append(int(lo * (hi / lo) ** rng.random()))
    return out


def small_layout(n: int) -> Iterator[str]:
    """Directory of each file: a tree 3 levels deep, ~50 files per leaf directory."""
    leaves = max(1, n // 50)
    fan = max(2, round(leaves ** (1 / 3)))
    for i in range(n):
        leaf = (i * 7919) % leaves
        a, b, c = leaf // (fan * fan), (leaf // fan) % fan, leaf % fan
        yield f"d{a:03d}/d{b:03d}/d{c:03d}"


def _gen_small(root: Path, p: dict[str, Any]) -> None:
    n = p["files"]
    rng = random.Random(p["seed"])
    text = TextPool(p["seed"])
    rand = RandomStream(p["seed"])
    sizes = small_sizes(rng, n)
    made: set[str] = set()
    for i, (d, size) in enumerate(zip(small_layout(n), sizes, strict=True)):
        if d not in made:
            (root / d).mkdir(parents=True, exist_ok=True)
            made.add(d)
        is_text = rng.random() < 0.5
        data = text.read(size) if is_text else rand.read(size)
        (root / d / f"f{i:06d}.{'txt' if is_text else 'bin'}").write_bytes(data)


def _gen_real(root: Path, p: dict[str, Any]) -> None:
    """A copy of system files in sorted order up to each source's cap: regular files,
    symlinks (as links) and directories; other kinds are skipped."""
    for src, cap in p["sources"]:
        total = 0
        base = root / src.strip("/").replace("/", "_")
        for dirpath, dirs, files in os.walk(src):
            dirs.sort()
            rel = os.path.relpath(dirpath, src)
            dst_dir = base / rel
            dst_dir.mkdir(parents=True, exist_ok=True)
            for name in sorted(files) + [
                d for d in dirs if os.path.islink(os.path.join(dirpath, d))
            ]:
                s = os.path.join(dirpath, name)
                try:
                    st = os.lstat(s)
                    if stat.S_ISLNK(st.st_mode):
                        os.symlink(os.readlink(s), dst_dir / name)
                    elif stat.S_ISREG(st.st_mode) and total + st.st_size <= cap:
                        shutil.copy2(s, dst_dir / name)
                        total += st.st_size
                except OSError:
                    continue
            dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(dirpath, d))]
            if total >= cap * 0.999:
                break


# --- mutate / revert -----------------------------------------------------------------------


def _files(root: Path) -> list[str]:
    out = []
    for dirpath, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(dirpath, name)
            if os.path.isfile(path) and not os.path.islink(path):
                out.append(os.path.relpath(path, root))
    return out


def _dirs(root: Path) -> list[str]:
    out: list[str] = []
    for dirpath, dirs, _files in os.walk(root):
        dirs.sort()
        out.extend(os.path.relpath(os.path.join(dirpath, d), root) for d in dirs)
    return out


def mutate(root: Path, stash: Path, seed: str = "mutate") -> dict[str, Any]:
    """Apply a day of changes to ``root``: ~0.5% of files rewritten in place (a region of
    up to 1 MiB), 0.2% appended to, 0.2% deleted, new files worth 0.2% of the count (at
    least one of each kind), and one directory renamed. Returns the journal (also written
    to ``stash/journal.json``) for :func:`revert`."""
    if stash.exists():
        shutil.rmtree(stash)
    stash.mkdir(parents=True)
    rng = random.Random(seed)
    files = _files(root)
    n = len(files)
    # New files have the mean size of a sample of the existing ones (at most 32 MiB).
    sample = rng.sample(files, min(n, 200))
    new_size = max(
        4096, min(32 * MiB, sum((root / f).stat().st_size for f in sample) // len(sample))
    )
    k = max(1, n // 200)
    picked = rng.sample(files, min(n, k + 2 * max(1, n // 500)))
    rewrite, rest = picked[:k], picked[k:]
    append, delete = rest[: len(rest) // 2], rest[len(rest) // 2 :]
    journal: dict[str, Any] = {"root": str(root), "stash": str(stash), "ops": []}
    ops: list[dict[str, Any]] = journal["ops"]
    rand = RandomStream(f"{seed}/data")

    def save() -> None:
        (stash / "journal.json").write_text(json.dumps(journal))

    for i, rel in enumerate(rewrite):
        path = root / rel
        size = path.stat().st_size
        length = min(size, MiB)
        off = rng.randrange(size - length + 1)
        with open(path, "r+b") as f:
            f.seek(off)
            old = f.read(length)
            (stash / f"rewrite-{i}").write_bytes(old)
            ops.append(
                {
                    "op": "rewrite",
                    "path": rel,
                    "offset": off,
                    "saved": f"rewrite-{i}",
                    "mtime_ns": path.stat().st_mtime_ns,
                }
            )
            save()
            f.seek(off)
            f.write(rand.read(length))
    for rel in append:
        path = root / rel
        st = path.stat()
        ops.append({"op": "append", "path": rel, "size": st.st_size, "mtime_ns": st.st_mtime_ns})
        save()
        with open(path, "ab") as af:
            af.write(rand.read(max(1024, min(st.st_size // 10, 16 * MiB))))
    for i, rel in enumerate(delete):
        ops.append({"op": "delete", "path": rel, "saved": f"deleted-{i}"})
        save()
        os.rename(root / rel, stash / f"deleted-{i}")
    dirs = _dirs(root)
    new_count = max(1, n // 500)
    for i in range(new_count):
        d = rng.choice(dirs) if dirs else "."
        rel = os.path.join(d, f"new-file-{i}.bin")
        ops.append({"op": "new", "path": rel})
        save()
        write_stream(root / rel, new_size, rand)
    if dirs:
        # Rename a directory: the one holding the fewest bytes among a sample, so that a
        # "day" does not move most of a dataset of few big files.
        def weight(d: str) -> int:
            return sum(f.stat().st_size for f in (root / d).rglob("*") if f.is_file())

        d = min(sorted(rng.sample(dirs, min(len(dirs), 20))), key=weight)
        ops.append({"op": "rename", "path": d, "to": d + "-renamed"})
        save()
        os.rename(root / d, root / (d + "-renamed"))
    save()
    return journal


def revert(stash: Path) -> bool:
    """Undo a :func:`mutate` whose journal is in ``stash``; False if there was none."""
    jpath = stash / "journal.json"
    if not jpath.is_file():
        return False
    journal = json.loads(jpath.read_text())
    root = Path(journal["root"])
    for op in reversed(journal["ops"]):
        path = root / op["path"]
        kind = op["op"]
        if kind == "rename":
            if (root / op["to"]).exists():
                os.rename(root / op["to"], path)
        elif kind == "new":
            path.unlink(missing_ok=True)
        elif kind == "delete":
            if (stash / op["saved"]).exists():
                os.rename(stash / op["saved"], path)
        elif kind == "append":
            os.truncate(path, op["size"])
            os.utime(path, ns=(op["mtime_ns"], op["mtime_ns"]))
        elif kind == "rewrite":
            with open(path, "r+b") as f:
                f.seek(op["offset"])
                f.write((stash / op["saved"]).read_bytes())
            os.utime(path, ns=(op["mtime_ns"], op["mtime_ns"]))
    shutil.rmtree(stash)
    return True


def tree_bytes(root: Path) -> tuple[int, int]:
    """(number of regular files, their total size)."""
    n = total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            st = os.lstat(os.path.join(dirpath, name))
            if stat.S_ISREG(st.st_mode):
                n += 1
                total += st.st_size
    return n, total
