"""Tree blobs: restic's JSON for one directory (spec §9).

:func:`encode_tree` writes the bytes restic 0.14 writes for the same nodes, so the tree IDs
agree and cairn and restic deduplicate against each other. :func:`decode_tree` is a
tolerant reader in the manner of Go's decoder: unknown keys are ignored, keys match
case-insensitively, ``null`` stands for the zero value, ``linktarget_raw`` wins over
``linktarget``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

from cairn.errors import FormatError
from cairn.repo.gojson import (
    UNQUOTE_SPECIAL,
    LossyUtf8,
    format_time,
    go_bytes,
    go_string,
    parse_bytes,
    parse_time,
    quote_name,
    unquote_name,
    utf8_lossy,
)
from cairn.repo.node import NODE_TYPES, ZERO_TIME, ExtendedAttribute, GoTime, Node

__all__ = [
    "encode_tree",
    "decode_tree",
    "encode_node",
    "decode_node",
    "go_compact",
    "tree_references",
]

_U32 = 1 << 32
_U64 = 1 << 64

# --- encoding --------------------------------------------------------------------------


def _xattrs_json(attrs: Sequence[ExtendedAttribute]) -> str:
    return ",".join([f'{{"name":{go_string(a.name)},"value":{go_bytes(a.value)}}}' for a in attrs])


_COMPACT_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[ \t\n\r]+|[^" \t\n\r]+', re.DOTALL)
_COMPACT_HTML = re.compile("[<>&\u2028\u2029]")
_COMPACT_ESC = {
    "<": "\\u003c",
    ">": "\\u003e",
    "&": "\\u0026",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
}


def go_compact(raw: str) -> str:
    """What Go's encoder writes for a ``json.RawMessage``: the text with insignificant
    whitespace removed and ``<``, ``>``, ``&``, U+2028, U+2029 escaped (``json.Compact``
    in HTML-safe mode). Raises :class:`FormatError` if ``raw`` is not valid JSON."""
    try:
        json.loads(raw)
    except ValueError as exc:
        raise FormatError(f"invalid raw JSON value {raw[:60]!r}: {exc}") from None
    out = []
    for tok in _COMPACT_TOKEN.findall(raw):
        c = tok[0]
        if c in " \t\n\r":
            continue
        out.append(_COMPACT_HTML.sub(lambda m: _COMPACT_ESC[m.group()], tok))
    return "".join(out)


def _generic_json(attrs: dict[str, str]) -> str:
    # Go encodes a map with its keys sorted bytewise (by their UTF-8 form).
    keys = sorted(attrs, key=lambda k: k.encode("utf-8", "surrogatepass"))
    return ",".join([f"{go_string(k)}:{go_compact(attrs[k])}" for k in keys])


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def encode_node(node: Node) -> str:
    """The compact JSON object restic 0.14 writes for ``node`` (spec §9.2 field order and
    ``omitempty`` rules), with ``linktarget_raw`` added for a non-UTF-8 symlink target.
    Raises ``ValueError`` for integers Go could not read back (negative or too wide)."""
    if not (
        0 <= node.mode < _U32
        and 0 <= node.uid < _U32
        and 0 <= node.gid < _U32
        and 0 <= node.inode < _U64
        and 0 <= node.device_id < _U64
        and 0 <= node.size < _U64
        and 0 <= node.links < _U64
        and 0 <= node.device < _U64
    ):
        raise ValueError(f"node {node.name!r}: integer field out of range")
    p = [
        '{"name":',
        go_string(quote_name(node.name)),
        ',"type":',
        go_string(node.type),
    ]
    if node.mode:
        p.append(f',"mode":{node.mode}')
    p.append(
        f',"mtime":"{format_time(node.mtime)}","atime":"{format_time(node.atime)}"'
        f',"ctime":"{format_time(node.ctime)}","uid":{node.uid},"gid":{node.gid}'
    )
    if node.user:
        p.append(',"user":' + go_string(node.user))
    if node.group:
        p.append(',"group":' + go_string(node.group))
    if node.inode:
        p.append(f',"inode":{node.inode}')
    if node.device_id:
        p.append(f',"device_id":{node.device_id}')
    if node.size:
        p.append(f',"size":{node.size}')
    if node.links:
        p.append(f',"links":{node.links}')
    if node.linktarget:
        p.append(',"linktarget":' + go_string(node.linktarget))
        # restic >= 0.16 form: 0.14 ignores the key, and restore gets the exact bytes.
        if not _is_utf8(node.linktarget):
            p.append(',"linktarget_raw":' + go_bytes(node.linktarget))
    if node.extended_attributes:
        p.append(',"extended_attributes":[' + _xattrs_json(node.extended_attributes) + "]")
    if node.generic_attributes:
        p.append(',"generic_attributes":{' + _generic_json(node.generic_attributes) + "}")
    if node.device:
        p.append(f',"device":{node.device}')
    if node.content is None:
        p.append(',"content":null')
    else:
        p.append(',"content":[' + ",".join([f'"{c.hex()}"' for c in node.content]) + "]")
    if node.subtree is not None:
        p.append(f',"subtree":"{node.subtree.hex()}"')
    if node.error:
        p.append(',"error":' + go_string(node.error))
    p.append("}")
    return "".join(p)


def encode_tree(nodes: Iterable[Node]) -> bytes:
    """The plaintext of a tree blob: ``{"nodes":[...]}`` plus a newline, nodes sorted by
    their raw name bytes. Raises ``ValueError`` for duplicate names."""
    ordered = sorted(nodes, key=lambda n: n.name)
    for prev, cur in zip(ordered, ordered[1:], strict=False):
        if prev.name == cur.name:
            raise ValueError(f"duplicate name in tree: {cur.name!r}")
    body = ",".join([encode_node(n) for n in ordered])
    return ('{"nodes":[' + body + "]}\n").encode("utf-8")


def replace_subtrees(data: bytes, changes: Iterable[tuple[bytes, bytes]]) -> bytes | None:
    """A tree's plaintext with subtree IDs replaced, each ``(old, new)`` pair in the one
    place it appears, without decoding a node: the text :func:`encode_tree` would give the
    same nodes with the new subtrees. None when an old ID is not a subtree exactly once
    (two identical subdirectories share it) or the tree is in another layout: the caller
    decodes and encodes. (A quote cannot stand unescaped in a JSON string, so the pattern
    only matches a node's own ``subtree`` member.)"""
    out = data
    for old, new in changes:
        pattern = b'"subtree":"' + old.hex().encode() + b'"'
        if out.count(pattern) != 1:
            return None
        out = out.replace(pattern, b'"subtree":"' + new.hex().encode() + b'"')
    return out


# --- decoding --------------------------------------------------------------------------

_FIELDS = (
    "name",
    "type",
    "mode",
    "mtime",
    "atime",
    "ctime",
    "uid",
    "gid",
    "user",
    "group",
    "inode",
    "device_id",
    "size",
    "links",
    "linktarget",
    "linktarget_raw",
    "extended_attributes",
    "generic_attributes",
    "device",
    "content",
    "subtree",
    "error",
)
_FIELD_SET = frozenset(_FIELDS)


def _canonical_keys(d: dict[str, Any]) -> dict[str, Any]:
    """Go matches keys case-insensitively and drops unknown ones; later keys win."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = k if k in _FIELD_SET else k.lower()
        if key in _FIELD_SET:
            out[key] = v
    return out


def _text(d: dict[str, Any], key: str) -> str:
    v = d.get(key)
    if v is None:
        return ""
    if type(v) is not str:
        raise FormatError(f"tree node: {key} is not a string")
    return v if v.isascii() else utf8_lossy(v)


#: One object per distinct value of the fields that repeat across nodes (type, mode,
#: owner names, device): json gives each node its own copies, which for a restore plan of
#: 100k files were ~16 MB of identical strings and numbers. Bounded, for hostile trees.
_SHARED: dict[Any, Any] = {}  # each key maps to itself
_SHARED_MAX = 4096
_T = TypeVar("_T")


def _shared(v: _T) -> _T:
    got = _SHARED.get(v)
    if got is not None:
        return got  # type: ignore[no-any-return]
    if len(_SHARED) < _SHARED_MAX:
        _SHARED[v] = v
    return v


#: The extended attributes of every decoded node that has none: one list, never changed
#: in place (nothing in cairn appends to a decoded node's list), 56 bytes a node saved.
_NO_XATTRS: list[ExtendedAttribute] = []


def _time(d: dict[str, Any], key: str) -> GoTime:
    v = d.get(key)
    if type(v) is str:
        return parse_time(v)
    if v is None:
        return ZERO_TIME
    raise FormatError(f"tree node: {key} is not a time string")


def _id(v: object, key: str) -> bytes:
    if type(v) is str and len(v) == 64:
        try:
            raw = bytes.fromhex(v)
        except ValueError:
            pass
        else:
            if len(raw) == 32:
                return raw
    raise FormatError(f"tree node: invalid ID in {key}: {v!r}")


def _ids(v: object) -> list[bytes]:
    if type(v) is not list:
        raise FormatError("tree node: content is not a list")
    if len(v) == 1:  # most files are one chunk
        c = v[0]
        if type(c) is str and len(c) == 64:
            try:
                raw = bytes.fromhex(c)
            except ValueError:
                pass
            else:
                if len(raw) == 32:
                    return [raw]
        return [_id(c, "content")]
    # One fromhex call for the whole list; the length check catches bad entries (fromhex
    # would skip spaces), which are then reported one by one.
    if all(type(c) is str and len(c) == 64 for c in v):
        try:
            raw = bytes.fromhex("".join(v))
        except ValueError:
            pass
        else:
            if len(raw) == 32 * len(v):
                return [raw[i : i + 32] for i in range(0, len(raw), 32)]
    return [_id(c, "content") for c in v]


def _xattrs(v: object) -> list[ExtendedAttribute]:
    if v is None:
        return []
    if type(v) is not list:
        raise FormatError("tree node: extended_attributes is not a list")
    out = []
    for item in v:
        if type(item) is not dict:
            raise FormatError("tree node: extended attribute is not an object")
        item = _canonical_keys_xattr(item)
        name = item.get("name")
        if name is None:
            name = ""
        if type(name) is not str:
            raise FormatError("tree node: extended attribute name is not a string")
        out.append(ExtendedAttribute(utf8_lossy(name), parse_bytes(item.get("value"))))
    return out


def _canonical_keys_xattr(d: dict[str, Any]) -> dict[str, Any]:
    if d.keys() <= {"name", "value"}:
        return d
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = k.lower()
        if key in ("name", "value"):
            out[key] = v
    return out


def _linktarget(lt: str, text: str | None) -> bytes:
    raw = lt.encode("utf-8")
    if text is None or "\ufffd" not in lt:
        return raw
    # restic 0.14 wrote each invalid byte of a target as the escape \ufffd (a real U+FFFD
    # is written raw). The parsed string cannot tell them apart, the text can.
    escaped = go_string(lt.replace("\ufffd", "\udcff"))
    if '"linktarget":' + escaped in text:
        return LossyUtf8(raw)
    return raw


def _bad_int(key: str, v: object) -> FormatError:
    return FormatError(f"tree node: invalid {key} {v!r}")


def decode_node(
    d: object, generic_raw: dict[str, str] | None = None, text: str | None = None
) -> Node:
    """Build a :class:`Node` from one parsed JSON node object. ``generic_raw`` carries the
    raw text of ``generic_attributes`` values when the caller extracted it; ``text`` is the
    whole tree's JSON text, used to recognise lossy (``\\ufffd``-escaped) symlink targets.

    Every tree a restore, a diff or ``check`` reads goes through here, node by node, so
    the common case is written out field by field (locals, no helper call per field, the
    Node built from positional arguments): 5.1 -> 3.7 us a node. The helpers handle
    what is rare (null, non-ASCII text, a value of the wrong type)."""
    if type(d) is not dict:
        raise FormatError("tree node is not a JSON object")
    if not d.keys() <= _FIELD_SET:
        d = _canonical_keys(d)
    get = d.get
    # Integers: null is Go's zero; anything but an int in range is an error (a bool too)
    mode = get("mode")
    if mode is None:
        mode = 0
    elif type(mode) is not int or not 0 <= mode < _U32:
        raise _bad_int("mode", mode)
    uid = get("uid")
    if uid is None:
        uid = 0
    elif type(uid) is not int or not 0 <= uid < _U32:
        raise _bad_int("uid", uid)
    gid = get("gid")
    if gid is None:
        gid = 0
    elif type(gid) is not int or not 0 <= gid < _U32:
        raise _bad_int("gid", gid)
    inode = get("inode")
    if inode is None:
        inode = 0
    elif type(inode) is not int or not 0 <= inode < _U64:
        raise _bad_int("inode", inode)
    device_id = get("device_id")
    if device_id is None:
        device_id = 0
    elif type(device_id) is not int or not 0 <= device_id < _U64:
        raise _bad_int("device_id", device_id)
    size = get("size")
    if size is None:
        size = 0
    elif type(size) is not int or not 0 <= size < _U64:
        raise _bad_int("size", size)
    links = get("links")
    if links is None:
        links = 0
    elif type(links) is not int or not 0 <= links < _U64:
        raise _bad_int("links", links)
    device = get("device")
    if device is None:
        device = 0
    elif type(device) is not int or not 0 <= device < _U64:
        raise _bad_int("device", device)
    name = get("name")
    if name is None:
        name = ""
    elif type(name) is not str:
        raise FormatError("tree node: name is not a string")
    # Text fields: an ASCII string as it is, anything else through _text
    kind = get("type")
    if type(kind) is not str or not kind.isascii():
        kind = _text(d, "type")
    user = get("user")
    if type(user) is not str or not user.isascii():
        user = _text(d, "user")
    group = get("group")
    if type(group) is not str or not group.isascii():
        group = _text(d, "group")
    error = get("error")
    if error is None:
        error = ""
    elif type(error) is not str or not error.isascii():
        error = _text(d, "error")
    mtime = get("mtime")
    mtime = parse_time(mtime) if type(mtime) is str else _time(d, "mtime")
    atime = get("atime")
    atime = parse_time(atime) if type(atime) is str else _time(d, "atime")
    ctime = get("ctime")
    ctime = parse_time(ctime) if type(ctime) is str else _time(d, "ctime")
    content_v = get("content")
    subtree_v = get("subtree")
    linktarget_raw = get("linktarget_raw")
    if linktarget_raw is not None:
        linktarget = parse_bytes(linktarget_raw) or b""
    elif get("linktarget") is None:
        linktarget = b""
    else:
        linktarget = _linktarget(_text(d, "linktarget"), text)
    generic: dict[str, str] | None = None
    if get("generic_attributes") is not None:
        if generic_raw is None:
            generic = _generic_from_value(d["generic_attributes"])
        else:
            generic = generic_raw
    xattrs_v = get("extended_attributes")
    shared = _SHARED.get
    return Node(
        unquote_name(name),
        shared(kind) or _shared(kind),
        shared(mode) or _shared(mode),
        mtime,
        atime,
        ctime,
        uid,
        gid,
        shared(user) or _shared(user),
        shared(group) or _shared(group),
        inode,
        shared(device_id) or _shared(device_id),
        size,
        links,
        linktarget,
        _NO_XATTRS if xattrs_v is None else _xattrs(xattrs_v),
        generic,
        device,
        None if content_v is None else _ids(content_v),
        None if subtree_v is None else _id(subtree_v, "subtree"),
        error,
    )


def _generic_from_value(v: object) -> dict[str, str]:
    """Fallback when no raw text is at hand: re-serialise each value Go-style."""
    if type(v) is not dict:
        raise FormatError("tree node: generic_attributes is not an object")
    return {
        utf8_lossy(k): go_compact(json.dumps(val, ensure_ascii=False, separators=(",", ":")))
        for k, val in v.items()
    }


def _decoded_text(data: bytes | bytearray | memoryview) -> str:
    raw = bytes(data)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        # Go's decoder replaces invalid bytes inside strings by U+FFFD, one per byte;
        # surrogateescape keeps them one-per-byte until utf8_lossy/unquote_name do that.
        return raw.decode("utf-8", "surrogateescape")


def _loads_text(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise FormatError(f"tree is not valid JSON: {exc}") from None


_DECODER = json.JSONDecoder()
#: trees longer than this (in characters) are decoded node by node, which holds a tenth of
#: the memory and is faster too from ~1,000 nodes (6.4 vs 7.4 µs a node at 18,000), but
#: 5% slower on the small trees of most directories (5.9 vs 5.7 µs at 400 nodes)
STREAM_ABOVE = 512 << 10
#: how restic (and cairn) begin every tree; anything else takes the general path
_TREE_START = '{"nodes":['


class _NotResticLayout(Exception):
    """A tree that :func:`_restic_layout_nodes` cannot take: the general path decides."""


def _restic_layout_nodes(text: str) -> Iterator[Any]:
    """The node objects of a tree in restic's compact layout, each parsed when it is
    taken, so only one node's JSON object lives at a time; raises _NotResticLayout, once
    the text shows it, for any other layout or invalid JSON."""
    if not text.startswith(_TREE_START):
        raise _NotResticLayout
    scan: Callable[[str, int], tuple[Any, int]]
    scan = _DECODER.scan_once  # type: ignore[attr-defined]  # raw_decode minus a frame
    i = len(_TREE_START)
    if text.startswith("]", i):
        i += 1
    else:
        while True:
            try:
                d, i = scan(text, i)
            except (StopIteration, ValueError):
                raise _NotResticLayout from None
            yield d
            sep = text[i : i + 1]
            i += 1
            if sep == "]":
                break
            if sep != ",":
                raise _NotResticLayout
    # the object must close right after its only member (whitespace may follow)
    if not text.startswith("}", i) or text[i + 1 :].strip(" \t\n\r"):
        raise _NotResticLayout


def _nodes_one_by_one(text: str) -> list[Node] | None:
    """The nodes of a tree in restic's compact layout, each decoded as soon as it is
    parsed, so only one node's JSON object lives at a time: parsing the whole document
    first held every node's dict at once, 3x the tree's text (a directory of 18,000 files,
    6.4 MB of JSON: peak 35 -> 14 MiB, 0.136 -> 0.118 s). None for any other layout,
    invalid JSON and generic attributes: the general path decodes (or rejects) those."""
    nodes: list[Node] = []
    try:
        for d in _restic_layout_nodes(text):
            if type(d) is not dict or _has_generic(d):
                return None
            nodes.append(decode_node(d, None, text))
    except _NotResticLayout:
        return None
    return nodes


def _nodes_value(doc: Any) -> list[Any]:
    if type(doc) is not dict:
        raise FormatError("tree is not a JSON object")
    nodes = doc.get("nodes")
    if nodes is None and "nodes" not in doc:
        for k, v in doc.items():
            if k.lower() == "nodes":
                nodes = v
    if nodes is None:
        return []
    if type(nodes) is not list:
        raise FormatError("tree: nodes is not a list")
    return nodes


def decode_tree(data: bytes | bytearray | memoryview) -> list[Node]:
    """Parse a tree blob's plaintext into its nodes (in stored order)."""
    text = _decoded_text(data)
    if len(text) > STREAM_ABOVE:
        streamed = _nodes_one_by_one(text)
        if streamed is not None:
            return streamed
    doc = _loads_text(text)
    nodes = _nodes_value(doc)
    generic_raws: list[dict[str, str] | None] | None = None
    if any(type(d) is dict and _has_generic(d) for d in nodes):
        generic_raws = _GenericScanner(text).scan()
        if len(generic_raws) != len(nodes):  # cannot happen for valid JSON
            raise FormatError("tree: inconsistent generic_attributes scan")
    if generic_raws is None:
        return [decode_node(d, None, text) for d in nodes]
    return [decode_node(d, g, text) for d, g in zip(nodes, generic_raws, strict=True)]


def _has_generic(d: dict[str, Any]) -> bool:
    if "generic_attributes" in d:
        return d["generic_attributes"] is not None
    return not d.keys() <= _FIELD_SET and (_canonical_keys(d).get("generic_attributes") is not None)


class _GenericScanner:
    """Walks the tree text with the stdlib decoder to recover the *raw text* of every
    ``generic_attributes`` value (Go keeps these as ``json.RawMessage``). Only used for the
    rare trees that have them; the common path is a plain ``json.loads``."""

    _WS = re.compile(r"[ \t\n\r]*")

    def __init__(self, text: str) -> None:
        self.s = text
        self.dec = json.JSONDecoder()

    def _ws(self, i: int) -> int:
        m = self._WS.match(self.s, i)
        return m.end() if m else i

    def _expect(self, i: int, ch: str) -> int:
        i = self._ws(i)
        if self.s[i : i + 1] != ch:
            raise FormatError(f"tree: expected {ch!r} at offset {i}")
        return i + 1

    def _members(self, i: int) -> Iterable[tuple[str, int]]:
        """Yield (key, value_start) for each member of the object at ``i``; the consumer
        sets ``self.pos`` to the end of the value before resuming."""
        i = self._expect(i, "{")
        i = self._ws(i)
        if self.s[i : i + 1] == "}":
            self.pos = i + 1
            return
        while True:
            key, i = self.dec.raw_decode(self.s, self._ws(i))
            i = self._ws(self._expect(i, ":"))
            yield key, i
            i = self._ws(self.pos)
            if self.s[i : i + 1] == "}":
                self.pos = i + 1
                return
            i = self._expect(i, ",")

    def _skip(self, i: int) -> int:
        return int(self.dec.raw_decode(self.s, i)[1])

    def scan(self) -> list[dict[str, str] | None]:
        result: list[dict[str, str] | None] = []
        for key, i in self._members(0):
            if key.lower() == "nodes" and self.s.startswith("[", i):
                result = self._nodes(i)
            else:
                self.pos = self._skip(i)
        return result

    def _nodes(self, i: int) -> list[dict[str, str] | None]:
        out: list[dict[str, str] | None] = []
        i = self._ws(i + 1)
        if self.s[i : i + 1] == "]":
            self.pos = i + 1
            return out
        while True:
            out.append(self._node(i))
            i = self._ws(self.pos)
            if self.s[i : i + 1] == "]":
                self.pos = i + 1
                return out
            i = self._ws(self._expect(i, ","))

    def _node(self, i: int) -> dict[str, str] | None:
        generic: dict[str, str] | None = None
        for key, j in self._members(i):
            if key.lower() == "generic_attributes" and self.s.startswith("{", j):
                generic = {}
                for gkey, k in self._members(j):
                    end = self._skip(k)
                    generic[utf8_lossy(gkey)] = go_compact(self.s[k:end])
                    self.pos = end
            elif key.lower() == "generic_attributes":
                generic = None
                self.pos = self._skip(j)
            else:
                self.pos = self._skip(j)
        return generic


# --- what a tree refers to, for check ---------------------------------------------------

#: the keys tree_references takes: restic's own spelling, and only fields a type check
#: settles (extended and generic attributes and linktarget_raw go the general way)
_PLAIN_KEYS = _FIELD_SET - {"extended_attributes", "generic_attributes", "linktarget_raw"}
_TIME_KEYS = ("mtime", "atime", "ctime")
_NODE_TYPE_SET = frozenset(NODE_TYPES)


def tree_references(data: bytes | bytearray | memoryview) -> tuple[list[bytes], list[bytes]] | None:
    """(subtrees, data blobs) of a tree, for ``check``, without building its nodes; None
    unless the tree is in the plain form restic and cairn write, every node would decode
    (:func:`decode_tree` accepts it), every node has a known type, every file a content
    list and every directory a subtree. On None the caller decodes the tree, which either
    says what is wrong or takes what this does not (another key spelling, attributes).

    Every tree of every snapshot passes here when a repository is checked: on one with
    20 snapshots of 100k files, decoding nodes was half of check's reading time. Trees
    above STREAM_ABOVE are parsed node by node, as :func:`decode_tree` does."""
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError:
        return None
    subtrees: list[str] = []
    content: list[str] = []
    try:
        if len(text) > STREAM_ABOVE:
            for d in _restic_layout_nodes(text):
                if not _plain_node(d, subtrees, content):
                    return None
        else:
            doc = json.loads(text)
            if type(doc) is not dict or len(doc) != 1:
                return None
            nodes = doc.get("nodes")
            if type(nodes) is not list:
                return None
            for d in nodes:
                if not _plain_node(d, subtrees, content):
                    return None
    except (ValueError, _NotResticLayout, FormatError):  # FormatError: a time Go rejects
        return None
    # every ID 64 characters of hex: one fromhex for them all (it would skip spaces,
    # which the lengths rule out)
    if not all(type(c) is str and len(c) == 64 for c in content):
        return None
    try:
        raw_content = bytes.fromhex("".join(content))
        raw_subtrees = bytes.fromhex("".join(subtrees))
    except ValueError:
        return None
    if len(raw_content) != 32 * len(content) or len(raw_subtrees) != 32 * len(subtrees):
        return None
    return (
        [raw_subtrees[i : i + 32] for i in range(0, len(raw_subtrees), 32)],
        [raw_content[i : i + 32] for i in range(0, len(raw_content), 32)],
    )


def _plain_node(d: object, subtrees: list[str], content: list[str]) -> bool:
    """Whether node object ``d`` is in the plain form and decodes as :func:`decode_node`
    would decode it (FormatError from a time it would reject); appends what check follows
    from it: a directory's subtree, a file's content (their hex, checked by the caller).
    A content list or subtree on any other type is checked, not followed: not plain."""
    if type(d) is not dict or not d.keys() <= _PLAIN_KEYS:
        return False
    get = d.get
    # written out, as in decode_node: a loop over the keys took twice as long
    v = get("mode")
    if v is not None and (type(v) is not int or not 0 <= v < _U32):
        return False
    v = get("uid")
    if v is not None and (type(v) is not int or not 0 <= v < _U32):
        return False
    v = get("gid")
    if v is not None and (type(v) is not int or not 0 <= v < _U32):
        return False
    v = get("inode")
    if v is not None and (type(v) is not int or not 0 <= v < _U64):
        return False
    v = get("device_id")
    if v is not None and (type(v) is not int or not 0 <= v < _U64):
        return False
    v = get("size")
    if v is not None and (type(v) is not int or not 0 <= v < _U64):
        return False
    v = get("links")
    if v is not None and (type(v) is not int or not 0 <= v < _U64):
        return False
    v = get("device")
    if v is not None and (type(v) is not int or not 0 <= v < _U64):
        return False
    v = get("user")
    if v is not None and type(v) is not str:
        return False
    v = get("group")
    if v is not None and type(v) is not str:
        return False
    v = get("error")
    if v is not None and type(v) is not str:
        return False
    v = get("linktarget")
    if v is not None and type(v) is not str:
        return False
    for key in _TIME_KEYS:
        v = get(key)
        if v is not None:
            if type(v) is not str:
                return False
            parse_time(v)
    name = get("name")
    if name is not None and (type(name) is not str or UNQUOTE_SPECIAL.search(name)):
        return False  # an escape unquote_name must judge
    kind = get("type")
    if type(kind) is not str or kind not in _NODE_TYPE_SET:
        return False
    ids = get("content")
    sub = get("subtree")
    if kind == "file":
        if type(ids) is not list or sub is not None:
            return False
        content += ids
    elif kind == "dir":
        if type(sub) is not str or len(sub) != 64 or ids is not None:
            return False
        subtrees.append(sub)
    elif ids is not None or sub is not None:
        return False
    return True
