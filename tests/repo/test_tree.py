"""Tree blobs: byte-identical to restic 0.14 (spec §9, §12, §18)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cairn.errors import FormatError
from cairn.repo import tree as tree_module
from cairn.repo.gojson import LossyUtf8
from cairn.repo.ids import EMPTY_TREE_ID
from cairn.repo.node import NODE_TYPES, ExtendedAttribute, GoTime, Node
from cairn.repo.tree import (
    decode_node,
    decode_tree,
    encode_node,
    encode_tree,
    go_compact,
    tree_references,
)
from tests.conftest import EXPECTED, run_restic

FIXTURE_TREES = sorted(EXPECTED.glob("*/trees/*.json"))
ID = bytes(range(32))
ID2 = bytes(range(1, 33))


def _hex(b: bytes) -> str:
    return b.hex()


@pytest.mark.parametrize(
    "path", FIXTURE_TREES, ids=lambda p: f"{p.parent.parent.name}/{p.stem[:12]}"
)
def test_fixture_tree_round_trip(path: Path, tree_reader: str) -> None:
    data = path.read_bytes()
    nodes = decode_tree(data)
    assert encode_tree(nodes) == data
    assert hashlib.sha256(data).hexdigest() == path.stem


def test_fixture_trees_present() -> None:
    # 52 distinct trees across the three repositories (some repeat between v1 and v1-upgraded).
    assert len({p.stem for p in FIXTURE_TREES}) == 52


def test_fixture_names_and_lossy_target() -> None:
    names: dict[bytes, Node] = {}
    for path in FIXTURE_TREES:
        for n in decode_tree(path.read_bytes()):
            names[n.name] = n
    assert b"bad-utf8-\xff\xfe.bin" in names
    assert "nbsp\u00a0name.txt".encode() in names
    assert b'quote"and\\backslash.txt' in names
    target = names[b"bad-target"].linktarget
    # restic 0.14 stored the invalid byte as \ufffd; restore gives U+FFFD like restic does.
    assert target == "target-\ufffd-not-utf8".encode()
    assert isinstance(target, LossyUtf8)
    xattrs = names[b"with-xattrs.txt"].extended_attributes
    assert xattrs == [
        ExtendedAttribute("user.comment", b"restic fixture"),
        ExtendedAttribute("user.binary", b"\x00\x01\x02\xff"),
    ]


# --- encoding rules ---------------------------------------------------------------------


def test_empty_tree() -> None:
    data = encode_tree([])
    assert data == b'{"nodes":[]}\n'
    assert hashlib.sha256(data).digest() == EMPTY_TREE_ID
    assert decode_tree(data) == []
    assert decode_tree(b'{"nodes":null}') == []
    assert decode_tree(b"{}") == []


def test_sorted_by_raw_name_bytes() -> None:
    names = [b"\xff", b"z", b"a", b"B", "\u00e9".encode(), b"a\x00", b"\\"]
    nodes = [Node(name=n, type="file", content=[]) for n in names]
    back = decode_tree(encode_tree(nodes))
    assert [n.name for n in back] == sorted(names)


def test_duplicate_names_rejected() -> None:
    with pytest.raises(ValueError):
        encode_tree(
            [Node(name=b"x", type="file"), Node(name=b"y", type="dir"), Node(name=b"x", type="dir")]
        )


@pytest.mark.parametrize(
    "field", ["mode", "uid", "gid", "inode", "device_id", "size", "links", "device"]
)
def test_encode_rejects_out_of_range_integers(field: str) -> None:
    with pytest.raises(ValueError):
        encode_node(Node(name=b"x", type="file", **{field: -1}))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        encode_node(Node(name=b"x", type="file", **{field: 2**64}))  # type: ignore[arg-type]


def test_field_order_and_omitempty() -> None:
    node = Node(name=b"f", type="file", content=[])
    assert encode_node(node) == (
        '{"name":"f","type":"file","mtime":"0001-01-01T00:00:00Z","atime":"0001-01-01T00:00:00Z",'
        '"ctime":"0001-01-01T00:00:00Z","uid":0,"gid":0,"content":[]}'
    )
    full = Node(
        name=b"d",
        type="dir",
        mode=2147484141,
        mtime=GoTime(1, 5, 3600),
        atime=GoTime(2),
        ctime=GoTime(3),
        uid=1000,
        gid=100,
        user="u",
        group="g",
        inode=2**64 - 1,
        device_id=65024,
        size=7,
        links=2,
        linktarget=b"t\xff",
        extended_attributes=[ExtendedAttribute("user.a", None), ExtendedAttribute("user.b", b"")],
        generic_attributes={"windows.file_attributes": "32", "a.first": '{"x":1}'},
        device=5,
        content=[ID, ID2],
        subtree=ID2,
        error="e",
    )
    text = encode_node(full)
    keys = list(json.loads(text))
    assert keys == [
        "name", "type", "mode", "mtime", "atime", "ctime", "uid", "gid", "user", "group",
        "inode", "device_id", "size", "links", "linktarget", "linktarget_raw",
        "extended_attributes", "generic_attributes", "device", "content", "subtree", "error",
    ]  # fmt: skip
    assert '"mtime":"1970-01-01T01:00:01.000000005+01:00"' in text
    assert '"linktarget":"t\\ufffd","linktarget_raw":"dP8="' in text
    assert (
        '"extended_attributes":[{"name":"user.a","value":null},{"name":"user.b","value":""}]'
        in text
    )
    # Go sorts map keys.
    assert '"generic_attributes":{"a.first":{"x":1},"windows.file_attributes":32}' in text
    assert f'"content":["{_hex(ID)}","{_hex(ID2)}"],"subtree":"{_hex(ID2)}","error":"e"}}' in text
    assert '"inode":18446744073709551615' in text
    [back] = decode_tree(encode_tree([full]))
    assert back == full


def test_content_null_vs_empty_and_empty_xattrs_omitted() -> None:
    assert '"content":null' in encode_node(Node(name=b"l", type="symlink", linktarget=b"x"))
    assert '"content":[]' in encode_node(Node(name=b"e", type="file", content=[]))
    text = encode_node(Node(name=b"e", type="file", extended_attributes=[], generic_attributes={}))
    assert "extended_attributes" not in text and "generic_attributes" not in text


def test_names_in_tree_text() -> None:
    node = Node(name=b"a\\b\t<&>\xff\xe2\x80\xa8", type="file", content=[])
    text = encode_node(node)
    assert text.startswith('{"name":"a\\\\\\\\b\\\\t\\u003c\\u0026\\u003e\\\\xff\\\\u2028",')


# --- tolerant reader -------------------------------------------------------------------


def _node_json(**extra: object) -> dict[str, object]:
    base: dict[str, object] = {
        "name": "n",
        "type": "file",
        "mtime": "2021-01-02T03:04:05Z",
        "atime": "2021-01-02T03:04:05Z",
        "ctime": "2021-01-02T03:04:05Z",
        "uid": 0,
        "gid": 0,
        "content": [],
    }
    base.update(extra)
    return base


def _tree(*nodes: dict[str, object], **top: object) -> bytes:
    return json.dumps({"before": 1, "nodes": list(nodes), **top}).encode()


def test_reader_ignores_unknown_keys_and_accepts_nulls() -> None:
    [n] = decode_tree(_tree(_node_json(future_field={"x": [1]}, size=None, user=None), after=True))
    assert n.name == b"n" and n.size == 0 and n.user == ""
    [n] = decode_tree(_tree({"name": "bare", "type": "fifo"}))
    assert n.content is None and n.mtime == GoTime(-62135596800) and n.extended_attributes == []


def test_reader_matches_keys_case_insensitively() -> None:
    [n] = decode_tree(b'{"Nodes":[{"Name":"x","TYPE":"file","Size":3,"content":null}]}')
    assert (n.name, n.type, n.size) == (b"x", "file", 3)


def test_reader_prefers_linktarget_raw() -> None:
    raw = b"t-\xff\xfe"
    [n] = decode_tree(
        _tree(_node_json(type="symlink", linktarget="t-\ufffd\ufffd", linktarget_raw="dC3//g=="))
    )
    assert n.linktarget == raw
    assert type(n.linktarget) is bytes


def test_reader_big_numbers_exact() -> None:
    big = 2**63 + 12345
    [n] = decode_tree(
        _tree(_node_json(inode=big, device_id=big + 1, device=2**64 - 1, size=2**53 + 1))
    )
    assert (n.inode, n.device_id, n.device, n.size) == (big, big + 1, 2**64 - 1, 2**53 + 1)


def test_reader_keeps_generic_attributes_raw() -> None:
    text = (
        b'{"nodes":[{"name":"w","type":"file","generic_attributes":'
        b'{"windows.creation_time": {"LowDateTime": 1, "HighDateTime": 2.50},'
        b' "windows.security_descriptor":"AQ<&>"},"content":[]}]}'
    )
    [n] = decode_tree(text)
    assert n.generic_attributes == {
        "windows.creation_time": '{"LowDateTime":1,"HighDateTime":2.50}',
        "windows.security_descriptor": '"AQ\\u003c\\u0026\\u003e"',
    }
    assert decode_tree(encode_tree([n])) == [n]
    # Without the tree text (decode_node on a parsed object) values are re-serialised.
    d = json.loads(text)["nodes"][0]
    assert decode_node(d).generic_attributes == {
        "windows.creation_time": '{"LowDateTime":1,"HighDateTime":2.5}',
        "windows.security_descriptor": '"AQ\\u003c\\u0026\\u003e"',
    }


def test_go_compact() -> None:
    assert go_compact(' { "a" : [ 1 , "x y<" ] }\n') == '{"a":[1,"x y\\u003c"]}'
    with pytest.raises(FormatError):
        go_compact("{nope")


def test_reader_replaces_invalid_utf8_per_byte() -> None:
    [n] = decode_tree(b'{"nodes":[{"name":"a","type":"file","user":"u\xff\xfe","content":[]}]}')
    assert n.user == "u\ufffd\ufffd"


_MALFORMED_NODES = [
    _node_json(size=-1),
    _node_json(size=1.5),
    _node_json(size=True),
    _node_json(uid=2**32),
    _node_json(inode=2**64),
    _node_json(name=5),
    _node_json(name="bad\\q"),
    _node_json(content=["00" * 31]),
    _node_json(content=["zz" * 32]),
    _node_json(content="x"),
    _node_json(subtree="ab"),
    _node_json(mtime="yesterday"),
    _node_json(mtime=5),
    _node_json(user=5),
    _node_json(type=["file"]),
    _node_json(extended_attributes=[{"name": "a", "value": "!!"}]),
    _node_json(extended_attributes={}),
    _node_json(linktarget_raw=5),
]


def _restic_layout(*nodes: object) -> bytes:
    """A tree as restic writes it: compact, ``nodes`` its only member, then a newline."""
    return b'{"nodes":' + json.dumps(list(nodes), separators=(",", ":")).encode() + b"}\n"


@pytest.fixture(params=["whole", "node by node"])
def tree_reader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways of decoding: the document at once (small trees), node by node (big ones)."""
    if request.param == "node by node":
        monkeypatch.setattr(tree_module, "STREAM_ABOVE", 0)
    return str(request.param)


@pytest.mark.parametrize(
    "bad",
    [b"not json", b"[]", b'{"nodes":{}}', b'{"nodes":[1]}', b'{"nodes":[1]}\n']
    + [_tree(n) for n in _MALFORMED_NODES]
    + [_restic_layout(_node_json(), n) for n in _MALFORMED_NODES],
)
def test_reader_rejects_malformed(bad: bytes, tree_reader: str) -> None:
    with pytest.raises(FormatError):
        decode_tree(bad)


@pytest.mark.parametrize(
    "text",
    [
        b'{"nodes":[{"name":"a","type":"file","content":[]}',  # never closed
        b'{"nodes":[{"name":"a","type":"file","content":[]}]',
        b'{"nodes":[{"name":"a","type":"file","content":[]}]}x',
        b'{"nodes":[{"name":"a","type":"file","content":[]};{}]}',
        b'{"nodes":[{"name":"a","type":"file","content":[]},]}',
    ],
)
def test_reader_rejects_broken_restic_layout(text: bytes, tree_reader: str) -> None:
    with pytest.raises(FormatError):
        decode_tree(text)


def test_restic_layout_and_any_other_decode_alike(tree_reader: str) -> None:
    """A big tree in restic's own layout is decoded node by node, any other by parsing the
    document first; both give the same nodes, and a later member wins as in Go."""
    nodes = [_node_json(name=f"f{i}", size=i) for i in range(3)] + [
        _node_json(name="l", type="symlink", linktarget="t", content=None),
        _node_json(name="d", type="dir", subtree=ID.hex(), content=None),
    ]
    restic = decode_tree(_restic_layout(*nodes))
    assert [n.name for n in restic] == [b"f0", b"f1", b"f2", b"l", b"d"]
    assert restic[4].subtree == ID
    assert decode_tree(json.dumps({"nodes": nodes}, indent=2).encode()) == restic
    assert decode_tree(b" " + _restic_layout(*nodes)) == restic
    assert decode_tree(_restic_layout(*nodes)[:-2] + b',"nodes":[]}') == []
    assert decode_tree(b'{"nodes":[]}\n') == [] == decode_tree(b'{"nodes":[ ]}')


# --- properties ----------------------------------------------------------------------------

_WALL_MIN = -62167219200  # 0000-01-01T00:00:00 local
_WALL_MAX = 253402300799  # 9999-12-31T23:59:59 local
_u32 = st.integers(0, 2**32 - 1)
_u64 = st.integers(0, 2**64 - 1)
_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)


@st.composite
def go_times(draw: st.DrawFn) -> GoTime:
    offset = draw(st.integers(-(23 * 60 + 59), 23 * 60 + 59)) * 60
    wall = draw(st.integers(_WALL_MIN, _WALL_MAX))
    return GoTime(wall - offset, draw(st.integers(0, 999_999_999)), offset)


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | _text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
    max_leaves=6,
)
_raw_json = st.builds(
    lambda v, indent: go_compact(json.dumps(v, indent=indent)),
    _json_values,
    st.sampled_from([None, 1]),
)

nodes_strategy = st.builds(
    Node,
    name=st.binary(min_size=1, max_size=16),
    type=st.sampled_from(NODE_TYPES),
    mode=_u32,
    mtime=go_times(),
    atime=go_times(),
    ctime=go_times(),
    uid=_u32,
    gid=_u32,
    user=_text,
    group=_text,
    inode=_u64,
    device_id=_u64,
    size=_u64,
    links=_u64,
    linktarget=st.binary(max_size=12),
    extended_attributes=st.lists(
        st.builds(ExtendedAttribute, _text, st.none() | st.binary(max_size=8)), max_size=3
    ),
    generic_attributes=st.none() | st.dictionaries(_text, _raw_json, min_size=1, max_size=3),
    device=_u64,
    content=st.none() | st.lists(st.binary(min_size=32, max_size=32), max_size=3),
    subtree=st.none() | st.binary(min_size=32, max_size=32),
    error=_text,
)


@settings(max_examples=150, deadline=None)
@given(st.lists(nodes_strategy, max_size=5, unique_by=lambda n: n.name))
def test_encode_decode_round_trip(nodes: list[Node]) -> None:
    data = encode_tree(nodes)
    back = decode_tree(data)
    assert back == sorted(nodes, key=lambda n: n.name)
    assert encode_tree(back) == data
    json.loads(data)  # any JSON parser reads it
    # big trees are read node by node: the same nodes, or (generic attributes) no answer
    one_by_one = tree_module._nodes_one_by_one(data.decode("utf-8", "surrogateescape"))
    assert one_by_one in (back, None)
    if not any(n.generic_attributes is not None for n in nodes):
        assert one_by_one == back


# --- the live oracle: real restic 0.14 -----------------------------------------------------

TRICKY_NAMES = [
    b"bad-\xff\xfe-utf8",
    b"back\\slash",
    b'double"quote',
    b"tab\there",
    b"new\nline",
    "para\u2028sep".encode(),
    b"html<&>",
    "nbsp\u00a0x".encode(),
    "emoji-\U0001f600".encode(),
    b"\x01ctrl\x7f",
    "\u00e9-nfc".encode(),
    "melt-\U0001fae0".encode(),  # Unicode 14: not printable for restic 0.14's Go 1.19
]


WEIRD_TARGET = 't\t\x08\x0c\u2028\u2029<&>\x7f"\\\u00a0\ufffd'.encode()


def _make_tricky_dir(root: Path) -> None:
    broot = os.fsencode(root)
    for i, name in enumerate(TRICKY_NAMES):
        path = os.path.join(broot, name)
        with open(path, "wb") as f:
            f.write(b"x" * i)
        os.chmod(path, 0o640 if i % 2 else 0o600)
    sub = os.path.join(broot, b"sub\xffdir")
    os.mkdir(sub)
    os.symlink(b"target-\xff-not-utf8", os.path.join(sub, b"bad-link"))
    os.symlink(b"../html<&>", os.path.join(sub, b"good-link"))
    # A target goes through Go's JSON string rules directly (no strconv.Quote).
    os.symlink(WEIRD_TARGET, os.path.join(sub, b"weird-link"))
    os.mkfifo(os.path.join(sub, b"fifo"))
    os.mkdir(os.path.join(sub, b"empty"))
    # Winter and summer times, before 1970, and a nanosecond.
    times = [
        (1610000000_123456789, 1610000000_123456789),
        (1625000000_000000001, 1625000000_000000001),
        (-14182940_000000000, -14182940_000000000),
    ]
    for i, name in enumerate(TRICKY_NAMES):
        atime, mtime = times[i % len(times)]
        os.utime(os.path.join(broot, name), ns=(atime, mtime))
    os.utime(sub, ns=times[1])


def _collect_trees(repo: Path, tree_id: str, out: dict[str, bytes]) -> None:
    if tree_id in out:
        return
    data = run_restic(repo, "cat", "blob", tree_id).stdout
    out[tree_id] = data
    for node in decode_tree(data):
        if node.subtree is not None:
            _collect_trees(repo, node.subtree.hex(), out)


@pytest.mark.slow
@pytest.mark.parametrize("tz", ["UTC", "Europe/Berlin"])
def test_live_restic_trees_round_trip(tmp_path: Path, tz: str) -> None:
    repo = tmp_path / "repo"
    src = tmp_path / "src"
    src.mkdir()
    _make_tricky_dir(src)
    env = {"TZ": tz}
    run_restic(repo, "init", env=env)
    run_restic(repo, "backup", ".", env=env, cwd=src)
    snap_id = run_restic(repo, "snapshots", "--json", env=env).stdout
    [snap] = json.loads(snap_id)
    trees: dict[str, bytes] = {}
    _collect_trees(repo, snap["tree"], trees)
    assert len(trees) >= 3  # root, sub, empty
    seen_offsets: set[int] = set()
    for tree_id, data in trees.items():
        assert hashlib.sha256(data).hexdigest() == tree_id
        nodes = decode_tree(data)
        assert encode_tree(nodes) == data, data
        seen_offsets.update(n.mtime.offset for n in nodes)
    root = {n.name: n for n in decode_tree(trees[snap["tree"]])}
    assert set(TRICKY_NAMES) <= set(root)
    assert b'"name":"melt-\\\\U0001fae0"' in trees[snap["tree"]]
    if tz == "Europe/Berlin":
        assert {3600, 7200} <= seen_offsets
    else:
        assert seen_offsets == {0}
    [sub] = [n for n in root.values() if n.name == b"sub\xffdir"]
    assert sub.subtree is not None
    links = {n.name: n for n in decode_tree(trees[sub.subtree.hex()])}
    assert links[b"good-link"].linktarget == b"../html<&>"
    assert links[b"weird-link"].linktarget == WEIRD_TARGET
    assert type(links[b"weird-link"].linktarget) is bytes  # its U+FFFD is a real one
    # 0.14 stores the invalid target lossily; our reader returns what restic would restore.
    assert links[b"bad-link"].linktarget == "target-\ufffd-not-utf8".encode()


# --- tree_references: check's way through a tree --------------------------------------------


def _followed(nodes: list[Node]) -> tuple[list[bytes], list[bytes]]:
    """What check follows from decoded nodes: directories' subtrees, files' content."""
    subtrees = [n.subtree for n in nodes if n.type == "dir" and n.subtree is not None]
    content = [b for n in nodes if n.type == "file" for b in n.content or []]
    return subtrees, content


def test_tree_references_of_a_plain_tree(tree_reader: str) -> None:
    nodes = [
        _node_json(name="f", content=[ID.hex(), ID2.hex()], size=9),
        _node_json(name="d", type="dir", subtree=ID2.hex(), content=None),
        _node_json(name="l", type="symlink", linktarget="t", content=None),
        _node_json(name="e", content=[]),
    ]
    data = _restic_layout(*nodes)
    assert tree_references(data) == ([ID2], [ID, ID2]) == _followed(decode_tree(data))
    assert tree_references(b'{"nodes":[]}\n') == ([], [])


@pytest.mark.parametrize("bad", _MALFORMED_NODES)
def test_tree_references_refuses_what_decoding_rejects(
    bad: dict[str, object], tree_reader: str
) -> None:
    data = _restic_layout(_node_json(), bad)
    with pytest.raises(FormatError):
        decode_tree(data)
    assert tree_references(data) is None


@pytest.mark.parametrize(
    "odd",
    [
        _node_json(type="dir", content=None),  # a directory without its subtree
        _node_json(content=None),  # a file without content
        _node_json(type="gizmo"),  # a type check reports
        _node_json(type="symlink", subtree=ID.hex(), content=None),  # not followed
        _node_json(Name="x"),  # another spelling of a key
        _node_json(generic_attributes={"a": 1}),
        _node_json(name="a\\tb"),  # an escape for unquote_name
    ],
)
def test_tree_references_leaves_the_rest_to_the_full_decoder(
    odd: dict[str, object], tree_reader: str
) -> None:
    """Valid or not, a node outside the plain form goes the general way, where check
    reports what it must (a missing subtree, an unknown type) with the node's name."""
    assert tree_references(_restic_layout(_node_json(), odd)) is None


@settings(max_examples=150, deadline=None)
@given(st.lists(nodes_strategy, max_size=5, unique_by=lambda n: n.name))
def test_tree_references_agree_with_decoding(nodes: list[Node]) -> None:
    data = encode_tree(nodes)
    refs = tree_references(data)
    decoded = decode_tree(data)
    if refs is not None:
        assert refs == _followed(decoded)
    with _streamed():
        assert tree_references(data) == refs
    plain = all(
        not n.extended_attributes
        and n.generic_attributes is None
        and (n.type != "file" or n.content is not None)
        and (n.type != "dir" or n.subtree is not None)
        and (n.type == "file" or n.content is None)
        and (n.type == "dir" or n.subtree is None)
        and not set(n.name.decode("utf-8", "replace")) & set('\\"\n')
        and n.name.decode("utf-8", "replace").isprintable()
        and n.name.isascii()
        and not (n.linktarget and not n.linktarget.isascii())
        for n in nodes
    )
    if plain:
        assert refs is not None  # the fast way is taken for what restic writes


_node_values = st.one_of(
    _json_values,
    st.sampled_from(["2021-01-02T03:04:05Z", "2021-13-02T03:04:05Z", ID.hex(), "zz" * 32]),
    st.lists(st.sampled_from([ID.hex(), "zz" * 32, "ab", 5]), max_size=3),
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.dictionaries(st.sampled_from(sorted(tree_module._PLAIN_KEYS)), _node_values),
        max_size=3,
    )
)
def test_tree_references_never_take_what_decoding_rejects(nodes: list[dict[str, object]]) -> None:
    data = _restic_layout(*nodes)
    for streamed in (False, True):
        with _streamed() if streamed else contextlib.nullcontext():
            refs = tree_references(data)
            if refs is not None:  # decodes, and to the same references
                assert refs == _followed(decode_tree(data))


@contextlib.contextmanager
def _streamed() -> Iterator[None]:
    """Every tree parsed node by node, as big ones are (hypothesis tests cannot take the
    tree_reader fixture)."""
    saved = tree_module.STREAM_ABOVE
    tree_module.STREAM_ABOVE = 0
    try:
        yield
    finally:
        tree_module.STREAM_ABOVE = saved


def _dir(name: bytes, subtree: bytes) -> Node:
    t = GoTime(1_700_000_000, 5, 0)
    return Node(
        name=name,
        type="dir",
        mode=0o755 | (1 << 31),
        mtime=t,
        atime=t,
        ctime=t,
        uid=1,
        gid=2,
        user="u",
        group="g",
        inode=7,
        device_id=9,
        subtree=subtree,
    )


def test_subtrees_replaced_in_the_text_as_encode_tree_writes_them() -> None:
    """The spliced text is byte for byte the tree of the same nodes with the new subtrees,
    also for the fixtures' trees written by restic."""
    a, b, c = (hashlib.sha256(x).digest() for x in (b"a", b"b", b"c"))
    tricky = b'file "subtree":"' + a.hex().encode() + b'"'  # quoted in the JSON: no match
    nodes = [_dir(b"one", a), _dir(b"two", b), _dir(tricky, ID2)]
    data = encode_tree(nodes)
    spliced = tree_module.replace_subtrees(data, [(a, c)])
    nodes[0].subtree = c
    assert spliced == encode_tree(nodes)
    for path in FIXTURE_TREES:
        data = path.read_bytes()
        nodes = decode_tree(data)
        dirs = [n for n in nodes if n.type == "dir" and n.subtree is not None]
        subtrees = [n.subtree for n in dirs]
        unique = [n for n in dirs if subtrees.count(n.subtree) == 1]
        if not unique:
            continue
        old = unique[0].subtree
        assert old is not None
        unique[0].subtree = c
        assert tree_module.replace_subtrees(data, [(old, c)]) == encode_tree(nodes)


def test_subtrees_shared_or_absent_are_left_to_the_decoder() -> None:
    a, b = hashlib.sha256(b"a").digest(), hashlib.sha256(b"b").digest()
    shared = encode_tree([_dir(b"one", a), _dir(b"two", a)])  # two identical subdirectories
    assert tree_module.replace_subtrees(shared, [(a, b)]) is None
    assert tree_module.replace_subtrees(encode_tree([_dir(b"one", ID)]), [(a, b)]) is None
    spaced = b'{"nodes": [{"name": "one", "type": "dir", "subtree": "' + a.hex().encode() + b'"}]}'
    assert tree_module.replace_subtrees(spaced, [(a, b)]) is None
