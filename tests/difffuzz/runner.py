"""Play a sequence of steps on one daemon and observe everything it sends.

:class:`Wire` is a blocking client with its own framing (the header of
``xs_wire.h``, PROTOCOL.md 1.1) over a :class:`Transport`: a Unix socket
here, or the guest's ring (:mod:`.daemons`).  Nothing of pyxenstored is
imported.

:func:`play` sends each step on its connection and records, as plain data:

* every message that connection received up to a *barrier*: a
  ``GET_DOMAIN_PATH 0`` sent right after the request.  Both daemons handle
  one connection's requests in order and queue the events a request causes
  before they handle the next one, so the events queued before the reply,
  the reply, and the events queued right after it (WATCH's initial event)
  are all in, in order;
* then the events every other connection got, again collected with a
  barrier each (sent only once the step's own barrier came back, so every
  event the step caused is already queued).

Daemon-private numbers are normalised where they are observed: the id of a
new transaction becomes ``<tx>`` (the player remembers the real one for the
step's label), and DIRECTORY_PART's generation becomes ``<gen>``.  The
generation is a counter private to each daemon (PROTOCOL.md 9) and even
its equalities differ: C stamps a node changed inside a transaction with a
generation of its own, pyxenstored keeps the committed node's.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from tests.difffuzz.model import Step
from tests.integration.scenario import HEADER, Op

__all__ = ["Message", "Observation", "SocketTransport", "Transport", "Wire", "play"]

#: (type name, payload) of one message, after normalisation.
Message = tuple[str, bytes]
#: Per connection, the messages it received during one step.
Observation = tuple[tuple[Message, ...], ...]

#: A transaction id no daemon gives out in these runs (labels without one).
BOGUS_TX = 4242
#: Bound on any wait for a message.
TIMEOUT = 3.0
#: Request ids of barriers (the requests of steps count up from 1).
BARRIER_BASE = 0x40000000
_KNOWN = {int(op): op.name for op in Op}

#: Markers for what is not a message.
CLOSED: Message = ("CLOSED", b"")
TIMED_OUT: Message = ("TIMEOUT", b"")
DEAD: Message = ("DEAD", b"")


class Closed(Exception):
    """The daemon closed the connection."""


class Transport(Protocol):
    """A byte stream to a daemon: a Unix socket, or a guest's ring."""

    def sendall(self, data: bytes) -> None: ...

    def recv(self) -> bytes:
        """Some bytes (b"" once closed); TimeoutError after :data:`TIMEOUT`."""
        ...


def connect(path: Path, deadline: float = 10.0) -> socket.socket:
    """Connect, retrying while the listen backlog (1 in C) is full."""
    end = time.monotonic() + deadline
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(path))
        except (BlockingIOError, InterruptedError, ConnectionRefusedError):
            sock.close()
            if time.monotonic() > end:
                raise
            time.sleep(0.002)
            continue
        except BaseException:
            sock.close()
            raise
        sock.settimeout(TIMEOUT)
        return sock


class SocketTransport:
    """A dom0 connection on the daemon's Unix socket."""

    def __init__(self, path: Path) -> None:
        self.sock = connect(path)

    def sendall(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self) -> bytes:
        return self.sock.recv(65536)

    def close(self) -> None:
        self.sock.close()


class Wire:
    """One connection: send framed requests, receive framed messages."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self.buffer = bytearray()
        self.next_req = 1
        self.next_barrier = BARRIER_BASE
        self.dead = False

    def send(self, op: int, payload: bytes, tx_id: int = 0, req: int = 0) -> int:
        if not req:
            req = self.next_req
            self.next_req += 1
        self.transport.sendall(HEADER.pack(op, req, tx_id, len(payload)) + payload)
        return req

    def barrier(self) -> int:
        self.next_barrier += 1
        return self.send(Op.GET_DOMAIN_PATH, b"0\0", 0, self.next_barrier)

    def receive(self) -> tuple[int, int, int, bytes]:
        """(type, req_id, tx_id, payload) of the next message."""
        while True:
            if len(self.buffer) >= HEADER.size:
                op, req, tx, size = HEADER.unpack_from(self.buffer)
                end = HEADER.size + size
                if len(self.buffer) >= end:
                    body = bytes(self.buffer[HEADER.size : end])
                    del self.buffer[:end]
                    return op, req, tx, body
            chunk = self.transport.recv()
            if not chunk:
                raise Closed
            self.buffer += chunk

    def until(self, barrier: int) -> list[tuple[int, int, int, bytes]]:
        """Every message before the reply to ``barrier`` (not included)."""
        got: list[tuple[int, int, int, bytes]] = []
        while True:
            msg = self.receive()
            if msg[1] == barrier and msg[0] != Op.WATCH_EVENT:
                return got
            got.append(msg)

    def request(self, op: int, payload: bytes, tx_id: int = 0) -> tuple[int, bytes]:
        """One request and its reply (type, payload); events are dropped."""
        req = self.send(op, payload, tx_id)
        while True:
            kind, got_req, _, body = self.receive()
            if got_req == req and kind != Op.WATCH_EVENT:
                return kind, body


class Player:
    """The state of one play: its connections and transaction ids."""

    def __init__(self, transports: Sequence[Transport]) -> None:
        self.wires = [Wire(t) for t in transports]
        #: label -> (connection, the id this daemon gave the transaction)
        self.tx_ids: dict[int, tuple[int, int]] = {}

    def tx_id(self, step: Step) -> int:
        """The id to send for ``step.tx``: that daemon's, on its connection."""
        if step.tx == 0:
            return 0
        conn, tx_id = self.tx_ids.get(step.tx, (step.conn, BOGUS_TX))
        return tx_id if conn == step.conn else BOGUS_TX

    def step(self, step: Step) -> Observation:
        seen: list[tuple[Message, ...]] = [() for _ in self.wires]
        wire = self.wires[step.conn]
        if wire.dead:
            seen[step.conn] = (DEAD,)
        else:
            seen[step.conn] = self._collect(wire, step, self.tx_id(step))
        barriers: dict[int, int] = {}
        for i, other in enumerate(self.wires):
            if i == step.conn or other.dead:
                continue
            try:
                barriers[i] = other.barrier()
            except OSError:
                other.dead = True
                seen[i] = (CLOSED,)
        for i, barrier in barriers.items():
            seen[i] = self._events(self.wires[i], barrier)
        return tuple(seen)

    def _collect(self, wire: Wire, step: Step, tx_id: int) -> tuple[Message, ...]:
        """The reply to ``step`` and the events around it, in order."""
        try:
            req = wire.send(step.op, step.payload(), tx_id)
            barrier = wire.barrier()
            raw = wire.until(barrier)
        except (Closed, ConnectionError):
            wire.dead = True
            return (CLOSED,)
        except TimeoutError:
            wire.dead = True
            return (TIMED_OUT,)
        out: list[Message] = []
        for kind, got_req, got_tx, body in raw:
            if kind == Op.WATCH_EVENT:
                out.append(self._event(got_req, got_tx, body))
                continue
            name = _KNOWN.get(kind, str(kind))
            if got_req != req or got_tx != tx_id:
                out.append(("BAD-HEADER", f"req {got_req} tx {got_tx}".encode()))
            out.append((name, self._normalise(step, name, body)))
        return tuple(out)

    def _events(self, wire: Wire, barrier: int) -> tuple[Message, ...]:
        try:
            raw = wire.until(barrier)
        except (Closed, ConnectionError):
            wire.dead = True
            return (CLOSED,)
        except TimeoutError:
            wire.dead = True
            return (TIMED_OUT,)
        return tuple(self._event(req, tx, body) for _, req, tx, body in raw)

    @staticmethod
    def _event(req: int, tx: int, body: bytes) -> Message:
        if req or tx:
            return ("BAD-EVENT", f"req {req} tx {tx} ".encode() + body)
        return ("EVENT", body)

    def _normalise(self, step: Step, name: str, body: bytes) -> bytes:
        if name == "TRANSACTION_START":
            number = body[:-1]
            if body.endswith(b"\0") and number.isdigit() and int(number) > 0:
                if step.label:
                    self.tx_ids[step.label] = (step.conn, int(number))
                return b"<tx>\0"
        if name == "DIRECTORY_PART":
            gen, sep, rest = body.partition(b"\0")
            if sep and gen.isdigit():
                return b"<gen>\0" + rest
        return body


def play(transports: Sequence[Transport], steps: Sequence[Step]) -> list[Observation]:
    """One observation per step, played on fresh connections.

    "Fresh": no watches, no transactions, nothing unread.
    """
    player = Player(transports)
    return [player.step(step) for step in steps]
