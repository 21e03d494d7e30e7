#!/usr/bin/env python3
"""Scale (a): memory of cairn's in-memory index per blob.

Loads a synthetic index of N blobs (default 10 million, in packs of 1,000 blobs as a
backup of small files produces) into ``MasterIndex`` with ``add_pack``, the call that
loading index files makes, and prints the process's RSS growth per blob, the index's own
accounting, and lookup speed.

    python3 bench/scale_index.py [--blobs 10000000] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import sys
import time
from pathlib import Path

from cairn.repo.ids import BlobType
from cairn.repo.index import MasterIndex

PER_PACK = 1000


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--blobs", type=int, default=10_000_000)
    p.add_argument("--workdir", default=str(Path(__file__).resolve().parent / "work"))
    args = p.parse_args()
    rng = random.Random("scale-index")
    gc.collect()
    before = rss_bytes()
    idx = MasterIndex()
    t0 = time.monotonic()
    sample: list[bytes] = []
    for n in range(0, args.blobs, PER_PACK):
        k = min(PER_PACK, args.blobs - n)
        ids = rng.randbytes(32 * k)
        pack_id = rng.randbytes(32)
        entries = [
            (int(BlobType.DATA), ids[i * 32 : i * 32 + 32], i * 4096, 4000, 6000) for i in range(k)
        ]
        idx.add_pack(pack_id, entries)
        if n % 100_000 == 0:
            sample.append(entries[0][1])
    load_s = time.monotonic() - t0
    gc.collect()
    after = rss_bytes()
    t0 = time.monotonic()
    for bid in sample * max(1, 100_000 // max(1, len(sample))):
        assert idx.lookup(BlobType.DATA, bid) is not None
    lookups = len(sample) * max(1, 100_000 // max(1, len(sample)))
    lookup_us = (time.monotonic() - t0) / lookups * 1e6
    result = {
        "blobs": len(idx),
        "rss_growth_bytes": after - before,
        "rss_per_blob": (after - before) / len(idx),
        "memory_bytes_per_blob": idx.memory_bytes() / len(idx),
        "load_s": load_s,
        "lookup_us": lookup_us,
        "python": sys.version.split()[0],
    }
    print(json.dumps(result, indent=1))
    md = [
        "## Scale (a): in-memory index",
        "",
        f"`python3 bench/scale_index.py --blobs {args.blobs}`: {len(idx):,} blobs in packs of "
        f"{PER_PACK:,} loaded into `MasterIndex.add_pack` in {load_s:.1f} s; RSS grew by "
        f"{(after - before) / 2**20:.0f} MiB = **{result['rss_per_blob']:.1f} bytes per blob** "
        f"(target <= 64; the index's own accounting: {result['memory_bytes_per_blob']:.1f} B/blob); "
        f"lookup {lookup_us:.2f} µs. Verdict: {'pass' if (after - before) / len(idx) <= 64 else '**FAIL**'}.",
    ]
    out = Path(args.workdir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "scale-index.json").write_text(json.dumps({**result, "markdown": md}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
