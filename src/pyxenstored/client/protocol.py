"""The client side of the wire protocol, without any I/O.

:class:`ClientProtocol` frames requests, allocates their ``req_id``\\ s and
matches the replies that come back (``docs/misc/xenstore.txt``; PROTOCOL.md
sections 1.2 and 3).  Watch events arrive unsolicited on the same stream,
possibly between a request and its reply (C queues the events a WRITE
causes *before* the WRITE's ``OK``), so they are queued separately and
handed out by :meth:`ClientProtocol.next_event`.

Theory of operation:

1. ``send(op, payload, tx_id)`` returns ``(req_id, bytes)``; the caller
   writes the bytes to its transport.  The request is now *pending*.
2. Bytes read from the transport go to ``receive_data(data)``.  Each whole
   packet is either a WATCH_EVENT (queued) or the reply to a pending
   request, found by ``req_id`` (so replies may come in any order, and any
   number of requests may be in flight).  ``receive_data`` returns the
   ``req_id`` of every request it completed.
3. ``reply(req_id)`` returns the reply payload, :data:`NEED_DATA` while it
   has not arrived, or raises the :class:`~pyxenstored.errors.XsError`
   subclass named by an ERROR reply.
4. A caller that gives up on a request calls ``forget(req_id)``; its reply
   is then dropped when it arrives.
5. ``connection_lost()`` makes every unanswered request fail with
   :class:`~pyxenstored.errors.BrokenConnection`.

Anything that cannot be trusted (a reply to no request, a reply of the
wrong type, an oversized or malformed packet) raises
:class:`~pyxenstored.errors.RemoteProtocolError` and breaks the protocol
for good: after it the byte stream has no known message boundary.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import NamedTuple

from pyxenstored.errors import (
    BrokenConnection,
    LocalProtocolError,
    RemoteProtocolError,
    TooBig,
    XsError,
)
from pyxenstored.wire.decoder import NEED_DATA, PacketDecoder, _Need
from pyxenstored.wire.ops import PAYLOAD_MAX, Op, WatchField
from pyxenstored.wire.packet import Packet, encode_packet
from pyxenstored.wire.payload import ENCODING

__all__ = ["NEED_DATA", "ClientProtocol", "WatchEvent", "error_from_payload"]

_ID_SPACE = 1 << 32


class WatchEvent(NamedTuple):
    """A fired watch: the path that changed (as the watch was registered:
    relative or absolute) and the watch's token."""

    path: str
    token: str


def error_from_payload(payload: bytes) -> XsError:
    """The exception an ERROR reply names (``E<NAME>\\0``).

    Unknown names map to :class:`~pyxenstored.errors.InvalidArgument`, as
    the wire table says (PROTOCOL.md section 3).
    """
    name = payload.split(b"\0", 1)[0].decode("ascii", "replace")
    return XsError.from_code(name)


def parse_event(payload: bytes) -> WatchEvent:
    """Decode a WATCH_EVENT payload ``path\\0token\\0``.

    Raises:
        RemoteProtocolError: fewer than two NUL-terminated strings.
    """
    fields = payload.split(b"\0")
    # A well-formed payload ends with a NUL, so the split leaves a last
    # empty element: at least three elements for two strings.
    if len(fields) < 3:
        raise RemoteProtocolError(f"malformed watch event {payload!r}")
    return WatchEvent(
        fields[WatchField.PATH].decode(ENCODING),
        fields[WatchField.TOKEN].decode(ENCODING),
    )


class ClientProtocol:
    """Sans-IO request/reply matcher for one xenstore connection.

    Args:
        first_id: the ``req_id`` of the first request (ids then count up,
            wrapping at 2**32 and skipping 0 and ids still in use).

    Not thread-safe: one protocol object belongs to one caller (a blocking
    client, or one asyncio event loop).
    """

    def __init__(self, first_id: int = 1) -> None:
        self._decoder = PacketDecoder()
        self._next_id = first_id % _ID_SPACE
        #: req_id -> op of every request sent and not yet answered.
        self._pending: dict[int, int] = {}
        #: req_id -> reply packet, answered but not yet collected.
        self._replies: dict[int, Packet] = {}
        #: Requests given up on whose reply has not arrived yet.
        self._forgotten: set[int] = set()
        self._events: deque[WatchEvent] = deque()
        self._broken: str | None = None

    # -- sending --

    def send(self, op: int, payload: bytes, tx_id: int = 0) -> tuple[int, bytes]:
        """Frame a request.

        Args:
            op: the message type, normally an :class:`~pyxenstored.wire.Op`.
            payload: the request payload.
            tx_id: the transaction the request belongs to (0 for none).

        Returns:
            The request's ``req_id`` and the bytes to write to the transport.

        Raises:
            TooBig: the payload exceeds ``PAYLOAD_MAX`` (libxenstore reports
                E2BIG for this too, without sending anything).
            BrokenConnection: the connection was lost or the stream broke.
        """
        if self._broken is not None:
            raise BrokenConnection(self._broken)
        if len(payload) > PAYLOAD_MAX:
            raise TooBig(
                f"request payload of {len(payload)} bytes exceeds {PAYLOAD_MAX}"
            )
        req_id = self._allocate()
        data = encode_packet(op, req_id, tx_id, payload)
        self._pending[req_id] = op
        return req_id, data

    def send_many(
        self, requests: Iterable[tuple[int, bytes]], tx_id: int = 0
    ) -> tuple[list[int], bytes]:
        """Frame ``(op, payload)`` requests to be written at once (a pipeline).

        Returns:
            Their ``req_id``\\ s, in order, and the bytes of them all.

        Raises:
            TooBig, BrokenConnection: as :meth:`send`.
        """
        ids = []
        chunks = []
        for op, payload in requests:
            req_id, data = self.send(op, payload, tx_id)
            ids.append(req_id)
            chunks.append(data)
        return ids, b"".join(chunks)

    def _allocate(self) -> int:
        # Skip 0 (the id of watch events) and ids still in use; wrap at 2^32.
        req_id = self._next_id
        while (
            req_id == 0
            or req_id in self._pending
            or req_id in self._replies
            or req_id in self._forgotten
        ):
            req_id = (req_id + 1) % _ID_SPACE
        self._next_id = (req_id + 1) % _ID_SPACE
        return req_id

    # -- receiving --

    def receive_data(self, data: bytes) -> list[int]:
        """Feed bytes read from the transport.

        Returns:
            The ``req_id`` of every request whose reply is now complete.

        Raises:
            RemoteProtocolError: the peer sent something that breaks the
                stream; the protocol is unusable afterwards.
        """
        if self._broken is not None:
            return []
        self._decoder.receive_data(data)
        done: list[int] = []
        try:
            while True:
                packet = self._decoder.next_packet()
                if packet is NEED_DATA:
                    return done
                if self._dispatch(packet):
                    done.append(packet.req_id)
        except RemoteProtocolError as exc:
            self.connection_lost(f"protocol error from xenstored: {exc}")
            raise

    def _dispatch(self, packet: Packet) -> bool:
        if packet.op == Op.WATCH_EVENT:
            self._events.append(parse_event(packet.payload))
            return False
        op = self._pending.pop(packet.req_id, None)
        if op is None:
            if packet.req_id in self._forgotten:
                self._forgotten.discard(packet.req_id)
                return False
            raise RemoteProtocolError(f"reply to unknown request {packet.req_id}")
        if packet.op not in (op, Op.ERROR):
            raise RemoteProtocolError(
                f"reply of type {packet.op} to a request of type {op}"
            )
        self._replies[packet.req_id] = packet
        return True

    def reply(self, req_id: int) -> bytes | _Need:
        """Collect the reply to a request.

        Returns:
            The reply payload, or :data:`NEED_DATA` if it has not arrived.

        Raises:
            XsError: the server answered with an ERROR reply (the subclass
                named by it).
            BrokenConnection: the connection was lost before the reply came.
            LocalProtocolError: ``req_id`` names no outstanding request.
        """
        packet = self._replies.pop(req_id, None)
        if packet is None:
            if req_id not in self._pending:
                raise LocalProtocolError(f"no outstanding request {req_id}")
            if self._broken is not None:
                del self._pending[req_id]
                raise BrokenConnection(self._broken)
            return NEED_DATA
        if packet.op == Op.ERROR:
            raise error_from_payload(packet.payload)
        return packet.payload

    def outcome(self, req_id: int) -> bytes | XsError | _Need:
        """:meth:`reply`, with the server's :class:`~pyxenstored.errors.XsError`
        returned rather than raised (a pipeline's replies)."""
        try:
            return self.reply(req_id)
        except XsError as error:
            return error

    def next_event(self) -> WatchEvent | _Need:
        """The oldest queued watch event, or :data:`NEED_DATA`."""
        if self._events:
            return self._events.popleft()
        return NEED_DATA

    def take_events(self) -> list[WatchEvent]:
        """Every queued watch event, oldest first."""
        events = list(self._events)
        self._events.clear()
        return events

    def forget(self, req_id: int) -> None:
        """Give up on a request: its reply is dropped, now or when it comes."""
        if self._replies.pop(req_id, None) is not None:
            return
        if self._pending.pop(req_id, None) is not None and self._broken is None:
            self._forgotten.add(req_id)

    def connection_lost(self, reason: str = "connection to xenstored lost") -> None:
        """The transport reached EOF or failed: no reply will come any more."""
        if self._broken is None:
            self._broken = reason
            self._forgotten.clear()
            self._decoder.clear()

    # -- state --

    @property
    def broken(self) -> str | None:
        """Why the connection is unusable, or ``None`` while it is fine."""
        return self._broken

    @property
    def outstanding(self) -> int:
        """Requests sent and not yet answered."""
        return len(self._pending)

    @property
    def queued_events(self) -> int:
        """Watch events received and not yet taken."""
        return len(self._events)
