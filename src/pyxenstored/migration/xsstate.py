"""The xenstore state stream of live update (MIGRATION.md b.2-b.5).

A 16-byte big-endian header (ident ``xenstore``, version 1 or 2, flags
whose bit 0 gives the byte order of everything after it), then records:
``type`` and ``len`` (u32 each), the body, zero padding to a multiple of
8.  The last record is END; bytes after it are ignored.

The "interop trap" of b.3: C's writer stores ``len`` already rounded up to
8 and its reader consumes exactly ``len`` bytes.  So :func:`encode_state`
stores the rounded length (C and a spec-literal reader then agree), and
:func:`decode_state` always advances by ``len`` rounded up to 8.  Body
parsers find where variable data ends from the inner length fields only.
With both rules the encoder reproduces C's streams byte for byte.

WATCH_DATA_EXTENDED follows the document (depth at 8, strings at 12), not
C 4.22, whose writer and reader disagree with it (b.5).

:func:`decode_state` checks the whole stream before returning, so a caller
applies nothing from a bad one.  Besides the layout it checks what the
ordering rule of b.3 makes checkable from the stream alone: a watch or
transaction names an earlier connection, a pending node an earlier
transaction, and connection ids are unique.  Errors are
:class:`StateStreamError`, naming the byte offset and the reason.

:func:`describe_state` prints one line per record, prefixed by its offset
(``@16``).  Values, watch paths and tokens are quoted with backslash
escapes for anything unprintable and cut after about 60 characters
(``'abc'...``).  Permissions read as on the wire, ``n0,r5``; a stale
entry (flags bit 0) carries a ``!``: ``r7!``.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from pyxenstored.errors import XenstoreError
from pyxenstored.perms import DOMID_INVALID, Access, Perm
from pyxenstored.wire.payload import ENCODING

__all__ = [
    "DEPTH_UNLIMITED",
    "DOMID_INVALID",
    "XS_STATE_IDENT",
    "ConnType",
    "ConnectionData",
    "DomainData",
    "GlobalData",
    "GlobalQuotaData",
    "NodeData",
    "RecordType",
    "StateRecord",
    "StateStream",
    "StateStreamError",
    "TransactionData",
    "WatchData",
    "decode_state",
    "describe_state",
    "encode_state",
]

XS_STATE_IDENT = b"xenstore"
#: WATCH_DATA_EXTENDED ``depth`` meaning "no limit".
DEPTH_UNLIMITED = 0xFFFF
_VERSIONS = (1, 2)
_BIG_ENDIAN = 1


class RecordType(IntEnum):
    """Record types (b.3); WATCH_EXTENDED only in version 2."""

    END = 0
    GLOBAL = 1
    CONNECTION = 2
    WATCH = 3
    TRANSACTION = 4
    NODE = 5
    GLOBAL_QUOTA = 6
    DOMAIN = 7
    WATCH_EXTENDED = 8


#: The names the document gives the record types, for messages.
_SPEC_NAME = {
    t: "WATCH_DATA_EXTENDED" if t is RecordType.WATCH_EXTENDED else f"{t.name}_DATA"
    for t in RecordType
}


class ConnType(IntEnum):
    """CONNECTION_DATA ``conn-type``."""

    RING = 0
    SOCKET = 1


@dataclass(frozen=True, slots=True)
class GlobalData:
    """The daemon's descriptors (int32, -1 = none), inherited across exec."""

    socket_fd: int
    evtchn_fd: int


@dataclass(frozen=True, slots=True)
class ConnectionData:
    """One connection; ring-only fields are ignored for a socket and back."""

    conn_id: int
    conn_type: ConnType
    domid: int = 0
    #: SET_TARGET target, DOMID_INVALID if none.
    tdomid: int = DOMID_INVALID
    #: The daemon's local event-channel port.
    evtchn: int = 0
    socket_fd: int = -1
    #: Read but not processed: parked requests, then the partial one.
    in_data: bytes = b""
    #: Queued for output, the partially written response first.
    out_data: bytes = b""
    #: Length of that partial response (0: none).
    out_resp_len: int = 0
    #: Written iff not None (``fields`` bit 0).
    unique_id: int | None = None


@dataclass(frozen=True, slots=True)
class WatchData:
    """A watch; ``depth`` None is WATCH_DATA, else WATCH_DATA_EXTENDED (v2)."""

    conn_id: int
    path: str
    token: str
    #: As on the wire: :data:`DEPTH_UNLIMITED` stays 0xFFFF.
    depth: int | None = None


@dataclass(frozen=True, slots=True)
class TransactionData:
    conn_id: int
    tx_id: int


@dataclass(frozen=True, slots=True)
class NodeData:
    """A committed node (``conn_id`` 0) or one of a pending transaction."""

    path: str
    value: bytes
    perms: tuple[Perm, ...]
    conn_id: int = 0
    tx_id: int = 0
    #: Pending nodes: bit 0 read, bit 1 written, 0 deleted.
    access: int = 0


@dataclass(frozen=True, slots=True)
class GlobalQuotaData:
    """Quota values by name, 0 = unlimited."""

    #: Per-domain defaults.
    domain_quotas: tuple[tuple[str, int], ...]
    #: Global only.
    global_quotas: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True, slots=True)
class DomainData:
    """One domain; ``features`` is carried by version 2 only (0 in v1)."""

    domid: int
    features: int = 0
    quotas: tuple[tuple[str, int], ...] = ()


StateRecord = (
    GlobalData
    | ConnectionData
    | WatchData
    | TransactionData
    | NodeData
    | GlobalQuotaData
    | DomainData
)


@dataclass(frozen=True, slots=True)
class StateStream:
    version: int
    #: Every record but END, in stream order.
    records: tuple[StateRecord, ...]
    big_endian: bool = False
    #: Byte offset of each record's header in the decoded data (same length
    #: as ``records``; empty when built by hand).
    offsets: tuple[int, ...] = ()


class StateStreamError(XenstoreError, ValueError):
    """A stream that cannot be accepted; names where and why."""

    def __init__(self, offset: int, reason: str) -> None:
        super().__init__(f"at byte {offset}: {reason}")
        self.offset = offset
        self.reason = reason


#: ident, version, flags: always big-endian.
_HEADER = struct.Struct(">8sII")


class _Layout:
    """Every record struct of b.5, in one byte order."""

    def __init__(self, order: str) -> None:
        self.order = order
        self.record = struct.Struct(order + "II")  # type, len
        self.global_ = struct.Struct(order + "ii")  # rw-socket-fd, evtchn-fd
        # conn-id, conn-type, fields, conn-spec (8 bytes, one of the next
        # two), in-data-len, out-resp-len, out-data-len
        self.connection = struct.Struct(order + "IHH8sHHI")
        self.ring = struct.Struct(order + "HHI")  # domid, tdomid, evtchn
        self.socket = struct.Struct(order + "i4x")  # socket-fd, pad
        self.unique_id = struct.Struct(order + "Q")
        self.watch = struct.Struct(order + "IHH")  # conn-id, wpath-len, token-len
        self.watch_ext = struct.Struct(order + "IHHH2x")  # the same, depth, pad
        self.transaction = struct.Struct(order + "II")  # conn-id, tx-id
        # conn-id, tx-id, path-len, value-len, access, perm-count
        self.node = struct.Struct(order + "IIHHHH")
        self.perm = struct.Struct(order + "BBH")  # letter, flags, domid
        self.quota = struct.Struct(order + "HH")  # n-dom-quota, n-glob-quota
        self.domain = struct.Struct(order + "HHI")  # domain-id, n-quota, features
        #: Permission lists already parsed, by their bytes (bounded).
        self.perm_lists: dict[bytes, tuple[Perm, ...]] = {}

    def values(self, count: int) -> struct.Struct:
        """``count`` u32 quota values."""
        return struct.Struct(f"{self.order}{count}I")


_LAYOUTS = {False: _Layout("<"), True: _Layout(">")}

_LETTERS = {"n": Access.NONE, "r": Access.READ, "w": Access.WRITE, "b": Access.BOTH}
_LETTER_OF = {access: letter for letter, access in _LETTERS.items()}
_PERM_STALE = 1
_UNIQUE_ID_PRESENT = 1
_ACCESS_BITS = 3


def _round_up(length: int) -> int:
    return (length + 7) & ~7


# -- encoding ------------------------------------------------------------------


def _text(value: str, what: str) -> bytes:
    """``value`` and its NUL, refusing what the stream cannot carry."""
    try:
        raw = value.encode(ENCODING)
    except UnicodeEncodeError:
        raise ValueError(f"{what} {value!r} is not Latin-1") from None
    if b"\0" in raw:
        raise ValueError(f"{what} {value!r} contains a NUL")
    return raw + b"\0"


def _u16_length(data: bytes, what: str) -> int:
    if len(data) > 0xFFFF:
        raise ValueError(f"{what} is {len(data)} bytes, more than a u16 holds")
    return len(data)


def _encode_connection(r: ConnectionData, lay: _Layout) -> bytes:
    conn_type = ConnType(r.conn_type)
    if r.conn_id == 0:
        raise ValueError("connection id 0 is reserved for committed nodes")
    if r.out_resp_len > len(r.out_data):
        raise ValueError(
            f"partial response of {r.out_resp_len} bytes is longer than the "
            f"{len(r.out_data)} bytes of output"
        )
    if conn_type is ConnType.RING:
        spec = lay.ring.pack(r.domid, r.tdomid, r.evtchn)
    else:
        spec = lay.socket.pack(r.socket_fd)
    fields = 0 if r.unique_id is None else _UNIQUE_ID_PRESENT
    in_len = _u16_length(r.in_data, "input data")
    fixed = lay.connection.pack(
        r.conn_id, conn_type, fields, spec, in_len, r.out_resp_len, len(r.out_data)
    )
    body = fixed + r.in_data + r.out_data
    if r.unique_id is None:
        return body
    # The unique id is 8-byte aligned within the body.
    return body.ljust(_round_up(len(body)), b"\0") + lay.unique_id.pack(r.unique_id)


def _encode_watch(r: WatchData, version: int, lay: _Layout) -> tuple[int, bytes]:
    path, token = _text(r.path, "watch path"), _text(r.token, "watch token")
    lengths = (_u16_length(path, "watch path"), _u16_length(token, "watch token"))
    if r.depth is None:
        return RecordType.WATCH, lay.watch.pack(r.conn_id, *lengths) + path + token
    if version < 2:
        raise ValueError("a watch with a depth needs a version 2 stream")
    fixed = lay.watch_ext.pack(r.conn_id, *lengths, r.depth)
    return RecordType.WATCH_EXTENDED, fixed + path + token


def _encode_node(r: NodeData, lay: _Layout) -> bytes:
    path = _text(r.path, "node path")
    if r.access & ~_ACCESS_BITS:
        raise ValueError(f"node {r.path!r}: unknown access bits {r.access:#x}")
    if r.conn_id == 0 and not r.perms:
        raise ValueError(f"committed node {r.path!r} has no permissions")
    perms = []
    for perm in r.perms:
        letter = _LETTER_OF.get(perm.access)
        if letter is None:
            raise ValueError(f"node {r.path!r}: no permission letter for {perm!r}")
        flags = _PERM_STALE if perm.stale else 0
        perms.append(lay.perm.pack(ord(letter), flags, perm.domid))
    fixed = lay.node.pack(
        r.conn_id,
        r.tx_id,
        _u16_length(path, "node path"),
        _u16_length(r.value, f"value of {r.path!r}"),
        r.access,
        len(r.perms),
    )
    return fixed + b"".join(perms) + path + r.value


def _encode_quotas(
    quotas: Iterable[tuple[str, int]], lay: _Layout
) -> tuple[bytes, bytes]:
    """The values and the names parts of a quota list."""
    pairs = tuple(quotas)
    values = lay.values(len(pairs)).pack(*(value for _, value in pairs))
    return values, b"".join(_text(name, "quota name") for name, _ in pairs)


def _encode_body(record: StateRecord, version: int, lay: _Layout) -> tuple[int, bytes]:
    match record:
        case GlobalData():
            body = lay.global_.pack(record.socket_fd, record.evtchn_fd)
            return RecordType.GLOBAL, body
        case ConnectionData():
            return RecordType.CONNECTION, _encode_connection(record, lay)
        case WatchData():
            return _encode_watch(record, version, lay)
        case TransactionData():
            body = lay.transaction.pack(record.conn_id, record.tx_id)
            return RecordType.TRANSACTION, body
        case NodeData():
            return RecordType.NODE, _encode_node(record, lay)
        case GlobalQuotaData():
            counts = (len(record.domain_quotas), len(record.global_quotas))
            values, names = _encode_quotas(
                record.domain_quotas + record.global_quotas, lay
            )
            return RecordType.GLOBAL_QUOTA, lay.quota.pack(*counts) + values + names
        case DomainData():
            # b.3: a field not valid in the stream's version is written as 0.
            features = record.features if version >= 2 else 0
            values, names = _encode_quotas(record.quotas, lay)
            fixed = lay.domain.pack(record.domid, len(record.quotas), features)
            return RecordType.DOMAIN, fixed + values + names
    raise TypeError(f"not a state record: {record!r}")


def encode_state(
    records: Iterable[StateRecord], version: int = 1, *, big_endian: bool = False
) -> bytes:
    """The whole stream: header, ``records`` in order, END.

    Each ``len`` is stored rounded up to 8, as C writes it (b.3).

    Raises:
        ValueError: a version other than 1 or 2, or a record the format
            cannot carry (a value out of its field's range, a string with a
            NUL or longer than 65534 bytes, a depth in a version 1 stream).
    """
    if version not in _VERSIONS:
        raise ValueError(f"xenstore state stream version {version} is not 1 or 2")
    lay = _LAYOUTS[big_endian]
    parts = [_HEADER.pack(XS_STATE_IDENT, version, _BIG_ENDIAN if big_endian else 0)]
    for record in records:
        try:
            rtype, body = _encode_body(record, version, lay)
        except struct.error as error:
            raise ValueError(f"{record!r}: {error}") from None
        padded = _round_up(len(body))
        parts.append(lay.record.pack(rtype, padded) + body.ljust(padded, b"\0"))
    parts.append(lay.record.pack(RecordType.END, 0))
    return b"".join(parts)


# -- decoding ------------------------------------------------------------------


def _fixed(body: bytes, at: int, fmt: struct.Struct, rtype: int) -> tuple[Any, ...]:
    """The fixed part of a body that starts at byte ``at`` of the stream."""
    if len(body) < fmt.size:
        raise StateStreamError(
            at - 8,
            f"{_SPEC_NAME[RecordType(rtype)]} of {len(body)} bytes is shorter "
            f"than its {fmt.size}-byte fixed part",
        )
    return fmt.unpack_from(body)


def _string(
    body: bytes, start: int, length: int, at: int, field_at: int, what: str
) -> tuple[str, int]:
    """The NUL-terminated string of ``length`` bytes at ``body[start:]``.

    ``field_at`` is the offset of its length field, blamed for an overrun.
    """
    end = start + length
    if end > len(body):
        raise StateStreamError(
            field_at, f"{what} of {length} bytes runs past the end of its record"
        )
    if length == 0 or body.find(0, start, end) != end - 1:
        raise StateStreamError(at + start, f"{what} is not one NUL-terminated string")
    return body[start : end - 1].decode(ENCODING), end


def _decode_connection(body: bytes, at: int, lay: _Layout) -> ConnectionData:
    fixed = _fixed(body, at, lay.connection, RecordType.CONNECTION)
    conn_id, conn_type, fields, spec, in_len, out_resp_len, out_len = fixed
    if conn_id == 0:
        raise StateStreamError(at, "connection id 0")
    if conn_type not in ConnType._value2member_map_:
        raise StateStreamError(at + 4, f"unknown connection type {conn_type}")
    if fields & ~_UNIQUE_ID_PRESENT:
        raise StateStreamError(at + 6, f"unknown connection fields {fields:#x}")
    start = lay.connection.size
    end = start + in_len + out_len
    if end > len(body):
        raise StateStreamError(
            at + 16, f"{in_len + out_len} bytes of data run past the end of the record"
        )
    if out_resp_len > out_len:
        raise StateStreamError(
            at + 18,
            f"partial response of {out_resp_len} bytes is longer than the "
            f"{out_len} bytes of output",
        )
    unique_id = None
    if fields & _UNIQUE_ID_PRESENT:
        pos = _round_up(end)
        if pos + lay.unique_id.size > len(body):
            raise StateStreamError(
                at + pos, "unique id runs past the end of the record"
            )
        (unique_id,) = lay.unique_id.unpack_from(body, pos)
    in_data, out_data = body[start : start + in_len], body[start + in_len : end]
    if conn_type == ConnType.RING:
        domid, tdomid, evtchn = lay.ring.unpack(spec)
        socket_fd = -1
    else:
        domid, tdomid, evtchn = 0, DOMID_INVALID, 0
        (socket_fd,) = lay.socket.unpack(spec)
    return ConnectionData(
        conn_id,
        ConnType(conn_type),
        domid,
        tdomid,
        evtchn,
        socket_fd,
        in_data,
        out_data,
        out_resp_len,
        unique_id,
    )


def _decode_watch(body: bytes, at: int, lay: _Layout, rtype: int) -> WatchData:
    depth: int | None = None
    if rtype == RecordType.WATCH:
        conn_id, path_len, token_len = _fixed(body, at, lay.watch, rtype)
        start = lay.watch.size
    else:
        conn_id, path_len, token_len, depth = _fixed(body, at, lay.watch_ext, rtype)
        start = lay.watch_ext.size
    path, start = _string(body, start, path_len, at, at + 4, "watch path")
    token, _ = _string(body, start, token_len, at, at + 6, "watch token")
    return WatchData(conn_id, path, token, depth)


def _decode_node(body: bytes, at: int, lay: _Layout) -> NodeData:
    fixed = _fixed(body, at, lay.node, RecordType.NODE)
    conn_id, tx_id, path_len, value_len, access, count = fixed
    if access & ~_ACCESS_BITS:
        raise StateStreamError(at + 12, f"unknown node access bits {access:#x}")
    start = lay.node.size
    end = start + count * lay.perm.size
    if end > len(body):
        raise StateStreamError(
            at + 14, f"{count} permissions run past the end of the record"
        )
    # Most nodes share a few permission lists: each distinct list of bytes
    # is parsed once (then a node costs a dict lookup); lists are immutable,
    # so they are kept across streams, up to _PERM_LISTS_KEPT of them.
    raw = body[start:end]
    perms = lay.perm_lists.get(raw)
    if perms is None:
        perms = _decode_perms(body, at, start, end, lay)
        if len(lay.perm_lists) < _PERM_LISTS_KEPT:
            lay.perm_lists[raw] = perms
    start = end
    path, start = _string(body, start, path_len, at, at + 8, "node path")
    if start + value_len > len(body):
        raise StateStreamError(
            at + 10,
            f"value of {path} ({value_len} bytes) runs past the end of the record",
        )
    if conn_id == 0 and not perms:
        raise StateStreamError(at + 14, f"committed node {path} has no permissions")
    value = body[start : start + value_len]
    return NodeData(path, value, perms, conn_id, tx_id, access)


#: Distinct permission lists remembered (bounded memory).
_PERM_LISTS_KEPT = 4096


def _decode_perms(
    body: bytes, at: int, start: int, end: int, lay: _Layout
) -> tuple[Perm, ...]:
    perms = []
    for pos in range(start, end, lay.perm.size):
        letter, flags, domid = lay.perm.unpack_from(body, pos)
        access_of = _LETTERS.get(chr(letter))
        if access_of is None:
            raise StateStreamError(at + pos, f"unknown permission {chr(letter)!r}")
        if flags & ~_PERM_STALE:
            raise StateStreamError(at + pos + 1, f"unknown permission flags {flags:#x}")
        perms.append(Perm(access_of, domid, bool(flags & _PERM_STALE)))
    return tuple(perms)


def _decode_quotas(
    body: bytes, at: int, start: int, count: int, lay: _Layout
) -> tuple[tuple[str, int], ...]:
    """``count`` values at ``body[start:]``, then as many NUL-terminated names."""
    fmt = lay.values(count)
    if start + fmt.size > len(body):
        raise StateStreamError(
            at + start, f"{count} quota values run past the end of the record"
        )
    values = fmt.unpack_from(body, start)
    pos = start + fmt.size
    names = []
    for _ in range(count):
        nul = body.find(0, pos)
        if nul < 0:
            raise StateStreamError(at + pos, "quota name without its NUL")
        names.append(body[pos:nul].decode(ENCODING))
        pos = nul + 1
    return tuple(zip(names, values, strict=True))


def _decode_body(
    rtype: int, body: bytes, at: int, version: int, lay: _Layout
) -> StateRecord:
    if rtype == RecordType.GLOBAL:
        return GlobalData(*_fixed(body, at, lay.global_, rtype))
    if rtype == RecordType.CONNECTION:
        return _decode_connection(body, at, lay)
    if rtype in (RecordType.WATCH, RecordType.WATCH_EXTENDED):
        return _decode_watch(body, at, lay, rtype)
    if rtype == RecordType.TRANSACTION:
        return TransactionData(*_fixed(body, at, lay.transaction, rtype))
    if rtype == RecordType.NODE:
        return _decode_node(body, at, lay)
    if rtype == RecordType.GLOBAL_QUOTA:
        n_dom, n_glob = _fixed(body, at, lay.quota, rtype)
        quotas = _decode_quotas(body, at, lay.quota.size, n_dom + n_glob, lay)
        return GlobalQuotaData(quotas[:n_dom], quotas[n_dom:])
    domid, count, features = _fixed(body, at, lay.domain, rtype)
    quotas = _decode_quotas(body, at, lay.domain.size, count, lay)
    # b.3: a field not valid in the stream's version is ignored on read.
    return DomainData(domid, features if version >= 2 else 0, quotas)


class _References:
    """The ordering rule of b.3, for the references a stream holds."""

    def __init__(self) -> None:
        self.connections: set[int] = set()
        self.transactions: set[tuple[int, int]] = set()

    def check(self, record: StateRecord, at: int) -> None:
        """Record ``record``, whose body starts at byte ``at``."""
        match record:
            case ConnectionData(conn_id=conn_id):
                if conn_id in self.connections:
                    raise StateStreamError(at, f"connection {conn_id} appears twice")
                self.connections.add(conn_id)
            case WatchData(conn_id=conn_id) | TransactionData(conn_id=conn_id):
                if conn_id not in self.connections:
                    kind = "watch" if isinstance(record, WatchData) else "transaction"
                    raise StateStreamError(
                        at,
                        f"{kind} of connection {conn_id}, "
                        "which no earlier record declares",
                    )
                if isinstance(record, TransactionData):
                    self.transactions.add((conn_id, record.tx_id))
            case NodeData(conn_id=conn_id, tx_id=tx_id) if conn_id:
                if (conn_id, tx_id) not in self.transactions:
                    raise StateStreamError(
                        at,
                        f"node {record.path} of transaction {tx_id} of connection "
                        f"{conn_id}, which no earlier record declares",
                    )


def decode_state(data: bytes | memoryview) -> StateStream:
    """Parse and validate a whole stream (see the module docstring).

    Raises:
        StateStreamError: anything the stream's layout or ordering breaks,
            or a missing END record.
    """
    data = bytes(data)
    if len(data) < _HEADER.size:
        raise StateStreamError(0, f"{len(data)} bytes, shorter than the header")
    ident, version, flags = _HEADER.unpack_from(data)
    if ident != XS_STATE_IDENT:
        raise StateStreamError(0, f"ident {ident!r}, not {XS_STATE_IDENT!r}")
    if version not in _VERSIONS:
        raise StateStreamError(8, f"unsupported version {version}")
    if flags & ~_BIG_ENDIAN:
        raise StateStreamError(12, f"unknown flags {flags:#x}")
    big_endian = bool(flags & _BIG_ENDIAN)
    lay = _LAYOUTS[big_endian]
    records: list[StateRecord] = []
    offsets: list[int] = []
    references = _References()
    offset = _HEADER.size
    while True:
        if offset == len(data):
            raise StateStreamError(offset, "no END record")
        if offset + lay.record.size > len(data):
            raise StateStreamError(offset, "truncated record header")
        rtype, length = lay.record.unpack_from(data, offset)
        if rtype == RecordType.END:
            return StateStream(version, tuple(records), big_endian, tuple(offsets))
        if rtype not in RecordType._value2member_map_:
            raise StateStreamError(offset, f"unknown record type {rtype:#x}")
        if rtype == RecordType.WATCH_EXTENDED and version < 2:
            raise StateStreamError(offset, "WATCH_DATA_EXTENDED in a version 1 stream")
        at = offset + lay.record.size
        after = at + _round_up(length)
        if after > len(data):
            raise StateStreamError(
                offset,
                f"{_SPEC_NAME[RecordType(rtype)]} of {length} bytes runs past "
                "the end of the data",
            )
        record = _decode_body(rtype, data[at : at + length], at, version, lay)
        references.check(record, at)
        records.append(record)
        offsets.append(offset)
        offset = after


# -- description ---------------------------------------------------------------


def _escape(code: int) -> str:
    if code in (0x27, 0x5C):  # ' and \
        return "\\" + chr(code)
    if 0x20 <= code <= 0x7E:
        return chr(code)
    return {0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r"}.get(code, f"\\x{code:02x}")


_ESCAPES = [_escape(code) for code in range(256)]
_SHOWN = 60


def _quote(text: str | bytes) -> str:
    """``text`` quoted and escaped, cut after about 60 characters."""
    if isinstance(text, bytes):
        text = text.decode(ENCODING)
    pieces: list[str] = []
    size = 0
    for char in text:
        piece = _ESCAPES[ord(char)] if ord(char) < 256 else char
        if size + len(piece) > _SHOWN:
            return "'" + "".join(pieces) + "'..."
        pieces.append(piece)
        size += len(piece)
    return "'" + "".join(pieces) + "'"


def _plain(text: str) -> str:
    """A node path, escaped but not quoted nor cut."""
    return "".join(_ESCAPES[ord(c)] if ord(c) < 256 else c for c in text)


def _fd(fd: int) -> str:
    return "none" if fd < 0 else str(fd)


def _quota_list(quotas: tuple[tuple[str, int], ...]) -> str:
    return " ".join(f"{_plain(name)}={value}" for name, value in quotas) or "none"


def _perm_list(perms: tuple[Perm, ...]) -> str:
    return ",".join(
        f"{_LETTER_OF.get(p.access, '?')}{p.domid}{'!' if p.stale else ''}"
        for p in perms
    )


_ACCESS_WORDS = ("deleted", "read", "written", "read and written")


def _describe_connection(r: ConnectionData) -> str:
    if r.conn_type == ConnType.RING:
        target = "none" if r.tdomid == DOMID_INVALID else f"dom{r.tdomid}"
        where = f"ring dom{r.domid} (target {target}), port {r.evtchn}"
    else:
        where = f"socket fd {r.socket_fd}"
    text = (
        f"connection {r.conn_id}: {where}, in {len(r.in_data)} bytes, "
        f"out {len(r.out_data)} bytes (partial response {r.out_resp_len})"
    )
    return text if r.unique_id is None else f"{text}, unique id {r.unique_id:#x}"


def _describe(record: StateRecord) -> str:
    match record:
        case GlobalData():
            return (
                f"global: socket fd {_fd(record.socket_fd)}, "
                f"event channel fd {_fd(record.evtchn_fd)}"
            )
        case ConnectionData():
            return _describe_connection(record)
        case WatchData():
            text = (
                f"watch conn {record.conn_id}: {_quote(record.path)} "
                f"token {_quote(record.token)}"
            )
            if record.depth is None:
                return text
            depth = "unlimited" if record.depth == DEPTH_UNLIMITED else record.depth
            return f"{text} depth {depth}"
        case TransactionData():
            return f"transaction conn {record.conn_id}: id {record.tx_id}"
        case NodeData():
            text = (
                f"node {_plain(record.path)} = {_quote(record.value)} "
                f"({_perm_list(record.perms)})"
            )
            if not record.conn_id:
                return text
            access = _ACCESS_WORDS[record.access & _ACCESS_BITS]
            return f"{text} [conn {record.conn_id} tx {record.tx_id}: {access}]"
        case GlobalQuotaData():
            return (
                f"quota: per-domain {_quota_list(record.domain_quotas)}; "
                f"global {_quota_list(record.global_quotas)}"
            )
        case DomainData():
            return (
                f"domain {record.domid}: features {record.features:#x}, "
                f"quotas {_quota_list(record.quotas)}"
            )
    raise TypeError(f"not a state record: {record!r}")


def describe_state(stream: StateStream) -> list[str]:
    """One readable line for the stream, then one per record.

    A record line starts with its offset (``@16``), or with its number
    (``#1``) for a stream built by hand.
    """
    order = "big-endian" if stream.big_endian else "little-endian"
    count = len(stream.records)
    lines = [
        f"xenstore state stream, version {stream.version}, {order}, "
        f"{count} record{'' if count == 1 else 's'}"
    ]
    known = len(stream.offsets) == count
    for index, record in enumerate(stream.records):
        where = f"@{stream.offsets[index]}" if known else f"#{index + 1}"
        lines.append(f"{where} {_describe(record)}")
    return lines
