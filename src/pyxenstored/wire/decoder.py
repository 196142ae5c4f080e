"""Pulling whole packets out of a byte stream (socket or ring).

The decoder owns a ``bytearray``.  It validates the header's length field
*before* buffering the body, so a peer can never make it hold more than one
header plus ``PAYLOAD_MAX`` bytes of a message.  Consumed bytes are removed
with ``del buf[:n]``, which CPython implements by moving the start of the
buffer, so taking many small packets from one large read stays linear.
"""

from __future__ import annotations

from enum import Enum

from pyxenstored.errors import RemoteProtocolError
from pyxenstored.wire.ops import HEADER_SIZE, PAYLOAD_MAX
from pyxenstored.wire.packet import HEADER, Packet

__all__ = ["NEED_DATA", "PacketDecoder"]


class _Need(Enum):
    NEED_DATA = "NEED_DATA"


#: Returned by :meth:`PacketDecoder.next_packet` when no whole packet is
#: buffered yet.
NEED_DATA = _Need.NEED_DATA


class PacketDecoder:
    """Sans-IO decoder: ``receive_data()`` then ``next_packet()`` in a loop."""

    __slots__ = ("buffer",)

    def __init__(self) -> None:
        #: Bytes received and not yet returned as a packet: empty between
        #: messages.  Read-only to callers; the I/O shells test it directly
        #: (``if decoder.buffer``) on every request, where the
        #: :attr:`partial` property would cost a Python call.
        self.buffer = bytearray()

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Append bytes read from the transport (copied: ``data`` may be reused)."""
        self.buffer += data

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as a packet."""
        return len(self.buffer)

    @property
    def partial(self) -> bool:
        """True while part of a message has been received."""
        return bool(self.buffer)

    def missing(self) -> int:
        """Bytes still needed to complete the message being received.

        0 when a whole message (or a header announcing too much) is
        buffered; a header's worth when nothing is.
        """
        buf = self.buffer
        have = len(buf)
        if have < HEADER_SIZE:
            return HEADER_SIZE - have
        length: int = HEADER.unpack_from(buf)[3]
        if length > PAYLOAD_MAX:
            return 0
        return max(HEADER_SIZE + length - have, 0)

    def next_packet(self) -> Packet | _Need:
        """Return the next whole packet, or :data:`NEED_DATA`.

        Raises:
            RemoteProtocolError: a header announces more than
                ``PAYLOAD_MAX`` payload bytes; the stream cannot be trusted
                any more.
        """
        buf = self.buffer
        if len(buf) < HEADER_SIZE:
            return NEED_DATA
        op, req_id, tx_id, length = HEADER.unpack_from(buf)
        if length > PAYLOAD_MAX:
            raise RemoteProtocolError(f"message length {length} exceeds {PAYLOAD_MAX}")
        end = HEADER_SIZE + length
        if len(buf) < end:
            return NEED_DATA
        payload = bytes(buf[HEADER_SIZE:end])
        del buf[:end]
        return Packet(op, req_id, tx_id, payload)

    def peek(self) -> bytes:
        """The bytes buffered, left in place (a live update saves them)."""
        return bytes(self.buffer)

    def clear(self) -> bytes:
        """Drop and return whatever partial input is buffered."""
        data = bytes(self.buffer)
        self.buffer.clear()
        return data
