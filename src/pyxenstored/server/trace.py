"""The ``--trace-file``: one readable line per request, reply and event."""

from __future__ import annotations

import logging
import time
from typing import TextIO

from pyxenstored.wire.ops import HEADER_SIZE
from pyxenstored.wire.packet import HEADER, Packet, escape, op_name

__all__ = ["Tracer"]

log = logging.getLogger(__name__)


class Tracer:
    """Writes trace lines to an open text file (line buffered)."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._failed = False

    @classmethod
    def open(cls, path: str) -> Tracer:
        """Append to the trace file at ``path``."""
        return cls(open(path, "a", buffering=1, encoding="utf-8"))

    def _line(
        self, conn: str, direction: str, op: int, req: int, tx: int, payload: bytes
    ) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        self.write(
            f"{stamp} {conn} {direction} {op_name(op)} req={req} tx={tx} "
            f'"{escape(payload)}"\n'
        )

    def request(self, conn: str, packet: Packet) -> None:
        self._line(conn, "IN ", packet.op, packet.req_id, packet.tx_id, packet.payload)

    def output(self, conn: str, message: bytes) -> None:
        op, req, tx, length = HEADER.unpack_from(message)
        kind = "EVT" if op == 15 else "OUT"
        self._line(conn, kind, op, req, tx, message[HEADER_SIZE : HEADER_SIZE + length])

    def note(self, conn: str, text: str) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        self.write(f"{stamp} {conn} --- {text}\n")

    def write(self, text: str) -> None:
        """Append text as it is (CONTROL ``memreport`` without a file).

        A trace that cannot be written (disk full) stops with one warning:
        tracing must never cost a client its request.
        """
        if self._failed:
            return
        try:
            self._stream.write(text)
        except (OSError, ValueError) as error:
            self._failed = True
            log.warning("request trace stopped: %s", error)

    def close(self) -> None:
        self._stream.close()
