"""The shared ring page, ``struct xenstore_domain_interface`` (RING.md).

Theory of operation:

1. The page holds two 1 KiB byte rings (``req`` guest to server, ``rsp``
   server to guest) and four free-running 32-bit indices.  The indices
   count bytes modulo 2**32; byte ``x`` of a stream lives at offset
   ``x & 1023``.  Unread bytes are ``(prod - cons) mod 2**32``; a value
   above 1024 means the other side corrupted the ring.
2. Each pass reads the other side's index *once* into a local and
   validates that snapshot; the guest can change the page at any moment,
   so nothing is read twice between check and use.
3. Order: copy data out before publishing the new consumer index, and
   copy data in before publishing the new producer index.  Each index is
   stored as one aligned 32-bit store through a ``memoryview`` cast to
   ``"I"`` (CPython performs it as one native store).  On x86-64 the
   hardware keeps the load/store orders this needs, so no fences are
   issued; a weakly ordered CPU would need a native barrier helper
   (RING.md 3.2), which this module would call in the marked places.
4. This module works on any writable 4096-byte buffer and does no I/O:
   mapping the page and signalling the event channel belong to the shells.
"""

from __future__ import annotations

import struct
from enum import IntEnum

from pyxenstored.errors import RemoteProtocolError
from pyxenstored.wire.ops import HEADER_SIZE

__all__ = [
    "PAGE_SIZE",
    "RING_SIZE",
    "ConnectionState",
    "Ring",
    "RingCorrupt",
    "RingError",
]

PAGE_SIZE = 4096
#: ``XENSTORE_RING_SIZE``: bytes in each of ``req`` and ``rsp``.
RING_SIZE = 1024
_MASK = RING_SIZE - 1
_U32 = 0xFFFFFFFF

_REQ = 0
_RSP = 1024
#: A message header's length field: its last 4 bytes (little-endian u32).
_LENGTH = struct.Struct("<I")
_LENGTH_AT = HEADER_SIZE - 4
# Word (u32) positions of the fields after the two arrays.
_REQ_CONS = 512
_REQ_PROD = 513
_RSP_CONS = 514
_RSP_PROD = 515
_SERVER_FEATURES = 516
_CONNECTION = 517
_ERROR = 518
# (519 is evtchn_port, which the daemon never reads.)


class RingError(IntEnum):
    """Values of the ``error`` field (RING.md 7)."""

    NONE = 0
    #: Event channel or page could not be re-established.
    COMM = 1
    #: Inconsistent producer/consumer indices.
    RINGIDX = 2
    #: The guest sent a message longer than 4096 bytes.
    PROTO = 3


class ConnectionState(IntEnum):
    """Values of the ``connection`` field (RING.md 6)."""

    CONNECTED = 0
    #: The guest asks for a reset (or a dom0less guest waits for the server).
    RECONNECT = 1


class RingCorrupt(RemoteProtocolError):
    """The other side left indices that cannot be right."""


class Ring:
    """A view of one ring page, usable by the server or by the guest."""

    __slots__ = ("_page", "_words")

    def __init__(self, page: memoryview) -> None:
        if len(page) < PAGE_SIZE or page.readonly:
            raise ValueError("a ring page is 4096 writable bytes")
        self._page = page[:PAGE_SIZE].cast("B")
        self._words = self._page.cast("I")

    def release(self) -> None:
        """Drop the views so the underlying mapping can be closed."""
        self._words.release()
        self._page.release()

    # -- plain fields ---------------------------------------------------------

    def _set(self, word: int, value: int) -> None:
        self._words[word] = value & _U32

    @property
    def server_features(self) -> int:
        return self._words[_SERVER_FEATURES]

    @server_features.setter
    def server_features(self, value: int) -> None:
        self._set(_SERVER_FEATURES, value)

    @property
    def connection(self) -> int:
        return self._words[_CONNECTION]

    @connection.setter
    def connection(self, value: int) -> None:
        self._set(_CONNECTION, value)

    @property
    def error(self) -> int:
        return self._words[_ERROR]

    @error.setter
    def error(self, value: int) -> None:
        self._set(_ERROR, value)

    def indexes(self) -> tuple[int, int, int, int]:
        """``(req_cons, req_prod, rsp_cons, rsp_prod)``, for diagnostics."""
        w = self._words
        return (
            int(w[_REQ_CONS]),
            int(w[_REQ_PROD]),
            int(w[_RSP_CONS]),
            int(w[_RSP_PROD]),
        )

    # -- the two generic halves -------------------------------------------
    #
    # Every request and reply passes here, so the index reading, the check
    # and the copy are written out in each method rather than shared
    # through helpers: a Python call costs as much as the copy itself.

    def _consume(self, cons_word: int, prod_word: int, area: int, limit: int) -> bytes:
        # The producer may move its index at any time: read once, check.
        words = self._words
        cons = words[cons_word]
        prod = words[prod_word]
        used = (prod - cons) & _U32
        if used > RING_SIZE:
            raise RingCorrupt(f"indices {cons:#x}/{prod:#x} are {used} bytes apart")
        n = used if used < limit else limit
        if n <= 0:
            return b""
        # (barrier: indices before data)
        start = cons & _MASK
        end = start + n
        page = self._page
        if end <= RING_SIZE:
            data = bytes(page[area + start : area + end])
        else:  # across the end of the ring
            data = bytes(page[area + start : area + RING_SIZE]) + bytes(
                page[area : area + end - RING_SIZE]
            )
        # (barrier: data before releasing the space)
        words[cons_word] = (cons + n) & _U32
        return data

    def _produce(
        self,
        data: bytes,
        cons_word: int = _RSP_CONS,
        prod_word: int = _RSP_PROD,
        area: int = _RSP,
    ) -> int:
        # The consumer may move its index at any time: read once, check.
        words = self._words
        cons = words[cons_word]
        prod = words[prod_word]
        used = (prod - cons) & _U32
        if used > RING_SIZE:
            raise RingCorrupt(f"indices {cons:#x}/{prod:#x} are {used} bytes apart")
        n = RING_SIZE - used
        if len(data) < n:
            n = len(data)
        if n <= 0:
            return 0
        start = prod & _MASK
        end = start + n
        page = self._page
        if end <= RING_SIZE:
            page[area + start : area + end] = data if n == len(data) else data[:n]
        else:  # across the end of the ring
            first = RING_SIZE - start
            page[area + start : area + RING_SIZE] = data[:first]
            page[area : area + end - RING_SIZE] = data[first:n]
        # (write barrier: data visible before the new index)
        words[prod_word] = (prod + n) & _U32
        return n

    # -- server side ------------------------------------------------------

    def read_requests(self, limit: int = RING_SIZE) -> bytes:
        """Server: take up to ``limit`` request bytes off ``req``.

        Raises:
            RingCorrupt: the guest's indices are inconsistent.
        """
        return self._consume(_REQ_CONS, _REQ_PROD, _REQ, limit)

    def read_message(self) -> bytes:
        """Server: one whole message off ``req`` if all of it is there.

        Nothing is taken otherwise (a message still being written, or one
        longer than the ring, which only the byte-wise
        :meth:`read_requests` can receive).  It is the common case of a
        guest's request: the length is read from the header in the ring,
        then the message is taken whole.

        Raises:
            RingCorrupt: the guest's indices are inconsistent.
        """
        words = self._words
        cons = words[_REQ_CONS]
        prod = words[_REQ_PROD]
        used = (prod - cons) & _U32
        if used < HEADER_SIZE:
            return b""
        if used > RING_SIZE:
            raise RingCorrupt(f"indices {cons:#x}/{prod:#x} are {used} bytes apart")
        start = cons & _MASK
        page = self._page
        at = start + _LENGTH_AT
        if at + 4 <= RING_SIZE:
            (length,) = _LENGTH.unpack_from(page, _REQ + at)
        else:
            length = int.from_bytes(
                bytes(page[_REQ + ((at + i) & _MASK)] for i in range(4)), "little"
            )
        n = HEADER_SIZE + length
        if n > used:
            return b""
        # _consume's copy, written out: the indices are already read and
        # checked, and n <= used <= RING_SIZE.
        end = start + n
        if end <= RING_SIZE:
            data = bytes(page[_REQ + start : _REQ + end])
        else:  # across the end of the ring
            data = bytes(page[_REQ + start : _REQ + RING_SIZE]) + bytes(
                page[_REQ : _REQ + end - RING_SIZE]
            )
        # (barrier: data before releasing the space)
        words[_REQ_CONS] = (cons + n) & _U32
        return data

    #: Server: put as much of ``data`` as fits into ``rsp``; return it.
    #: (``_produce`` itself, whose defaults are ``rsp``'s: no second call
    #: per reply.)  Raises :class:`RingCorrupt` when the guest's indices
    #: are inconsistent.
    write_replies = _produce

    def quiet(self) -> bool:
        """No request byte and no reconnection asked: nothing for the server.

        One look at two indices and a field, no checks (a corrupt pair of
        request indices is not equal, so it is found by the full reading).
        """
        w = self._words
        return w[_REQ_PROD] == w[_REQ_CONS] and w[_CONNECTION] == 0

    def requests_pending(self) -> int:
        w = self._words
        return (w[_REQ_PROD] - w[_REQ_CONS]) & _U32

    def reply_space(self) -> int:
        w = self._words
        return RING_SIZE - ((w[_RSP_PROD] - w[_RSP_CONS]) & _U32)

    def reset_indexes(self) -> None:
        """Zero all four indices (C's INTRODUCE; a reconnection)."""
        for word in (_REQ_CONS, _REQ_PROD, _RSP_CONS, _RSP_PROD):
            self._words[word] = 0

    # -- guest side -------------------------------------------------------

    def write_requests(self, data: bytes) -> int:
        """Guest: put as much of ``data`` as fits into ``req``; return it."""
        return self._produce(data, _REQ_CONS, _REQ_PROD, _REQ)

    def read_replies(self, limit: int = RING_SIZE) -> bytes:
        """Guest: take up to ``limit`` bytes off ``rsp``."""
        return self._consume(_RSP_CONS, _RSP_PROD, _RSP, limit)
