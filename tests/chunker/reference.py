"""Slow, obviously-correct pure-Python chunkers to check the C extension against."""

from __future__ import annotations

WINDOW = 64


def pmod(a: int, m: int) -> int:
    """``a mod m`` over GF(2) (long division with XOR)."""
    dm = m.bit_length()
    while (da := a.bit_length()) >= dm:
        a ^= m << (da - dm)
    return a


def fingerprint(data: bytes, pol: int) -> int:
    """Spec §13.2 by definition: the bits of ``data`` (MSB first) as a polynomial, mod P."""
    return pmod(int.from_bytes(data, "big"), pol)


def cut_lengths(data: bytes, pol: int, min_size: int, max_size: int, mask_bits: int) -> list[int]:
    """Chunk lengths by the rule of spec §13.3, each window's fingerprint computed from scratch."""
    mask = (1 << mask_bits) - 1
    lengths = []
    s = 0
    while s < len(data):
        e = s + min_size
        while e <= len(data) and e - s < max_size and fingerprint(data[e - WINDOW : e], pol) & mask:
            e += 1
        e = min(e, len(data))
        lengths.append(e - s)
        s = e
    return lengths


def restic_tables(pol: int) -> tuple[list[int], list[int]]:
    """restic's out_table and mod_table (spec §13.4), derived from the definitions."""
    k = pol.bit_length() - 1
    out = [fingerprint(bytes([b]) + bytes(WINDOW - 1), pol) for b in range(256)]
    mod = [pmod(b << k, pol) ^ (b << k) for b in range(256)]
    return out, mod


def restic_loop_lengths(
    data: bytes, pol: int, min_size: int, max_size: int, mask_bits: int
) -> list[int]:
    """The chunk loop exactly as spec §13.4 describes restic running it (rolling hash with
    the odd initial window state and the skip of min_size - 64 bytes)."""
    out_table, mod_table = restic_tables(pol)
    k = pol.bit_length() - 1
    mask = (1 << mask_bits) - 1
    lengths = []
    pos = 0
    while pos < len(data):
        window = bytearray(WINDOW)
        window[0] = 1
        wpos, h = 1, 1
        n = min(min_size - WINDOW, len(data) - pos)
        cut = None
        for i in range(pos + n, len(data)):
            c = data[i]
            n += 1
            o = window[wpos]
            window[wpos] = c
            wpos = (wpos + 1) % WINDOW
            h ^= out_table[o]
            top = h >> (k - 8)
            h = ((h << 8) | c) ^ mod_table[top]
            if ((h & mask) == 0 or n >= max_size) and n >= min_size:
                cut = n
                break
        lengths.append(cut if cut is not None else len(data) - pos)
        pos += lengths[-1]
    return lengths
