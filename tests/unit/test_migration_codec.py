"""The migration codecs against MIGRATION.md a.1, a.2 and part (c).

Streams are built here byte by byte from the tables of a.1 and a.2 (with
``struct`` formats written out in this file, not the code's own), so a
wrong offset, byte order or padding rule in the codec cannot hide behind
a shared constant.  Covered:

* the worked example of a.2 as golden bytes, in both byte orders (c.18);
* every libxl record type passing through intact, including a libxc image
  with its own records and END after LIBXC_CONTEXT, and unknown types of
  the optional range;
* round trips of any node and watch sub-records (hypothesis), and
  insertion before END leaving every other byte alone;
* arbitrary bytes give a :class:`Stream` or a :class:`StreamError`, never
  anything else;
* each kind of bad stream, with the offset and the reason in the error;
* ADD_DOMAIN_WATCHES batches of at most 4096 bytes.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Callable
from typing import TypeVar

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyxenstored.errors import LocalProtocolError
from pyxenstored.migration import (
    DomainData,
    LibxcImage,
    NodeData,
    Record,
    RecordType,
    Stream,
    StreamError,
    WatchData,
    absolute,
    decode_stream,
    decode_xenstore_data,
    describe,
    encode_stream,
    encode_xenstore_data,
    extract,
    insert_before_end,
    relative,
    watch_batches,
)
from pyxenstored.migration.stream import encode_record

T = TypeVar("T")
DOMID = 5
#: The libxl stream header of a.1: "LibxlFmt", version, options (big-endian).
IDENT = b"LibxlFmt"
END = 0
LIBXC_CONTEXT = 1
EMULATOR_XENSTORE_DATA = 2
EMULATOR_CONTEXT = 3
CHECKPOINT_END = 4
CHECKPOINT_STATE = 5
DOMAIN_XENSTORE_DATA = 7
NODE = 1
WATCH = 2


# -- building streams by hand --------------------------------------------------


def order(big: bool) -> str:
    return ">" if big else "<"


def header(options: int = 0, version: int = 2, ident: bytes = IDENT) -> bytes:
    return ident + struct.pack(">II", version, options)


def rec(rtype: int, body: bytes = b"", big: bool = False) -> bytes:
    """A record: type, body_length, body, zero padding to a multiple of 8."""
    return (
        struct.pack(order(big) + "II", rtype, len(body)) + body + bytes(-len(body) % 8)
    )


def tup(*strings: bytes) -> bytes:
    """A NUL-separated, NUL-terminated tuple."""
    return b"".join(s + b"\x00" for s in strings)


def xs_body(subtype: int, *strings: bytes, big: bool = False) -> bytes:
    return struct.pack(order(big) + "I", subtype) + tup(*strings)


def stream_of(*records: bytes, big: bool = False) -> bytes:
    return header(1 if big else 0) + b"".join(records) + rec(END, big=big)


def libxc_image(
    big: bool = False,
    version: int = 3,
    records: tuple[tuple[int, bytes], ...] = ((1, b"P" * 4100), (0x0F, b"x" * 13)),
) -> bytes:
    """A synthetic libxc image: its header, domain header, records and END."""
    image_header = b"\xff" * 8 + struct.pack(">IIH", 0x58454E46, version, int(big))
    image_header += bytes(6)
    # type (x86 PV), page_shift, reserved, xen_major, xen_minor
    domain_header = struct.pack(order(big) + "IHHII", 1, 12, 0, 4, 17)
    body = b"".join(rec(t, b, big) for t, b in records) + rec(END, big=big)
    return image_header + domain_header + body


def load(data: bytes) -> DomainData:
    """What the destination does first: decode and validate everything."""
    return extract(decode_stream(data), DOMID)


# -- golden bytes --------------------------------------------------------------

#: MIGRATION.md a.2, the worked example, little-endian.
GOLDEN_LE = (
    bytes.fromhex("07000000 1f000000 01000000")
    + b"device/vif/0/state\x00"
    + b"4\x00"
    + b"n5\x00"
    + b"r0\x00"
    + b"\x00"
)
#: The same record in a big-endian stream (c.18: the sub-type too).
GOLDEN_BE = (
    bytes.fromhex("00000007 0000001f 00000001")
    + b"device/vif/0/state\x00"
    + b"4\x00"
    + b"n5\x00"
    + b"r0\x00"
    + b"\x00"
)
EXAMPLE = NodeData("device/vif/0/state", b"4", ("n5", "r0"))


def test_worked_example_bytes() -> None:
    assert len(GOLDEN_LE) == 40  # 8 + 31 + 1 byte of padding
    record = encode_xenstore_data(EXAMPLE)
    assert record == Record(RecordType.DOMAIN_XENSTORE_DATA, GOLDEN_LE[8:39])
    assert encode_record(record) == GOLDEN_LE
    assert encode_record(record) == rec(
        7, xs_body(NODE, b"device/vif/0/state", b"4", b"n5", b"r0")
    )


@pytest.mark.parametrize(("big", "golden"), [(False, GOLDEN_LE), (True, GOLDEN_BE)])
def test_worked_example_stream_both_byte_orders(big: bool, golden: bytes) -> None:
    options = b"\x00\x00\x00\x01" if big else b"\x00\x00\x00\x00"
    raw = b"LibxlFmt" + b"\x00\x00\x00\x02" + options + golden + bytes(8)
    data = DomainData(DOMID, [EXAMPLE])
    built = encode_stream(Stream(big, items=[*data.records(big), Record(END)]))
    assert built == raw
    stream = decode_stream(raw)
    assert stream.big_endian is big
    assert stream.items == [Record(7, golden[8:39]), Record(END)]
    assert load(raw) == DomainData(DOMID, [EXAMPLE], [])


def test_end_only_stream() -> None:
    raw = header() + bytes(8)
    stream = decode_stream(raw)
    assert stream == Stream(False, False, [Record(RecordType.END)])
    assert encode_stream(stream) == raw
    assert load(raw) == DomainData(DOMID)


def test_watch_record_bytes() -> None:
    record = encode_xenstore_data(WatchData("/local/domain/0/backend", "tok en"), True)
    assert encode_record(record, True) == rec(
        7, xs_body(WATCH, b"/local/domain/0/backend", b"tok en", big=True), big=True
    )


def test_node_names_starting_with_at() -> None:
    """``/local/domain/5/@x`` is a legal node; its relative path is ``@x``."""
    nodes = [NodeData("@x", b"1", ("n5",)), NodeData("@x/@y", b"2", ("n5",))]
    raw = stream_of(*(encode_record(r) for r in DomainData(DOMID, nodes).records()))
    assert load(raw).nodes == nodes


def test_home_node_has_the_empty_path() -> None:
    """c.3: the empty path is the home node itself (node records only)."""
    raw = stream_of(rec(7, xs_body(NODE, b"", b"", b"n0", b"r5")))
    assert load(raw).nodes == [NodeData("", b"", ("n0", "r5"))]
    assert relative(DOMID, "/local/domain/5") == ""
    assert relative(DOMID, "/local/domain/5/a/b") == "a/b"
    assert absolute(DOMID, "") == "/local/domain/5"
    assert absolute(DOMID, "a/b") == "/local/domain/5/a/b"
    with pytest.raises(LocalProtocolError):
        relative(DOMID, "/local/domain/50/a")  # a prefix, not the home
    empty_watch = stream_of(rec(7, xs_body(WATCH, b"", b"t")))
    with pytest.raises(StreamError, match="invalid watch path"):
        load(empty_watch)


# -- every libxl record passes through -----------------------------------------

EMULATOR_KEYS = struct.pack("<II", 2, 0) + tup(b"physmap/1/start_addr", b"f0000000")
EMULATOR_BLOB = struct.pack("<II", 2, 0) + bytes(range(256)) * 3


def full_stream(big: bool = False) -> bytes:
    """Every libxl record type, a libxc image and an unknown optional type."""
    o = order(big)
    return header(int(big)) + b"".join(
        [
            rec(LIBXC_CONTEXT, big=big),
            libxc_image(big=big),
            rec(EMULATOR_XENSTORE_DATA, EMULATOR_KEYS, big),
            rec(EMULATOR_CONTEXT, EMULATOR_BLOB, big),
            rec(CHECKPOINT_END, big=big),
            rec(CHECKPOINT_STATE, struct.pack(o + "I", 9) + bytes(4), big),
            rec(0x80000001, b"optional, kept", big),
            rec(0xFFFFFFFF, big=big),
            rec(7, xs_body(WATCH, b"@releaseDomain", b"r", big=big), big),
            rec(END, big=big),
        ]
    )


@pytest.mark.parametrize("big", [False, True])
def test_every_record_type_passes_through(big: bool) -> None:
    raw = full_stream(big)
    stream = decode_stream(raw)
    kinds = [
        "image" if isinstance(item, LibxcImage) else item.type for item in stream.items
    ]
    assert kinds == [1, "image", 2, 3, 4, 5, 0x80000001, 0xFFFFFFFF, 7, 0]
    image = stream.items[1]
    assert isinstance(image, LibxcImage)
    assert image.raw == libxc_image(big=big)
    assert image.records == 3  # two records and the image's own END
    assert stream.items[2] == Record(2, EMULATOR_KEYS)
    assert stream.items[3] == Record(3, EMULATOR_BLOB)
    assert encode_stream(stream) == raw
    assert load(raw).watches == [WatchData("@releaseDomain", "r")]


def test_libxc_image_in_the_other_byte_order() -> None:
    """The libxc image carries its own byte order (its options bit 0)."""
    image = libxc_image(big=True, version=2)
    raw = header() + rec(LIBXC_CONTEXT) + image + rec(END)
    stream = decode_stream(raw)
    assert stream.items[1] == LibxcImage(image, 3)
    assert encode_stream(stream) == raw


def test_legacy_option_is_kept() -> None:
    raw = header(options=2) + rec(END)
    stream = decode_stream(raw)
    assert stream.legacy
    assert encode_stream(stream) == raw


def test_describe_lists_every_item_with_its_offset() -> None:
    raw = full_stream()
    stream = decode_stream(raw)
    text = describe(stream, [(8, "watch @releaseDomain")])
    lines = text.splitlines()
    assert lines[0] == "libxl migration stream v2, little-endian"
    assert len(lines) == 1 + len(stream.items)
    image_size = len(libxc_image())
    assert lines[1].split() == ["@16", "LIBXC_CONTEXT", "(0", "bytes)"]
    assert lines[2].split()[0] == "@24"
    assert f"libxc image: 3 records, {image_size} bytes" in lines[2]
    assert lines[3].split()[:2] == [f"@{24 + image_size}", "EMULATOR_XENSTORE_DATA"]
    assert "unknown optional 0x80000001" in lines[7]
    assert "unknown optional 0xffffffff" in lines[8]
    assert lines[9].endswith("DOMAIN_XENSTORE_DATA (21 bytes) watch @releaseDomain")
    assert lines[10].split() == [f"@{len(raw) - 8}", "END", "(0", "bytes)"]
    assert "big-endian, legacy" in describe(
        decode_stream(header(3) + rec(END, big=True))
    )


# -- round trips (hypothesis) --------------------------------------------------

segment = st.text(alphabet="abzAZ09-_@", min_size=1, max_size=6)
rel_paths = st.lists(segment, min_size=1, max_size=4).map("/".join)
node_paths = st.one_of(st.just(""), rel_paths)
values = st.binary(max_size=40).map(lambda v: v.replace(b"\x00", b"\x01"))
perm = st.builds("{}{}".format, st.sampled_from("nrwb"), st.integers(0, 65535))
perm_lists = st.lists(perm, min_size=1, max_size=5).map(tuple)
node_data = st.builds(NodeData, node_paths, values, perm_lists)
watch_paths = st.one_of(
    rel_paths.filter(lambda p: not p.startswith("@")),
    st.just("/"),
    rel_paths.map("/{}".format),
    st.sampled_from(["@releaseDomain", "@introduceDomain", "@releaseDomain/7"]),
    rel_paths.map("@{}".format),
)
tokens = st.text(st.characters(min_codepoint=1, max_codepoint=255), max_size=12)
watch_data = st.builds(WatchData, watch_paths, tokens)
watch_lists = st.lists(watch_data, max_size=10, unique_by=lambda w: (w.path, w.token))


@given(st.lists(node_data, max_size=12), watch_lists, st.booleans())
def test_round_trip(nodes: list[NodeData], watches: list[WatchData], big: bool) -> None:
    data = DomainData(DOMID, nodes, watches)
    records = data.records(big)
    # The bytes are exactly the tuples of a.2 / c.2.
    items: list[NodeData | WatchData] = [*nodes, *watches]
    for item, record in zip(items, records, strict=True):
        if isinstance(item, NodeData):
            strings = [item.path.encode("latin-1"), item.value]
            strings += [p.encode() for p in item.perms]
            assert record.body == xs_body(NODE, *strings, big=big)
        else:
            strings = [item.path.encode(), item.token.encode("latin-1")]
            assert record.body == xs_body(WATCH, *strings, big=big)
    raw = encode_stream(Stream(big, items=[*records, Record(RecordType.END)]))
    assert raw[:16] == header(int(big))
    assert load(raw) == data


opaque_records = st.lists(
    st.builds(
        Record,
        st.sampled_from([2, 3, 4, 5, 0x80000000, 0x9ABCDEF0, 0xFFFFFFFF]),
        st.binary(max_size=30),
    ),
    max_size=5,
)


@given(
    opaque_records,
    st.booleans(),
    st.booleans(),
    st.lists(node_data, max_size=5),
    watch_lists,
)
def test_insert_before_end_keeps_everything_else(
    others: list[Record],
    with_image: bool,
    big: bool,
    nodes: list[NodeData],
    watches: list[WatchData],
) -> None:
    body = b"".join(encode_record(r, big) for r in others)
    if with_image:
        body = rec(LIBXC_CONTEXT, big=big) + libxc_image(big=not big) + body
    base = header(int(big)) + body + rec(END, big=big)
    records = DomainData(DOMID, nodes, watches).records(big)
    out = encode_stream(insert_before_end(decode_stream(base), records))
    inserted = b"".join(encode_record(r, big) for r in records)
    assert out == base[:-8] + inserted + base[-8:]
    assert load(out) == DomainData(DOMID, nodes, watches)


def test_insert_before_end_needs_an_end() -> None:
    with pytest.raises(StreamError, match="no END"):
        insert_before_end(Stream(items=[Record(2, b"x")]), [])


# -- arbitrary input -----------------------------------------------------------

VALID = full_stream()


def mutate(edits: list[tuple[int, int]], cut: int) -> bytes:
    data = bytearray(VALID)
    for where, value in edits:
        data[where % len(data)] = value
    return bytes(data[: len(data) - cut])


anything = st.one_of(
    st.binary(max_size=120),
    st.binary(max_size=120).map(lambda b: header() + b),
    st.binary(max_size=120).map(lambda b: header(1) + b),
    st.binary(max_size=120).map(lambda b: header() + rec(LIBXC_CONTEXT) + b),
    st.builds(
        mutate,
        st.lists(
            st.tuples(st.integers(0, len(VALID)), st.integers(0, 255)), max_size=4
        ),
        st.integers(0, 40),
    ),
)


def attempt(func: Callable[[], T]) -> T | StreamError:
    """The result of ``func``, or the StreamError it raised."""
    try:
        return func()
    except StreamError as error:
        return error


@given(anything)
def test_arbitrary_bytes_give_a_stream_or_a_stream_error(data: bytes) -> None:
    stream = attempt(lambda: decode_stream(data))
    if isinstance(stream, StreamError):
        assert 0 <= stream.offset <= len(data)
        assert str(stream) == f"offset {stream.offset}: {stream.reason}"
        return
    assert isinstance(stream, Stream)
    assert stream.items[-1] == Record(RecordType.END)
    assert encode_stream(stream) == data  # nothing dropped, nothing invented
    state = attempt(lambda: extract(stream, DOMID))
    if isinstance(state, StreamError):
        assert 0 <= state.offset <= len(data)
    else:
        assert isinstance(state, DomainData)


@given(st.binary(max_size=60), st.booleans())
def test_arbitrary_sub_record_bodies(body: bytes, big: bool) -> None:
    item = attempt(lambda: decode_xenstore_data(body, big, 123))
    if isinstance(item, StreamError):
        assert item.offset == 123
    else:
        assert encode_xenstore_data(item, big).body == body


# -- bad streams ---------------------------------------------------------------

GOOD_NODE = rec(7, xs_body(NODE, b"data", b"v", b"n5"))
#: Sub-records are checked after a libxc image and a good record, so the
#: offset of the bad one must account for both.
PREFIX = rec(LIBXC_CONTEXT) + libxc_image() + GOOD_NODE
AT = 16 + len(PREFIX)


def bad_sub(*strings: bytes, subtype: int = NODE) -> bytes:
    return header() + PREFIX + rec(7, xs_body(subtype, *strings)) + rec(END)


def raw_sub(body: bytes) -> bytes:
    return header() + PREFIX + rec(7, body) + rec(END)


BAD_STREAMS = {
    "wrong magic": (b"LibxlFmX" + header()[8:] + rec(END), 0, "bad magic"),
    "wrong version": (header(version=3) + rec(END), 8, "version 3"),
    "version 1": (header(version=1) + rec(END), 8, "version 1"),
    "reserved options": (header(options=4) + rec(END), 12, "reserved option bits"),
    "empty": (b"", 0, "truncated stream header"),
    "truncated header": (header()[:10], 0, "truncated stream header"),
    "truncated record header": (header() + GOLDEN_LE[:5], 16, "truncated libxl record"),
    "truncated record": (header() + GOLDEN_LE[:30], 16, "truncated libxl record"),
    "record missing its padding": (header() + GOLDEN_LE[:39], 16, "truncated"),
    "non-zero padding": (
        header() + GOLDEN_LE[:39] + b"\x01" + rec(END),
        16 + 8 + 31,
        "non-zero record padding",
    ),
    "unknown mandatory type 6": (
        header() + rec(6, b"x") + rec(END),
        16,
        "unknown mandatory record type 0x00000006",
    ),
    "unknown mandatory type 0x7fffffff": (
        header() + GOLDEN_LE + rec(0x7FFFFFFF) + rec(END),
        56,
        "unknown mandatory record type 0x7fffffff",
    ),
    "missing END": (header() + GOLDEN_LE, 56, "without an END"),
    "data after END": (header() + rec(END) + rec(END), 24, "data after the END"),
    "LIBXC_CONTEXT without an image": (
        header() + rec(LIBXC_CONTEXT) + GOLDEN_LE + rec(END),
        24,
        "not followed by a libxc image",
    ),
    "truncated libxc image header": (
        header() + rec(LIBXC_CONTEXT) + rec(END),
        24,
        "truncated libxc image header",
    ),
    "libxc image of version 1": (
        header() + rec(LIBXC_CONTEXT) + libxc_image(version=1) + rec(END),
        24 + 12,
        "libxc image version 1",
    ),
    "libxc image without its END": (
        header() + rec(LIBXC_CONTEXT) + libxc_image()[:-8],
        24 + len(libxc_image()) - 8,
        "truncated libxc record header",
    ),
    "tuple without its NUL": (
        raw_sub(struct.pack("<I", NODE) + b"data\x00v\x00n5"),
        AT,
        "tuple without its terminating NUL",
    ),
    "empty tuple": (raw_sub(struct.pack("<I", NODE)), AT, "terminating NUL"),
    "body shorter than the sub-type": (raw_sub(b"\x01\x00"), AT, "shorter"),
    "absolute node path": (
        bad_sub(b"/local/domain/5/data", b"v", b"n5"),
        AT,
        "starts with '/'",
    ),
    "invalid node path": (bad_sub(b"a//b", b"v", b"n5"), AT, "invalid node path"),
    "node path with a trailing slash": (bad_sub(b"a/", b"v", b"n5"), AT, "invalid"),
    "bad permission letter": (bad_sub(b"a", b"v", b"x5"), AT, "malformed permission"),
    "empty permission": (bad_sub(b"a", b"v", b"n5", b""), AT, "malformed permission"),
    "permission above 65535": (
        bad_sub(b"a", b"v", b"n5", b"r65536"),
        AT,
        "malformed permission 'r65536'",
    ),
    "permission without a domid": (bad_sub(b"a", b"v", b"r"), AT, "malformed"),
    "octal-looking permission": (bad_sub(b"a", b"v", b"r010"), AT, "malformed"),
    "signed permission": (bad_sub(b"a", b"v", b"r+5"), AT, "malformed"),
    "no permissions at all": (bad_sub(b"a", b"v"), AT, "permissions"),
    "watch with 3 strings": (
        bad_sub(b"data", b"tok", b"extra", subtype=WATCH),
        AT,
        "exactly a path and a token",
    ),
    "watch with 1 string": (bad_sub(b"data", subtype=WATCH), AT, "exactly"),
    "invalid watch path": (bad_sub(b"da ta", b"t", subtype=WATCH), AT, "invalid"),
    "sub-type 0 (invalid)": (bad_sub(b"a", b"v", b"n5", subtype=0), AT, "sub-type 0"),
    "sub-type 3 (reserved)": (bad_sub(b"a", b"t", subtype=3), AT, "sub-type 3"),
    "sub-type in the wrong byte order": (
        raw_sub(struct.pack(">I", NODE) + tup(b"a", b"v", b"n5")),
        AT,
        "sub-type 16777216",
    ),
    "the same watch twice": (
        stream_of(
            rec(7, xs_body(WATCH, b"data", b"t")), rec(7, xs_body(WATCH, b"data", b"t"))
        ),
        16 + 2 * 24 + 8,
        "twice",
    ),
}


@pytest.mark.parametrize("name", list(BAD_STREAMS))
def test_bad_stream(name: str) -> None:
    data, offset, reason = BAD_STREAMS[name]
    with pytest.raises(StreamError) as caught:
        load(data)
    error = caught.value
    assert error.offset == offset, error
    assert reason in error.reason, error
    assert str(error) == f"offset {offset}: {error.reason}"


def test_value_with_a_nul_cannot_be_saved() -> None:
    """c.2: the sender refuses rather than corrupt the value."""
    node = NodeData("data/bin", b"a\x00b", ("n5",))
    with pytest.raises(LocalProtocolError, match="NUL"):
        encode_xenstore_data(node)
    with pytest.raises(LocalProtocolError, match="data/bin"):
        DomainData(DOMID, [EXAMPLE, node]).records()


@pytest.mark.parametrize(
    "item",
    [
        NodeData("a", b"v", ()),
        NodeData("a\x00b", b"v", ("n5",)),
        NodeData("a", b"v", ("n5\x00",)),
        WatchData("a", "t\x00"),
    ],
)
def test_other_unencodable_items(item: NodeData | WatchData) -> None:
    with pytest.raises(LocalProtocolError):
        encode_xenstore_data(item)


# -- ADD_DOMAIN_WATCHES batches ------------------------------------------------


def payload(domid: int, batch: list[WatchData]) -> bytes:
    return f"{domid}\x00".encode() + b"".join(
        tup(w.path.encode(), w.token.encode("latin-1")) for w in batch
    )


def test_no_watches_give_one_empty_batch() -> None:
    """The "restored domain" marker of a.4 (ADD_DOMAIN_WATCHES with k = 0)."""
    assert watch_batches(DOMID, []) == [[]]


def test_batches_split_at_4096_bytes() -> None:
    # Entries of exactly 100 bytes: 40 fit next to "5\0" (2 + 4000 bytes).
    watches = [WatchData(f"w{i:03d}", "t" * 94) for i in range(100)]
    batches = watch_batches(DOMID, watches)
    assert [len(b) for b in batches] == [40, 40, 20]
    assert [w for b in batches for w in b] == watches
    assert all(len(payload(DOMID, b)) <= 4096 for b in batches)


def test_batch_filled_to_exactly_4096_bytes() -> None:
    # "5\0" + 2 entries of 2047 bytes = 4096: one request; a third starts anew.
    big = [WatchData(f"w{i}", "t" * 2043) for i in range(3)]
    batches = watch_batches(DOMID, big)
    assert [len(payload(DOMID, b)) for b in batches] == [4096, 2049]
    with pytest.raises(LocalProtocolError, match="too large"):
        watch_batches(DOMID, [WatchData("w", "t" * 4092)])  # 2 + 4095 bytes
    assert watch_batches(DOMID, [WatchData("w", "t" * 4091)]) == [
        [WatchData("w", "t" * 4091)]
    ]


@given(
    st.lists(
        st.builds(
            WatchData,
            rel_paths,
            st.text(st.characters(min_codepoint=1, max_codepoint=255), max_size=900),
        ),
        max_size=40,
    ),
    st.integers(1, 32751),
)
def test_batches_are_greedy_and_lossless(watches: list[WatchData], domid: int) -> None:
    batches = watch_batches(domid, watches)
    assert [w for b in batches for w in b] == watches
    assert all(batches) or batches == [[]]
    sizes = [len(payload(domid, b)) for b in batches]
    assert all(size <= 4096 for size in sizes)
    for batch, nxt in itertools.pairwise(batches):
        # The next batch started only because its first watch did not fit.
        assert len(payload(domid, [*batch, nxt[0]])) > 4096
