"""One engine connection spoken to in framed packets, for the engine tests.

The tests read the exact messages the engine queues, decoded with the
package's ``HEADER`` (pinned to PROTOCOL.md 1.1 by literal bytes in
``tests/unit/test_wire.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

from pyxenstored.engine import Connection, Engine
from pyxenstored.wire import HEADER, Op, Packet
from tests.wiretools import args

__all__ = ["ERROR", "EVENT", "OK", "Msg", "Peer", "args", "decode"]

ERROR = 16
EVENT = 15
OK = b"OK\0"


@dataclass(frozen=True)
class Msg:
    op: int
    req: int
    tx: int
    payload: bytes

    @property
    def event(self) -> tuple[str, str]:
        """(path, token) of a WATCH_EVENT."""
        assert self.op == EVENT, self
        assert (self.req, self.tx) == (0, 0)
        path, token, rest = self.payload.split(b"\0")
        assert rest == b""
        return path.decode("latin-1"), token.decode("latin-1")


def decode(raw: bytes) -> Msg:
    op, req, tx, length = HEADER.unpack_from(raw)
    assert len(raw) == 16 + length, "one framed message per queued item"
    return Msg(op, req, tx, raw[16:])


class Peer:
    """One connection of the engine, speaking in packets."""

    def __init__(self, engine: Engine, conn: Connection) -> None:
        self.engine = engine
        self.conn = conn
        self.req = 100

    def raw(self, op: int, payload: bytes, tx: int = 0) -> list[Msg]:
        """Send one request; everything queued for this connection so far."""
        self.req += 1
        self.engine.handle(self.conn, Packet(op, self.req, tx, payload))
        return self.take()

    def take(self) -> list[Msg]:
        return [decode(m) for m in self.conn.take_output()]

    def call(self, op: int, payload: bytes, tx: int = 0) -> Msg:
        """The one reply to a request (events may precede or follow it)."""
        out = self.raw(op, payload, tx)
        replies = [m for m in out if m.op != EVENT]
        assert len(replies) == 1, out
        reply = replies[0]
        assert (reply.req, reply.tx) == (self.req, tx), "req_id/tx_id echoed"
        return reply

    def ok(self, op: int, *strings: str, tx: int = 0) -> bytes:
        reply = self.call(op, args(*strings), tx)
        assert reply.op == op, f"{Op(op).name} failed: {reply.payload!r}"
        return reply.payload

    def err(self, op: int, *strings: str, tx: int = 0) -> str:
        return self.error_of(self.call(op, args(*strings), tx))

    @staticmethod
    def error_of(reply: Msg) -> str:
        assert reply.op == ERROR, f"expected an error, got {reply}"
        assert reply.payload.endswith(b"\0")
        return reply.payload[:-1].decode()

    def write(self, path: str, value: bytes = b"", tx: int = 0) -> Msg:
        return self.call(Op.WRITE, path.encode() + b"\0" + value, tx)

    def write_ok(self, path: str, value: bytes = b"", tx: int = 0) -> None:
        reply = self.write(path, value, tx)
        assert (reply.op, reply.payload) == (Op.WRITE, OK), reply

    def set_perms(self, path: str, *perms: str, tx: int = 0) -> None:
        assert self.ok(Op.SET_PERMS, path, *perms, tx=tx) == OK

    def start(self) -> int:
        return int(self.ok(Op.TRANSACTION_START, "")[:-1])

    def watch(self, path: str, token: str) -> None:
        out = self.raw(Op.WATCH, args(path, token))
        assert [m.op for m in out] == [Op.WATCH, EVENT], out
        assert out[1].event == (path, token)

    def events(self) -> list[tuple[str, str]]:
        """(path, token) of every event queued for this connection so far."""
        return [m.event for m in self.take() if m.op == EVENT]
