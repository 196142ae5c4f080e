"""The libxl migration stream, version 2 (MIGRATION.md a.1).

A 16-byte big-endian header (``LibxlFmt``, version 2, options), then
records: ``type`` and ``body_length`` (u32 each, in the byte order chosen
by options bit 0), the body, and zero padding to a multiple of 8.  A
LIBXC_CONTEXT record is followed by a whole libxc image (its own header,
records and END), which is walked only to find where libxl records resume
and is otherwise carried as opaque bytes, so every record this code does
not understand passes through intact.

Decoding never raises anything but :class:`StreamError`, which names the
byte offset and the reason.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import IntEnum

from pyxenstored.errors import XenstoreError

__all__ = [
    "LIBXL_IDENT",
    "LibxcImage",
    "Record",
    "RecordType",
    "Stream",
    "StreamError",
    "decode_stream",
    "describe",
    "encode_stream",
]

#: "LibxlFmt"
LIBXL_IDENT = 0x4C6962786C466D74
LIBXL_VERSION = 2
_OPT_BIG_ENDIAN = 1
_OPT_LEGACY = 2

#: ``ident, version, options``, always big-endian.
_LIBXL_HEADER = struct.Struct(">QII")
_RECORD = {False: struct.Struct("<II"), True: struct.Struct(">II")}

#: The libxc image: all-ones marker, "XENF", version, options (big-endian).
_LIBXC_HEADER = struct.Struct(">QIIH6x")
_LIBXC_MARKER = 0xFFFFFFFFFFFFFFFF
_LIBXC_ID = 0x58454E46
#: type u32, page_shift u16, reserved u16, xen_major u32, xen_minor u32.
_LIBXC_DOMAIN_HEADER_SIZE = 16


class StreamError(XenstoreError):
    """A stream that cannot be accepted; names where and why."""

    def __init__(self, offset: int, reason: str) -> None:
        super().__init__(f"offset {offset}: {reason}")
        self.offset = offset
        self.reason = reason


class RecordType(IntEnum):
    """libxl record types (``libxl_sr_stream_format.h``) plus the seed's 7."""

    END = 0x00000000
    LIBXC_CONTEXT = 0x00000001
    EMULATOR_XENSTORE_DATA = 0x00000002
    EMULATOR_CONTEXT = 0x00000003
    CHECKPOINT_END = 0x00000004
    CHECKPOINT_STATE = 0x00000005
    #: The seed design's record (MIGRATION.md a.2); mandatory range.
    DOMAIN_XENSTORE_DATA = 0x00000007


_OPTIONAL = 0x80000000


@dataclass(frozen=True, slots=True)
class Record:
    """One libxl record: its type and body (padding removed)."""

    type: int
    body: bytes = b""

    @property
    def name(self) -> str:
        try:
            return RecordType(self.type).name
        except ValueError:
            kind = "optional" if self.type & _OPTIONAL else "mandatory"
            return f"unknown {kind} {self.type:#010x}"


@dataclass(frozen=True, slots=True)
class LibxcImage:
    """The libxc image following LIBXC_CONTEXT, kept byte for byte."""

    raw: bytes
    records: int


@dataclass(slots=True)
class Stream:
    """A decoded libxl stream."""

    big_endian: bool = False
    legacy: bool = False
    items: list[Record | LibxcImage] = field(default_factory=list)

    def records(self, record_type: int) -> list[Record]:
        return [
            r for r in self.items if isinstance(r, Record) and r.type == record_type
        ]


def _pad(length: int) -> int:
    return -length & 7


def encode_record(record: Record, big_endian: bool = False) -> bytes:
    body = record.body
    return (
        _RECORD[big_endian].pack(record.type, len(body)) + body + bytes(_pad(len(body)))
    )


def encode_stream(stream: Stream) -> bytes:
    """The bytes of a stream (header, items in order); END is not added."""
    options = (_OPT_BIG_ENDIAN if stream.big_endian else 0) | (
        _OPT_LEGACY if stream.legacy else 0
    )
    parts = [_LIBXL_HEADER.pack(LIBXL_IDENT, LIBXL_VERSION, options)]
    for item in stream.items:
        if isinstance(item, LibxcImage):
            parts.append(item.raw)
        else:
            parts.append(encode_record(item, stream.big_endian))
    return b"".join(parts)


def _read_record(
    data: bytes, offset: int, big_endian: bool, what: str
) -> tuple[int, bytes, int]:
    """``(type, body, next_offset)`` of the record at ``offset``."""
    fmt = _RECORD[big_endian]
    if offset + fmt.size > len(data):
        raise StreamError(offset, f"truncated {what} record header")
    rtype, length = fmt.unpack_from(data, offset)
    start = offset + fmt.size
    end = start + length
    padded = end + _pad(length)
    if padded > len(data):
        raise StreamError(
            offset, f"truncated {what} record (type {rtype:#x}, {length} bytes)"
        )
    if any(data[end:padded]):
        raise StreamError(end, "non-zero record padding")
    return rtype, data[start:end], padded


def _read_libxc(data: bytes, offset: int) -> tuple[LibxcImage, int]:
    if offset + _LIBXC_HEADER.size > len(data):
        raise StreamError(offset, "truncated libxc image header")
    marker, ident, version, options = _LIBXC_HEADER.unpack_from(data, offset)
    if marker != _LIBXC_MARKER or ident != _LIBXC_ID:
        raise StreamError(offset, "LIBXC_CONTEXT not followed by a libxc image")
    if version not in (2, 3):
        raise StreamError(offset + 12, f"unsupported libxc image version {version}")
    big_endian = bool(options & 1)
    pos = offset + _LIBXC_HEADER.size + _LIBXC_DOMAIN_HEADER_SIZE
    if pos > len(data):
        raise StreamError(offset, "truncated libxc domain header")
    count = 0
    while True:
        rtype, _, pos = _read_record(data, pos, big_endian, "libxc")
        count += 1
        if rtype == 0:
            return LibxcImage(data[offset:pos], count), pos


def decode_stream(data: bytes) -> Stream:
    """Parse and validate a whole libxl v2 stream, which must end with END.

    Raises:
        StreamError: bad magic or version, a truncated record, bad padding,
            an unknown mandatory record type, or a missing END.
    """
    if len(data) < _LIBXL_HEADER.size:
        raise StreamError(0, "truncated stream header")
    ident, version, options = _LIBXL_HEADER.unpack_from(data)
    if ident != LIBXL_IDENT:
        raise StreamError(0, f"bad magic {ident:#018x}, not a libxl stream")
    if version != LIBXL_VERSION:
        raise StreamError(8, f"unsupported libxl stream version {version}")
    if options & ~(_OPT_BIG_ENDIAN | _OPT_LEGACY):
        raise StreamError(12, f"reserved option bits set: {options:#x}")
    stream = Stream(bool(options & _OPT_BIG_ENDIAN), bool(options & _OPT_LEGACY))
    offset = _LIBXL_HEADER.size
    while True:
        if offset == len(data):
            raise StreamError(offset, "stream ends without an END record")
        rtype, body, after = _read_record(data, offset, stream.big_endian, "libxl")
        if rtype not in RecordType._value2member_map_ and not rtype & _OPTIONAL:
            raise StreamError(offset, f"unknown mandatory record type {rtype:#010x}")
        stream.items.append(Record(rtype, body))
        offset = after
        if rtype == RecordType.END:
            if offset != len(data):
                raise StreamError(offset, "data after the END record")
            return stream
        if rtype == RecordType.LIBXC_CONTEXT:
            image, offset = _read_libxc(data, offset)
            stream.items.append(image)


def describe(stream: Stream, details: Iterable[tuple[int, str]] = ()) -> str:
    """A readable listing of a stream, one line per record.

    Args:
        stream: the decoded stream.
        details: optional ``(index, text)`` pairs appended to item lines
            (the CLI passes the decoded xenstore sub-records).
    """
    extra = dict(details)
    order = "big-endian" if stream.big_endian else "little-endian"
    lines = [
        f"libxl migration stream v{LIBXL_VERSION}, {order}"
        + (", legacy" if stream.legacy else "")
    ]
    offset = _LIBXL_HEADER.size
    for index, item in enumerate(stream.items):
        if isinstance(item, LibxcImage):
            size = len(item.raw)
            text = f"libxc image: {item.records} records, {size} bytes"
            lines.append(f"  @{offset:<8} {text}")
            offset += len(item.raw)
            continue
        size = 8 + len(item.body) + _pad(len(item.body))
        line = f"  @{offset:<8} {item.name} ({len(item.body)} bytes)"
        if index in extra:
            line += f" {extra[index]}"
        lines.append(line)
        offset += size
    return "\n".join(lines)
