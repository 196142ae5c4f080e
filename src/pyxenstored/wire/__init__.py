"""The xenstore wire format: packets, their payloads and the byte stream.

Pure code (no I/O): see ``docs/misc/xenstore.txt`` and ``xs_wire.h``.
"""

from __future__ import annotations

from pyxenstored.wire.decoder import NEED_DATA, PacketDecoder
from pyxenstored.wire.ops import (
    ABS_PATH_MAX,
    HEADER_SIZE,
    PAYLOAD_MAX,
    REL_PATH_MAX,
    Op,
)
from pyxenstored.wire.packet import HEADER, Packet, encode_packet, explain

__all__ = [
    "ABS_PATH_MAX",
    "HEADER",
    "HEADER_SIZE",
    "NEED_DATA",
    "PAYLOAD_MAX",
    "REL_PATH_MAX",
    "Op",
    "Packet",
    "PacketDecoder",
    "encode_packet",
    "explain",
]
