"""One message: the 16-byte ``struct xsd_sockmsg`` header and its payload.

The header fields are in the host's native byte order, which is
little-endian on every architecture Xen runs on (PROTOCOL.md 1.1); the
format is kept in :data:`HEADER` alone.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from pyxenstored.errors import LocalProtocolError
from pyxenstored.wire.ops import PAYLOAD_MAX, Op

__all__ = ["HEADER", "Packet", "encode_packet", "explain"]

#: ``type, req_id, tx_id, len``: four native (little-endian) u32.
HEADER = struct.Struct("<IIII")


class Packet(NamedTuple):
    """A decoded message.

    ``op`` is a plain ``int`` so that unknown types survive decoding and can
    be answered with ENOSYS; compare it with :class:`Op` members.  A
    NamedTuple rather than a frozen dataclass: packets are made on every
    request and tuple construction is several times cheaper.
    """

    op: int
    req_id: int
    tx_id: int
    payload: bytes


def encode_packet(op: int, req_id: int, tx_id: int, payload: bytes) -> bytes:
    """Frame one message.

    Raises:
        LocalProtocolError: the payload is larger than ``PAYLOAD_MAX``.
    """
    if len(payload) > PAYLOAD_MAX:
        raise LocalProtocolError(
            f"payload of {len(payload)} bytes exceeds {PAYLOAD_MAX}"
        )
    return HEADER.pack(op, req_id, tx_id, len(payload)) + payload


def op_name(op: int) -> str:
    try:
        return Op(op).name
    except ValueError:
        return f"type {op}"


def escape(data: bytes, limit: int = 200) -> str:
    """Printable form of a payload: NUL as ``\\0``, other bytes escaped."""
    out = []
    for b in data[:limit]:
        if b == 0:
            out.append("\\0")
        elif 0x20 <= b < 0x7F and b != 0x5C:
            out.append(chr(b))
        else:
            out.append(f"\\x{b:02x}")
    if len(data) > limit:
        out.append(f"...(+{len(data) - limit} bytes)")
    return "".join(out)


def explain(packet: Packet) -> str:
    """A one-line, human-readable description of a packet."""
    return (
        f"{op_name(packet.op)} req={packet.req_id} tx={packet.tx_id} "
        f'len={len(packet.payload)} "{escape(packet.payload)}"'
    )
