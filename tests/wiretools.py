"""Small helpers the tests share: raw framing, waiting, a daemon's RSS, a raw guest.

Framing uses the package's own header (:data:`pyxenstored.wire.HEADER`);
``tests/unit/test_wire.py`` pins that header to PROTOCOL.md 1.1 with literal
bytes, so the tests may build and read messages with it.  Unlike
:func:`pyxenstored.wire.encode_packet`, :func:`frame` frames any payload,
oversized ones included: the tests send what a client must not.
Messages read back are :class:`pyxenstored.wire.Packet` tuples
``(op, req_id, tx_id, payload)``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from pyxenstored.sim.ring import GuestRing
from pyxenstored.wire import HEADER, PAYLOAD_MAX, Op, Packet
from pyxenstored.wire.payload import join_args

__all__ = [
    "TIMEOUT",
    "Misframed",
    "RawGuest",
    "args",
    "frame",
    "rss_kib",
    "split",
    "take_message",
    "wait_until",
]

#: The default bound on every wait of these helpers, in seconds.
TIMEOUT = 10.0

#: A payload of NUL-terminated strings (PROTOCOL.md 1.3).
args = join_args


# -- framing -------------------------------------------------------------------


def frame(op: int, payload: bytes, req_id: int = 1, tx_id: int = 0) -> bytes:
    """One message: the header announcing ``len(payload)``, then the payload."""
    return HEADER.pack(op, req_id, tx_id, len(payload)) + payload


class Misframed(AssertionError):
    """A header announced more than ``PAYLOAD_MAX`` payload bytes."""


def take_message(buf: bytearray) -> Packet | None:
    """Take the first whole message off the front of ``buf`` (None: not yet).

    Raises:
        Misframed: the header announces more than ``PAYLOAD_MAX`` bytes.
    """
    if len(buf) < HEADER.size:
        return None
    op, req_id, tx_id, length = HEADER.unpack_from(buf)
    if length > PAYLOAD_MAX:
        raise Misframed(f"a header announcing a {length}-byte payload")
    end = HEADER.size + length
    if len(buf) < end:
        return None
    payload = bytes(buf[HEADER.size : end])
    del buf[:end]
    return Packet(op, req_id, tx_id, payload)


def split(data: bytes) -> tuple[list[Packet], bytes]:
    """Every whole message at the start of ``data``, and the bytes left over."""
    buf = bytearray(data)
    out: list[Packet] = []
    while (message := take_message(buf)) is not None:
        out.append(message)
    return out, bytes(buf)


# -- waiting and measuring -------------------------------------------------------


def wait_until(check: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    """Poll ``check`` every 10 ms; fail naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.01)


def rss_kib(pid: int) -> int:
    """The resident set size of process ``pid`` in KiB (``VmRSS``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


# -- a guest writing raw frames into its ring ---------------------------------


class RawGuest:
    """A guest that writes frames into its ring itself and reads when told.

    Replies and events read but not yet returned wait in :attr:`buf`.
    """

    def __init__(
        self, directory: Path | str, domid: int, timeout: float = TIMEOUT
    ) -> None:
        self.ring = GuestRing(str(directory), domid, timeout=timeout)
        self.timeout = timeout
        self.buf = b""

    def send(self, op: int, payload: bytes, req_id: int, tx_id: int = 0) -> None:
        """Write one whole request (waiting for room) and kick."""
        self.ring.send_all(frame(op, payload, req_id, tx_id))

    def put(self, data: bytes) -> int:
        """Write what fits of ``data`` into the ring now; bytes written."""
        n = self.ring.ring.write_requests(data)
        if n:
            self.ring.kick()
        return n

    def receive(self, timeout: float = 0.05) -> list[Packet]:
        """Whatever whole messages are buffered or arrive within ``timeout``."""
        try:
            self.buf += self.ring.receive_some(timeout=timeout)
        except TimeoutError:
            pass
        messages, self.buf = split(self.buf)
        return messages

    def until(self, req_id: int, timeout: float | None = None) -> list[Packet]:
        """Every message up to and including the reply to ``req_id``.

        What came after the reply stays in :attr:`buf`.
        """
        wait = self.timeout if timeout is None else timeout
        out: list[Packet] = []
        buf = bytearray(self.buf)
        deadline = time.monotonic() + wait
        try:
            while True:
                while (message := take_message(buf)) is not None:
                    out.append(message)
                    if message.op != Op.WATCH_EVENT and message.req_id == req_id:
                        return out
                left = deadline - time.monotonic()
                assert left > 0, f"no reply to {req_id}; got {out}"
                buf += self.ring.receive_some(timeout=left)
        finally:
            self.buf = bytes(buf)

    def call(self, op: int, payload: bytes, req_id: int, tx_id: int = 0) -> Packet:
        """Send one request; its reply (events before it are dropped)."""
        self.send(op, payload, req_id, tx_id)
        return self.until(req_id)[-1]

    def answer(self, op: int, payload: bytes, req_id: int, tx_id: int = 0) -> bytes:
        """Send one request that must succeed; its reply's payload.

        The reply must be of the request's type and the only reply
        received meanwhile (events may come before it).
        """
        self.send(op, payload, req_id, tx_id)
        replies = [m for m in self.until(req_id) if m.op != Op.WATCH_EVENT]
        assert [m[:2] for m in replies] == [(op, req_id)], replies
        return replies[0].payload

    def close(self) -> None:
        self.ring.close()
