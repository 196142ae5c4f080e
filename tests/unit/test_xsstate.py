"""The xenstore state stream codec against MIGRATION.md b.2-b.5.

Expected bytes are built here from the tables of b.2-b.5 with ``struct``
formats written out in this file, not the codec's own, so a wrong offset,
byte order or padding rule cannot hide behind a shared constant.  Covered:

* a stream captured from C xenstored 4.17 as golden bytes: decoded record
  for record, and re-encoded byte for byte;
* exact layouts of CONNECTION_DATA with a unique id, NODE_DATA with a
  stale permission, WATCH_DATA_EXTENDED, the quota records, both orders;
* round trips of any consistent stream (hypothesis), both versions and
  both byte orders;
* every decoder error, with its offset; any truncation, byte flip or
  garbage gives a stream or a :class:`StateStreamError`, nothing else;
* what the encoder refuses, and the lines of :func:`describe_state`.
"""

from __future__ import annotations

import struct
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyxenstored.errors import XenstoreError
from pyxenstored.migration.xsstate import (
    DEPTH_UNLIMITED,
    DOMID_INVALID,
    ConnectionData,
    ConnType,
    DomainData,
    GlobalData,
    GlobalQuotaData,
    NodeData,
    RecordType,
    StateRecord,
    StateStream,
    StateStreamError,
    TransactionData,
    WatchData,
    decode_state,
    describe_state,
    encode_state,
)
from pyxenstored.perms import Access, Perm

N, R, W, B = Access.NONE, Access.READ, Access.WRITE, Access.BOTH

# -- hand-built streams (b.2, b.3) ---------------------------------------------


def header(version: int = 1, flags: int = 0) -> bytes:
    return b"xenstore" + struct.pack(">II", version, flags)


def record(
    rtype: int, body: bytes, order: str = "<", length: int | None = None
) -> bytes:
    """A record as C writes it: ``len`` rounded up to 8, zero padding."""
    padded = body + bytes(-len(body) % 8)
    declared = len(padded) if length is None else length
    return struct.pack(order + "II", rtype, declared) + padded


END = struct.pack("<II", 0, 0)


def stream(*records: bytes, version: int = 1, flags: int = 0) -> bytes:
    order = ">" if flags & 1 else "<"
    return header(version, flags) + b"".join(records) + struct.pack(order + "II", 0, 0)


def ring_body(conn_id: int = 1, domid: int = 0) -> bytes:
    """CONNECTION_DATA of a ring without data (b.5)."""
    return struct.pack("<IHHHHIHHI", conn_id, 0, 0, domid, 0x7FF4, 2, 0, 0, 0)


def node_body(
    path: bytes,
    value: bytes = b"",
    perms: bytes = b"n\0\0\0",
    conn_id: int = 0,
    tx_id: int = 0,
    access: int = 0,
) -> bytes:
    head = struct.pack(
        "<IIHHHH", conn_id, tx_id, len(path) + 1, len(value), access, len(perms) // 4
    )
    return head + perms + path + b"\0" + value


# -- golden: C xenstored 4.17 live update --------------------------------------

#: ``state_dump`` of Debian's C xenstored 4.17, written while a client held
#: two watches (one relative, one with a control byte in its token), and
#: ``/b`` had permissions naming an existing domain 3 and missing 7 and 2.
C_417 = bytes.fromhex(
    # header: "xenstore", version 1, flags 0
    "78 65 6e 73 74 6f 72 65 00 00 00 01 00 00 00 00"
    # @16 global: socket fd 3, event channel fd 6
    "01 00 00 00 08 00 00 00 03 00 00 00 06 00 00 00"
    # @32 connection 1: ring dom0, tdomid DOMID_INVALID, port 2
    "02 00 00 00 18 00 00 00 01 00 00 00 00 00 00 00"
    "00 00 f4 7f 02 00 00 00 00 00 00 00 00 00 00 00"
    # @64 connection 2: socket fd 7
    "02 00 00 00 18 00 00 00 02 00 00 00 01 00 00 00"
    "07 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00"
    # @96 watch conn 2: /a tok1
    "03 00 00 00 10 00 00 00 02 00 00 00 03 00 05 00"
    "2f 61 00 74 6f 6b 31 00"
    # @120 watch conn 2: rel/x t\x02
    "03 00 00 00 18 00 00 00 02 00 00 00 06 00 03 00"
    "72 65 6c 2f 78 00 74 02 00 00 00 00 00 00 00 00"
    # @152 connection 3 (xenstore-control): socket fd 8, out: the OK reply
    "02 00 00 00 30 00 00 00 03 00 00 00 01 00 00 00"
    "08 00 00 00 00 00 00 00 00 00 00 00 13 00 00 00"
    "00 00 00 00 00 00 00 00 00 00 00 00 03 00 00 00"
    "4f 4b 00 00 00 00 00 00"
    # @208 node @releaseDomain (n0): C 4.17 writes the special nodes first
    "05 00 00 00 28 00 00 00 00 00 00 00 00 00 00 00"
    "0f 00 00 00 00 00 01 00 6e 00 00 00 40 72 65 6c"
    "65 61 73 65 44 6f 6d 61 69 6e 00 00 00 00 00 00"
    # @256 node @introduceDomain (n0)
    "05 00 00 00 28 00 00 00 00 00 00 00 00 00 00 00"
    "11 00 00 00 00 00 01 00 6e 00 00 00 40 69 6e 74"
    "72 6f 64 75 63 65 44 6f 6d 61 69 6e 00 00 00 00"
    # @304 node / (n0)
    "05 00 00 00 18 00 00 00 00 00 00 00 00 00 00 00"
    "02 00 00 00 00 00 01 00 6e 00 00 00 2f 00 00 00"
    # @336 node /tool (n0)
    "05 00 00 00 20 00 00 00 00 00 00 00 00 00 00 00"
    "06 00 00 00 00 00 01 00 6e 00 00 00 2f 74 6f 6f"
    "6c 00 00 00 00 00 00 00"
    # @376 node /tool/xenstored (n0)
    "05 00 00 00 28 00 00 00 00 00 00 00 00 00 00 00"
    "10 00 00 00 00 00 01 00 6e 00 00 00 2f 74 6f 6f"
    "6c 2f 78 65 6e 73 74 6f 72 65 64 00 00 00 00 00"
    # @424 node /a = 1 (n0,r1 stale)
    "05 00 00 00 20 00 00 00 00 00 00 00 00 00 00 00"
    "03 00 01 00 00 00 02 00 6e 00 00 00 72 01 01 00"
    "2f 61 00 31 00 00 00 00"
    # @464 node /a/b = "" (n0)
    "05 00 00 00 20 00 00 00 00 00 00 00 00 00 00 00"
    "05 00 00 00 00 00 01 00 6e 00 00 00 2f 61 2f 62"
    "00 00 00 00 00 00 00 00"
    # @504 node /c = hello (n0)
    "05 00 00 00 20 00 00 00 00 00 00 00 00 00 00 00"
    "03 00 05 00 00 00 01 00 6e 00 00 00 2f 63 00 68"
    "65 6c 6c 6f 00 00 00 00"
    # @544 node /b = x\x01y (b0,r3,w7 stale,n2 stale)
    "05 00 00 00 28 00 00 00 00 00 00 00 00 00 00 00"
    "03 00 03 00 00 00 04 00 62 00 00 00 72 00 03 00"
    "77 01 07 00 6e 01 02 00 2f 62 00 78 01 79 00 00"
    # @592 END
    "00 00 00 00 00 00 00 00"
)

OK_REPLY = struct.pack("<IIII", 0, 0, 0, 3) + b"OK\0"

C_417_RECORDS: tuple[StateRecord, ...] = (
    GlobalData(3, 6),
    ConnectionData(1, ConnType.RING, domid=0, tdomid=DOMID_INVALID, evtchn=2),
    ConnectionData(2, ConnType.SOCKET, socket_fd=7),
    WatchData(2, "/a", "tok1"),
    WatchData(2, "rel/x", "t\x02"),
    ConnectionData(3, ConnType.SOCKET, socket_fd=8, out_data=OK_REPLY),
    NodeData("@releaseDomain", b"", (Perm(N, 0),)),
    NodeData("@introduceDomain", b"", (Perm(N, 0),)),
    NodeData("/", b"", (Perm(N, 0),)),
    NodeData("/tool", b"", (Perm(N, 0),)),
    NodeData("/tool/xenstored", b"", (Perm(N, 0),)),
    NodeData("/a", b"1", (Perm(N, 0), Perm(R, 1, stale=True))),
    NodeData("/a/b", b"", (Perm(N, 0),)),
    NodeData("/c", b"hello", (Perm(N, 0),)),
    NodeData(
        "/b",
        b"x\x01y",
        (Perm(B, 0), Perm(R, 3), Perm(W, 7, stale=True), Perm(N, 2, stale=True)),
    ),
)


def test_c_stream_decodes_record_for_record() -> None:
    decoded = decode_state(C_417)
    assert decoded.version == 1
    assert not decoded.big_endian
    assert decoded.records == C_417_RECORDS
    offsets = (16, 32, 64, 96, 120, 152, 208, 256, 304, 336, 376, 424, 464, 504, 544)
    assert decoded.offsets == offsets


def test_c_stream_reencodes_byte_for_byte() -> None:
    assert encode_state(C_417_RECORDS, 1) == C_417
    assert encode_state(decode_state(memoryview(C_417)).records) == C_417


def test_bytes_after_end_are_ignored() -> None:
    assert decode_state(C_417 + b"\xff" * 5).records == C_417_RECORDS


def test_spec_literal_len_is_read_too() -> None:
    """A writer that stores the exact body length: advance by the rounded one."""
    body = struct.pack("<IHH", 7, 2, 2) + b"/\0t\0"  # 12 bytes, padded to 16
    data = stream(record(1, struct.pack("<ii", -1, 4)), record(2, ring_body(7)))
    data = data[:-8] + record(3, body, length=len(body)) + END
    decoded = decode_state(data)
    assert decoded.records[-1] == WatchData(7, "/", "t")
    assert decoded.records[0] == GlobalData(-1, 4)


# -- exact layouts (b.5) --------------------------------------------------------


@pytest.mark.parametrize("order", ["<", ">"])
def test_connection_with_unique_id_layout(order: str) -> None:
    conn = ConnectionData(
        0x01020304,
        ConnType.RING,
        domid=5,
        tdomid=9,
        evtchn=0x11,
        in_data=b"abc",
        out_data=b"XY",
        out_resp_len=1,
        unique_id=0x0102030405060708,
    )
    body = (
        struct.pack(order + "IHHHHIHHI", 0x01020304, 0, 1, 5, 9, 0x11, 3, 1, 2)
        + b"abcXY"
        + bytes(3)  # to round_up(24 + 5, 8) = 32
        + struct.pack(order + "Q", 0x0102030405060708)
    )
    flags = 1 if order == ">" else 0
    expected = stream(record(2, body, order), flags=flags)
    assert len(body) == 40
    assert encode_state([conn], big_endian=order == ">") == expected
    assert decode_state(expected).records == (conn,)


def test_socket_connection_layout() -> None:
    conn = ConnectionData(2, ConnType.SOCKET, socket_fd=-1, in_data=b"\0" * 9)
    body = struct.pack("<IHHi4xHHI", 2, 1, 0, -1, 9, 0, 0) + b"\0" * 9
    assert encode_state([conn]) == stream(record(2, body))
    assert decode_state(stream(record(2, body))).records == (conn,)


@pytest.mark.parametrize("order", ["<", ">"])
def test_node_with_stale_perm_layout(order: str) -> None:
    node = NodeData(
        "/local/domain/1",
        b"v\0x",
        (Perm(W, 1), Perm(R, 0x1234, stale=True), Perm(B, 7)),
    )
    body = (
        struct.pack(order + "IIHHHH", 0, 0, 16, 3, 0, 3)
        + b"w\x00"
        + struct.pack(order + "H", 1)
        + b"r\x01"
        + struct.pack(order + "H", 0x1234)
        + b"b\x00"
        + struct.pack(order + "H", 7)
        + b"/local/domain/1\0v\0x"
    )
    flags = 1 if order == ">" else 0
    expected = stream(record(5, body, order), flags=flags)
    assert encode_state([node], big_endian=order == ">") == expected
    assert decode_state(expected).records == (node,)


def test_pending_node_layout() -> None:
    records: list[StateRecord] = [
        ConnectionData(4, ConnType.SOCKET, socket_fd=9),
        TransactionData(4, 77),
        NodeData("/x", b"", (), conn_id=4, tx_id=77, access=0),
        NodeData("/y", b"1", (Perm(N, 0),), conn_id=4, tx_id=77, access=3),
    ]
    data = encode_state(records)
    assert record(4, struct.pack("<II", 4, 77)) in data
    assert record(5, node_body(b"/x", perms=b"", conn_id=4, tx_id=77)) in data
    assert record(5, node_body(b"/y", b"1", conn_id=4, tx_id=77, access=3)) in data
    assert decode_state(data).records == tuple(records)


@pytest.mark.parametrize(("depth", "wire"), [(0, 0), (3, 3), (DEPTH_UNLIMITED, 0xFFFF)])
def test_watch_extended_layout(depth: int, wire: int) -> None:
    watch = WatchData(1, "/a/b", "tk", depth)
    # b.5: depth at 8, pad at 10, strings at 12 (not where C 4.22 puts them).
    body = struct.pack("<IHHHH", 1, 5, 3, wire, 0) + b"/a/b\0tk\0"
    expected = stream(record(2, ring_body()), record(8, body), version=2)
    conn = ConnectionData(1, ConnType.RING, evtchn=2)
    assert encode_state([conn, watch], 2) == expected
    assert decode_state(expected).records == (conn, watch)


def test_plain_watch_in_version_2_stays_watch_data() -> None:
    data = encode_state([ConnectionData(1, ConnType.RING), WatchData(1, "p", "t")], 2)
    assert record(3, struct.pack("<IHH", 1, 2, 2) + b"p\0t\0") in data


@pytest.mark.parametrize("version", [1, 2])
def test_quota_and_domain_layout(version: int) -> None:
    quotas = GlobalQuotaData((("nodes", 1000), ("watches", 0)), (("outstanding", 5),))
    domain = DomainData(3, 0xABCD, (("nodes", 7),))
    quota_body = (
        struct.pack("<HHIII", 2, 1, 1000, 0, 5) + b"nodes\0watches\0outstanding\0"
    )
    features = 0xABCD if version == 2 else 0  # b.3: 0 where not valid
    domain_body = struct.pack("<HHII", 3, 1, features, 7) + b"nodes\0"
    expected = stream(record(6, quota_body), record(7, domain_body), version=version)
    assert encode_state([quotas, domain], version) == expected
    decoded = decode_state(expected).records
    assert decoded == (quotas, replace(domain, features=features))


def test_domain_features_are_ignored_on_read_in_version_1() -> None:
    body = struct.pack("<HHI", 3, 0, 0xFFFF)
    assert decode_state(stream(record(7, body))).records == (DomainData(3),)
    assert decode_state(stream(record(7, body), version=2)).records == (
        DomainData(3, 0xFFFF),
    )


def test_big_endian_header_and_framing() -> None:
    data = encode_state([GlobalData(1, 2)], 2, big_endian=True)
    assert data == (
        b"xenstore\0\0\0\x02\0\0\0\x01"
        + struct.pack(">IIii", 1, 8, 1, 2)
        + struct.pack(">II", 0, 0)
    )
    decoded = decode_state(data)
    assert decoded == StateStream(2, (GlobalData(1, 2),), True, (16,))


# -- round trips ---------------------------------------------------------------

u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
i32 = st.integers(-(2**31), 2**31 - 1)
latin1 = st.text(st.characters(min_codepoint=1, max_codepoint=255), max_size=12)
perm = st.builds(Perm, st.sampled_from([N, R, W, B]), u16, st.booleans())
quotas = st.lists(st.tuples(latin1, u32), max_size=4).map(tuple)


@st.composite
def connections(draw: st.DrawFn, conn_id: int) -> ConnectionData:
    out = draw(st.binary(max_size=40))
    common = {
        "in_data": draw(st.binary(max_size=40)),
        "out_data": out,
        "out_resp_len": draw(st.integers(0, len(out))),
        "unique_id": draw(st.none() | st.integers(0, 2**64 - 1)),
    }
    if draw(st.booleans()):
        return ConnectionData(
            conn_id,
            ConnType.RING,
            domid=draw(u16),
            tdomid=draw(u16),
            evtchn=draw(u32),
            **common,  # type: ignore[arg-type]
        )
    return ConnectionData(
        conn_id,
        ConnType.SOCKET,
        socket_fd=draw(i32),
        **common,  # type: ignore[arg-type]
    )


@st.composite
def consistent_records(draw: st.DrawFn, version: int) -> list[StateRecord]:
    """Records in C's order (b.6), every reference to an earlier record."""
    records: list[StateRecord] = []
    if draw(st.booleans()):
        records.append(GlobalData(draw(i32), draw(i32)))
    if draw(st.booleans()):
        records.append(GlobalQuotaData(draw(quotas), draw(quotas)))
    transactions: list[tuple[int, int]] = []
    ids = draw(st.lists(st.integers(1, 0xFFFFFFFF), max_size=3, unique=True))
    for conn_id in ids:
        records.append(draw(connections(conn_id)))
        depths = st.none() | u16 if version == 2 else st.none()
        for _ in range(draw(st.integers(0, 2))):
            records.append(WatchData(conn_id, draw(latin1), draw(latin1), draw(depths)))
        for tx_id in draw(st.lists(u32, max_size=2, unique=True)):
            records.append(TransactionData(conn_id, tx_id))
            transactions.append((conn_id, tx_id))
    for _ in range(draw(st.integers(0, 4))):
        path, value = "/" + draw(latin1), draw(st.binary(max_size=30))
        pending = draw(st.booleans())
        if transactions and pending:
            conn_id, tx_id = draw(st.sampled_from(transactions))
            perms = tuple(draw(st.lists(perm, max_size=3)))
            access = draw(st.integers(0, 3))
            records.append(NodeData(path, value, perms, conn_id, tx_id, access))
        else:
            perms = tuple(draw(st.lists(perm, min_size=1, max_size=3)))
            records.append(NodeData(path, value, perms))
    for domid in draw(st.lists(u16, max_size=2, unique=True)):
        features = draw(u32) if version == 2 else 0
        records.append(DomainData(domid, features, draw(quotas)))
    return records


@st.composite
def streams(draw: st.DrawFn) -> tuple[list[StateRecord], int, bool]:
    version = draw(st.sampled_from([1, 2]))
    return draw(consistent_records(version)), version, draw(st.booleans())


@given(streams())
def test_round_trip(case: tuple[list[StateRecord], int, bool]) -> None:
    records, version, big_endian = case
    data = encode_state(records, version, big_endian=big_endian)
    decoded = decode_state(data)
    assert decoded.records == tuple(records)
    assert (decoded.version, decoded.big_endian) == (version, big_endian)
    assert len(decoded.offsets) == len(records)
    assert encode_state(decoded.records, version, big_endian=big_endian) == data
    # Every record is 8-byte aligned, its len a multiple of 8 (b.3).
    fmt = ">II" if big_endian else "<II"
    for offset in decoded.offsets:
        assert offset % 8 == 0
        assert struct.unpack_from(fmt, data, offset)[1] % 8 == 0
    assert len(describe_state(decoded)) == len(records) + 1


@given(st.integers(0, 2**32 - 1), u16.filter(lambda d: d != 0))
def test_domain_features_dropped_in_version_1(features: int, domid: int) -> None:
    data = encode_state([DomainData(domid, features)], 1)
    assert decode_state(data).records == (DomainData(domid, 0),)


# -- robustness -----------------------------------------------------------------


def every_record_type() -> bytes:
    """A version 2 stream with every record type (and fields set)."""
    return encode_state(
        [
            GlobalData(3, 4),
            GlobalQuotaData((("nodes", 10),), (("outstanding", 2),)),
            ConnectionData(1, ConnType.RING, 1, 2, 3, in_data=b"in", unique_id=9),
            WatchData(1, "/w", "t", 2),
            WatchData(1, "w", "t"),
            ConnectionData(
                2, ConnType.SOCKET, socket_fd=5, out_data=b"o", out_resp_len=1
            ),
            TransactionData(2, 8),
            NodeData("/", b"", (Perm(N, 0),)),
            NodeData("/n", b"v", (Perm(B, 1), Perm(R, 2, stale=True)), 2, 8, 2),
            DomainData(1, 1, (("nodes", 3),)),
        ],
        2,
    )


@pytest.mark.parametrize("data", [C_417, every_record_type()], ids=["c", "all"])
def test_every_truncation_is_a_state_stream_error(data: bytes) -> None:
    for size in range(len(data)):
        with pytest.raises(StateStreamError) as caught:
            decode_state(data[:size])
        assert 0 <= caught.value.offset <= size


@given(st.data())
def test_mutated_stream_decodes_or_raises_state_stream_error(
    data: st.DataObject,
) -> None:
    raw = bytearray(data.draw(st.sampled_from([C_417, every_record_type()])))
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(raw) - 1))
        raw[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    offset = 0
    try:
        decode_state(bytes(raw[:cut]))
    except StateStreamError as error:
        offset = error.offset
    assert 0 <= offset <= cut


@given(st.binary(max_size=200), st.sampled_from([1, 2]), st.sampled_from([0, 1]))
def test_garbage_after_a_header_decodes_or_raises(
    garbage: bytes, version: int, flags: int
) -> None:
    try:
        decode_state(header(version, flags) + garbage)
    except StateStreamError:
        pass


# -- decoder errors, with their offsets -------------------------------------------

#: Body offset of the first record after the header.
AT = 24


def bad(*records: bytes, version: int = 1) -> bytes:
    return stream(*records, version=version)


DECODE_ERRORS: list[tuple[str, bytes, int, str]] = [
    ("short header", b"xenstore\0\0", 0, "shorter than the header"),
    ("ident", b"xenst0re" + bytes(8) + END, 0, "ident"),
    ("version 0", header(0) + END, 8, "unsupported version 0"),
    ("version 3", header(3) + END, 8, "unsupported version 3"),
    ("flags", header(1, 2) + END, 12, "unknown flags 0x2"),
    ("no END", header(), 16, "no END record"),
    ("no END after a record", header() + record(1, bytes(8)), 32, "no END record"),
    ("half a record header", header() + bytes(4), 16, "truncated record header"),
    ("unknown type", bad(record(9, b"")), 16, "unknown record type 0x9"),
    ("extended watch in v1", bad(record(8, bytes(16))), 16, "version 1 stream"),
    (
        "record past the data",
        header() + struct.pack("<II", 1, 16) + bytes(8),
        16,
        "GLOBAL_DATA of 16 bytes runs past the end",
    ),
    (
        "padding past the data",
        header() + struct.pack("<II", 1, 9) + bytes(9),
        16,
        "runs past the end",
    ),
    ("short global", bad(record(1, bytes(4), length=4)), 16, "shorter than its 8-byte"),
    ("short connection", bad(record(2, bytes(16))), 16, "shorter than its 24-byte"),
    ("connection id 0", bad(record(2, ring_body(0))), AT, "connection id 0"),
    (
        "connection type",
        bad(record(2, struct.pack("<IHH16x", 1, 2, 0))),
        AT + 4,
        "unknown connection type 2",
    ),
    (
        "connection fields",
        bad(record(2, struct.pack("<IHH16x", 1, 0, 2))),
        AT + 6,
        "unknown connection fields 0x2",
    ),
    (
        "connection data",
        bad(record(2, struct.pack("<IHH8xHHI", 1, 1, 0, 5, 0, 4) + bytes(8))),
        AT + 16,
        "9 bytes of data run past",
    ),
    (
        "partial response",
        bad(record(2, struct.pack("<IHH8xHHI", 1, 1, 0, 0, 3, 2) + bytes(8))),
        AT + 18,
        "partial response of 3 bytes",
    ),
    (
        "unique id",
        bad(record(2, struct.pack("<IHH8xHHI", 1, 1, 1, 1, 0, 0) + bytes(1))),
        AT + 32,
        "unique id runs past",
    ),
    (
        "duplicate connection",
        bad(record(2, ring_body()), record(2, ring_body())),
        AT + 32,
        "connection 1 appears twice",
    ),
    ("short watch", bad(record(3, bytes(4), length=4)), 16, "shorter than its 8-byte"),
    (
        "watch path past the record",
        bad(record(2, ring_body()), record(3, struct.pack("<IHH", 1, 9, 1) + b"/\0")),
        AT + 32 + 4,
        "watch path of 9 bytes runs past",
    ),
    (
        "watch token past the record",
        bad(record(2, ring_body()), record(3, struct.pack("<IHH", 1, 2, 9) + b"/\0")),
        AT + 32 + 6,
        "watch token of 9 bytes runs past",
    ),
    (
        "watch path without NUL",
        bad(record(2, ring_body()), record(3, struct.pack("<IHH", 1, 2, 2) + b"/a/\0")),
        AT + 32 + 8,
        "watch path is not one NUL-terminated string",
    ),
    (
        "watch path with a NUL inside",
        bad(
            record(2, ring_body()), record(3, struct.pack("<IHH", 1, 3, 1) + b"\0a\0\0")
        ),
        AT + 32 + 8,
        "watch path is not one",
    ),
    (
        "watch path length 0",
        bad(record(2, ring_body()), record(3, struct.pack("<IHH", 1, 0, 1) + b"\0")),
        AT + 32 + 8,
        "watch path is not one",
    ),
    (
        "watch token without NUL",
        bad(record(2, ring_body()), record(3, struct.pack("<IHH", 1, 2, 2) + b"/\0tt")),
        AT + 32 + 10,
        "watch token is not one",
    ),
    (
        "extended watch strings at 12",
        bad(
            record(2, ring_body()),
            # strings at 10, as C 4.22 reads them: the path then lacks its NUL
            record(8, struct.pack("<IHHH", 1, 3, 2, 0) + b"/a\0t\0"),
            version=2,
        ),
        AT + 32 + 12,
        "watch path is not one",
    ),
    (
        "watch of an unknown connection",
        bad(record(3, struct.pack("<IHH", 1, 2, 2) + b"/\0t\0")),
        AT,
        "watch of connection 1",
    ),
    (
        "transaction of an unknown connection",
        bad(record(4, struct.pack("<II", 3, 1))),
        AT,
        "transaction of connection 3",
    ),
    ("short node", bad(record(5, bytes(12), length=12)), 16, "than its 16-byte"),
    (
        "node access",
        bad(record(5, node_body(b"/", access=4))),
        AT + 12,
        "unknown node access bits 0x4",
    ),
    (
        "node perms past the record",
        bad(record(5, struct.pack("<IIHHHH", 0, 0, 2, 0, 0, 3) + b"n\0\0\0/\0")),
        AT + 14,
        "3 permissions run past",
    ),
    (
        "node perm letter",
        bad(record(5, node_body(b"/", perms=b"n\0\0\0x\0\1\0"))),
        AT + 20,
        "unknown permission 'x'",
    ),
    (
        "node perm flags",
        bad(record(5, node_body(b"/", perms=b"r\2\0\0"))),
        AT + 17,
        "unknown permission flags 0x2",
    ),
    (
        "node path past the record",
        bad(record(5, struct.pack("<IIHHHH", 0, 0, 30, 0, 0, 1) + b"n\0\0\0/\0")),
        AT + 8,
        "node path of 30 bytes runs past",
    ),
    (
        "node path without NUL",
        bad(record(5, struct.pack("<IIHHHH", 0, 0, 2, 0, 0, 1) + b"n\0\0\0/a")),
        AT + 20,
        "node path is not one",
    ),
    (
        "node value past the record",
        bad(record(5, struct.pack("<IIHHHH", 0, 0, 2, 9, 0, 1) + b"n\0\0\0/\0")),
        AT + 10,
        "value of / (9 bytes) runs past",
    ),
    (
        "committed node without perms",
        bad(record(5, node_body(b"/x", perms=b""))),
        AT + 14,
        "committed node /x has no permissions",
    ),
    (
        "node of an unknown transaction",
        bad(record(2, ring_body()), record(5, node_body(b"/x", conn_id=1, tx_id=4))),
        AT + 32,
        "node /x of transaction 4 of connection 1",
    ),
    ("short quota", bad(record(6, b"\1", length=1)), 16, "shorter than its 4-byte"),
    (
        "quota values past the record",
        bad(record(6, struct.pack("<HHI", 1, 1, 5))),
        AT + 4,
        "2 quota values run past",
    ),
    (
        "quota name without NUL",
        bad(record(6, struct.pack("<HHII", 1, 1, 5, 6) + b"a\0bbbbbb", length=16)),
        AT + 14,
        "quota name without its NUL",
    ),
    ("short domain", bad(record(7, bytes(4), length=4)), 16, "shorter than its 8-byte"),
    (
        "domain quota name without NUL",
        bad(record(7, struct.pack("<HHII", 1, 1, 0, 6) + b"nodes", length=12)),
        AT + 12,
        "quota name without its NUL",
    ),
]


@pytest.mark.parametrize(
    ("data", "offset", "reason"),
    [case[1:] for case in DECODE_ERRORS],
    ids=[case[0] for case in DECODE_ERRORS],
)
def test_decode_error(data: bytes, offset: int, reason: str) -> None:
    with pytest.raises(StateStreamError) as caught:
        decode_state(data)
    assert caught.value.offset == offset
    assert reason in caught.value.reason
    assert str(caught.value) == f"at byte {offset}: {caught.value.reason}"
    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value, XenstoreError)


# -- encoder refusals -------------------------------------------------------------

RING = ConnectionData(1, ConnType.RING)


@pytest.mark.parametrize(
    ("records", "version", "message"),
    [
        ([], 0, "version 0"),
        ([], 3, "version 3"),
        ([RING, WatchData(1, "/a", "t", 1)], 1, "version 2 stream"),
        ([RING, WatchData(1, "/a", "t", 0x10000)], 2, "WatchData"),
        ([RING, WatchData(1, "/a\0b", "t")], 1, "contains a NUL"),
        ([RING, WatchData(1, "/a", "t\0")], 1, "contains a NUL"),
        ([RING, WatchData(1, "/a", "\u20ac")], 1, "not Latin-1"),
        ([RING, WatchData(1, "/" + "a" * 0xFFFF, "t")], 1, "more than a u16"),
        ([NodeData("/a", bytes(0x10000), (Perm(N, 0),))], 1, "more than a u16"),
        ([NodeData("/a", b"", ())], 1, "no permissions"),
        ([NodeData("/a", b"", (Perm(Access.OWNER, 0),))], 1, "no permission letter"),
        ([NodeData("/a", b"", (Perm(N, 0x10000),))], 1, "NodeData"),
        ([NodeData("/a", b"", (Perm(N, 0),), access=4)], 1, "access bits"),
        ([ConnectionData(0, ConnType.RING)], 1, "connection id 0"),
        ([ConnectionData(1, ConnType.RING, in_data=bytes(0x10000))], 1, "u16"),
        ([ConnectionData(1, ConnType.RING, domid=-1)], 1, "ConnectionData"),
        ([ConnectionData(1, ConnType.SOCKET, out_resp_len=1)], 1, "partial response"),
        ([ConnectionData(1, 7)], 1, "7"),  # type: ignore[arg-type]
        ([ConnectionData(1, ConnType.RING, unique_id=2**64)], 1, "ConnectionData"),
        ([GlobalData(2**31, 0)], 1, "GlobalData"),
        ([GlobalQuotaData((("a\0", 1),))], 1, "contains a NUL"),
        ([DomainData(1, 0, (("nodes", -1),))], 1, "DomainData"),
        ([DomainData(0x10000)], 1, "DomainData"),
    ],
)
def test_encoder_refuses(
    records: list[StateRecord], version: int, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        encode_state(records, version)


def test_encoder_refuses_a_non_record() -> None:
    with pytest.raises(TypeError):
        encode_state([object()])  # type: ignore[list-item]


# -- describe_state ---------------------------------------------------------------


def test_describe_the_c_stream() -> None:
    lines = describe_state(decode_state(C_417))
    assert lines[:7] == [
        "xenstore state stream, version 1, little-endian, 15 records",
        "@16 global: socket fd 3, event channel fd 6",
        "@32 connection 1: ring dom0 (target none), port 2, in 0 bytes, "
        "out 0 bytes (partial response 0)",
        "@64 connection 2: socket fd 7, in 0 bytes, out 0 bytes (partial response 0)",
        "@96 watch conn 2: '/a' token 'tok1'",
        "@120 watch conn 2: 'rel/x' token 't\\x02'",
        "@152 connection 3: socket fd 8, in 0 bytes, out 19 bytes (partial response 0)",
    ]
    assert lines[7] == "@208 node @releaseDomain = '' (n0)"
    assert lines[-1] == "@544 node /b = 'x\\x01y' (b0,r3,w7!,n2!)"


def test_describe_every_kind_by_hand() -> None:
    records: tuple[StateRecord, ...] = (
        GlobalData(-1, 5),
        GlobalQuotaData((("nodes", 1000), ("watches", 128)), ()),
        ConnectionData(
            1,
            ConnType.RING,
            4,
            2,
            9,
            in_data=b"ab",
            out_data=b"xyz",
            out_resp_len=2,
            unique_id=255,
        ),
        WatchData(1, "/a", "it's", DEPTH_UNLIMITED),
        WatchData(1, "/a", "t", 2),
        TransactionData(1, 6),
        NodeData("/long", bytes(range(40)), (Perm(R, 1),)),
        NodeData("/p", b"\\\n", (Perm(W, 0),), 1, 6, 3),
        NodeData("/d", b"", (), 1, 6, 0),
        DomainData(4, 1, (("nodes", 3),)),
        DomainData(5),
    )
    assert describe_state(StateStream(2, records, True)) == [
        "xenstore state stream, version 2, big-endian, 11 records",
        "#1 global: socket fd none, event channel fd 5",
        "#2 quota: per-domain nodes=1000 watches=128; global none",
        "#3 connection 1: ring dom4 (target dom2), port 9, in 2 bytes, "
        "out 3 bytes (partial response 2), unique id 0xff",
        "#4 watch conn 1: '/a' token 'it\\'s' depth unlimited",
        "#5 watch conn 1: '/a' token 't' depth 2",
        "#6 transaction conn 1: id 6",
        "#7 node /long = '\\x00\\x01\\x02\\x03\\x04\\x05\\x06\\x07\\x08\\t\\n"
        "\\x0b\\x0c\\r\\x0e\\x0f'... (r1)",
        "#8 node /p = '\\\\\\n' (w0) [conn 1 tx 6: read and written]",
        "#9 node /d = '' () [conn 1 tx 6: deleted]",
        "#10 domain 4: features 0x1, quotas nodes=3",
        "#11 domain 5: features 0x0, quotas none",
    ]


def test_record_types_are_numbered_as_the_document() -> None:
    assert [(t.name, t.value) for t in RecordType] == [
        ("END", 0),
        ("GLOBAL", 1),
        ("CONNECTION", 2),
        ("WATCH", 3),
        ("TRANSACTION", 4),
        ("NODE", 5),
        ("GLOBAL_QUOTA", 6),
        ("DOMAIN", 7),
        ("WATCH_EXTENDED", 8),
    ]


def test_describe_refuses_a_non_record() -> None:
    with pytest.raises(TypeError):
        describe_state(StateStream(1, (object(),)))  # type: ignore[arg-type]
